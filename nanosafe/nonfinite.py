"""The trainers' guard against NaN and inf: a non-finite value skips the update (on every rank), it
never lands in the weights; more than `limit` skipped steps stop the run (docs/failures.md).

    guard = nonfinite.Guard(cfg.optim.max_nonfinite, logger.print)
    guard.check(step, reward=rewards, adv=adv)           # RL: before the update; marks the step
    guard.update(opt, step, loss=loss, grad_norm=norm)   # instead of opt.step()"""
from __future__ import annotations

import math

import torch

from nanosafe import dist

def finite(v) -> bool:
    if torch.is_tensor(v):
        return bool(torch.isfinite(v).all())
    return math.isfinite(float(v))

class Guard:
    def __init__(self, limit: int, say=print):
        self.limit, self.say = limit, say
        self.step, self.skipped, self.bad = 0, 0, []  # self.bad: names of the current step

    def check(self, step: int | None = None, **values) -> bool:
        """Mark step `step` bad if any value is non-finite on any rank; True if the step is good."""
        if step is not None and step != self.step:
            self.step, self.bad = step, []
        names = [k for k, v in values.items() if not finite(v)]
        if dist.all_reduce_max(float(bool(names))) and not self.bad:
            self.bad = names or ["values on another rank"]
            self.skipped += 1
            self.say(f"step {self.step}: non-finite {', '.join(self.bad)}; update skipped "
                     f"({self.skipped} skipped so far, optim.max_nonfinite={self.limit})")
            if self.skipped > self.limit:
                raise FloatingPointError(
                    f"step {self.step}: non-finite {', '.join(self.bad)}; {self.skipped} updates skipped, "
                    f"more than optim.max_nonfinite={self.limit}. The last checkpoint holds the state "
                    f"before it, with finite weights")
        return not self.bad

    def update(self, opt, step: int | None = None, **values) -> bool:
        """opt.step() if the step and `values` are finite, else drop the gradients."""
        ok = self.check(step, **values)
        if ok:
            opt.step()
        else:
            opt.zero_grad(set_to_none=True)
        return ok
