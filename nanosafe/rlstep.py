"""One RL step's parts that train_grpo.py and the step benchmark (nanosafe/stepbench.py) share:
`Run` (what a step needs), `recipe` (its functions bound from the config) and `update` (step 4:
old / reference log-probs, then the optimiser steps)."""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections import defaultdict

import torch

import verifiers
from kernels.advantage import group_advantages_triton
from nanosafe import dist, log, model, nonfinite, rl, rlbatch, rollout, runs, search


@dataclasses.dataclass
class Run:
    """Everything a step needs besides the config, built once by `setup`."""
    policy: model.Bundle
    ref: model.Bundle | None  # frozen copy of the starting policy, only when rl.kl_coef > 0
    opt: torch.optim.Optimizer
    sched: object
    score: callable  # verifiers.score_batch with the config's weights and c* bound
    advantages: callable  # rl.group_advantages (or its Triton twin) with the config's norm and CALE
    logprobs: callable  # rlbatch.response_logprobs at the sampling temperature
    loss: callable  # rl.policy_loss with the config's algorithm, clips, drift, KL and aggregation
    prompts: list[dict] = dataclasses.field(default_factory=list)
    held: list[dict] = dataclasses.field(default_factory=list)
    tool: search.SearchTool | None = None
    judges: dict | None = None
    logger: log.Logger | None = None
    ckpt_dir: str = ""
    out: runs.Run | None = None  # the out dir's lock and config.json
    # skips a non-finite step, stops after optim.max_nonfinite of them (default: at the first)
    guard: nonfinite.Guard = dataclasses.field(default_factory=lambda: nonfinite.Guard(0))
    step: int = 0  # where the run resumes
    lam: float = 0.0  # rung 4's Lagrange multiplier, saved in the checkpoint


def recipe(cfg, judges, device) -> dict:
    """The step's functions with their settings bound once from the config: score, advantages,
    log-probs and loss (Run's fields of those names)."""
    r, v = cfg.rl, cfg.verifiers
    gpu = "triton" if device.type == "cuda" else "torch"  # what "auto" means
    advantages = group_advantages_triton if (r.advantage_impl if r.advantage_impl != "auto" else gpu) == "triton" \
        else rl.group_advantages
    return dict(
        score=functools.partial(verifiers.score_batch, weights=v.weights or None, judges=judges,
                                format_weight=v.format_weight, c_star=v.confidence_threshold,
                                rewards=v.rewards, recipes=v.recipes, mu=r.brier_coef, good_at=r.cale_tau),
        advantages=functools.partial(advantages, norm=r.adv_norm, cale_beta=r.cale_beta),
        logprobs=functools.partial(rlbatch.response_logprobs, temperature=cfg.rollout.temperature,
                                   impl=r.logprob_impl if r.logprob_impl != "auto" else gpu),
        loss=functools.partial(rl.policy_loss, algo=r.algo, clip_lo=r.clip_lo, clip_hi=r.clip_hi,
                               drift_coef=r.drift_coef, kl_coef=r.kl_coef, agg=r.agg,
                               max_new_tokens=cfg.rollout.max_new_tokens))


def score(run: Run, outs: list[rollout.Rollout], G: int, lam: float | None = None, mu: float | None = None):
    """Steps 2 and 3: rewards [B * G] (+ verifier metrics), policy-written lengths [B * G], the
    group advantages [B * G] and the confidence spans. `lam` (rung 4) gives fact lookups the search
    reward; `mu` as well (rl.confidence_adv) splits it: the tokens that write a stated confidence
    get their own advantage from its part Rc (confidence_spans), the response's other tokens the
    group advantage of R - Rc (DESIGN §4). spans is None without the split."""
    rewards, vmetrics = run.score([o.sample for o in outs], [o.text for o in outs], lam=lam)
    rewards = torch.tensor(rewards, dtype=torch.float32)  # [B * G]
    lengths = torch.tensor([sum(o.mask) for o in outs], dtype=torch.float32)  # [B * G] tool results excluded
    spans, answer_rewards = None, rewards
    if lam is not None and mu is not None:
        spans, rc = confidence_spans(run, outs, vmetrics, lam, mu)
        answer_rewards = rewards - torch.tensor([c if s is not None else 0.0 for s, c in zip(spans, rc)])  # [B * G]
    device = dist.device_of(run.policy.model)
    good = torch.tensor([m["good"] > 0 for m in vmetrics], device=device)  # [B * G] CALE's good set
    adv = run.advantages(answer_rewards.to(device), G, lengths=lengths.to(device), good=good)  # [B * G]
    return rewards, vmetrics, lengths, adv, spans


