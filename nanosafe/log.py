"""metrics.jsonl (one JSON object per step) and the progress bar, printed by rank 0 only."""
from __future__ import annotations

import json
import os

from tqdm import tqdm


class Logger:
    def __init__(self, out_dir: str, total: int, start: int = 0, enabled: bool = True,
                 progress: bool = True):
        self.enabled = enabled
        self.path = os.path.join(out_dir, "metrics.jsonl")
        if enabled and os.path.exists(self.path):  # a resumed run replays the steps after its checkpoint
            with open(self.path) as f:
                rows = [line for line in f if json.loads(line).get("step", 0) <= start]
            with open(self.path, "w") as f:
                f.writelines(rows)
        self.bar = tqdm(total=total, initial=start, dynamic_ncols=True,
                        disable=not (enabled and progress))

    def log(self, step: int, metrics: dict, show: tuple[str, ...] = ()) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if show:
            self.bar.set_postfix({k: f"{metrics[k]:.3g}" for k in show if k in metrics}, refresh=False)

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def print(self, text: str) -> None:
        if self.enabled:
            self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