def confidence_spans(run: Run, outs: list[rollout.Rollout], vmetrics: list[dict], lam: float, mu: float):
    """Rung 4 (rl.confidence_adv) -> (spans, Rc): per response None or (start, end, A^conf, weight),
    the tokens that write a fact lookup's stated confidence, their own advantage
    (rl.confidence_advantages) and loss weight (policy tokens / span tokens): the confidence is a
    decision of its own and weighs as much as the rest of its response, not 3 tokens' share of 50;
    and each response's Rc (rl.confidence_reward; NaN without a stated confidence)."""
    rc = [rl.confidence_reward(m["correct"], m["false_certain"], m["confidence"], lam, mu)
          if "correct" in m and m["confidence"] is not None else math.nan for m in vmetrics]
    a = rl.confidence_advantages(torch.tensor(rc, dtype=torch.float64),
                                 torch.tensor([float(m.get("correct", 0.0)) for m in vmetrics]))  # [B * G]
    spans = [rlbatch.confidence_span(run.policy.tokenizer, o.ids) if not math.isnan(c) else None
             for o, c in zip(outs, rc)]
    return [None if s is None else (*s, float(v), sum(o.mask) / (s[1] - s[0])) for o, s, v in zip(outs, spans, a)], rc


def update(run: Run, outs: list[rollout.Rollout], adv: torch.Tensor, cfg, clock: list | None = None,
           spans: list | None = None) -> dict:
    """`rl.epochs` passes over `rl.mini_batches` optimiser steps, each accumulating micro-batches;
    returns the loss, the policy-loss metrics and the entropy, averaged over the updates. `clock`
    gets the time at which the old / reference log-probs are done; `spans` (confidence_spans)
    give some tokens an advantage of their own."""
    minis = rlbatch.prepare(outs, adv, cfg.rl.mini_batches, cfg.optim.micro_batch_size,
                            run.policy.tokenizer.pad_token_id, dist.device_of(run.policy.model),
                            run.logprobs, run.policy, run.ref, first_on_policy=cfg.rl.old_logp == "auto",
                            spans=spans)
    if clock is not None:
        clock.append(time.time())
    stats, ratio_max, n_updates = defaultdict(float), 0.0, 0
    for _ in range(cfg.rl.epochs):
        for mini in minis:
            # the loss is normalised by the whole optimiser step: every micro-batch, every rank
            n_tokens, n_seqs = dist.all_reduce_sum(list(rl.step_counts([b.mask for b in mini])))
            for j, b in enumerate(mini):
                logp, ent = run.logprobs(run.policy, b, entropy=True)  # [B, T_r] each
                if b.old_logp is None:  # on-policy (rl.old_logp=auto): kept for the later epochs
                    b = mini[j] = dataclasses.replace(b, old_logp=logp.detach())
                loss, m = run.loss(logp, b.old_logp, b.adv, b.mask, ref_logp=b.ref_logp, weight=b.weight,
                                   n_tokens=n_tokens, n_seqs=n_seqs)
                loss.backward()
                # metrics are per-token means: weigh each micro-batch by its share of the step's tokens
                share = float(b.mask.sum()) / max(n_tokens, 1)
                stats["loss"] += loss.item()
                stats["entropy"] += share * float((ent * b.mask).sum() / b.mask.sum().clamp(min=1))
                for key, v in m.items():
                    if key == "ratio_max":  # the step's largest ratio, whatever the micro-batch split
                        ratio_max = max(ratio_max, float(v))
                    else:
                        stats[key] += share * float(v)
            grad_norm = dist.clip_grad_norm_(run.policy.model, cfg.optim.grad_clip)
            stats["grad_norm"] += grad_norm
            run.guard.update(run.opt, grad_norm=grad_norm)  # opt.step() unless something is not finite
            run.sched.step()
            run.opt.zero_grad(set_to_none=True)
            n_updates += 1
    # each rank holds its token-weighted share of every stat; the grad norm is already global
    shares = [k for k in stats if k != "grad_norm"]
    stats.update(zip(shares, dist.all_reduce_sum([stats[k] for k in shares])))
    return {**{k: v / n_updates for k, v in stats.items()}, "ratio_max": dist.all_reduce_max(ratio_max)}
