"""metrics.jsonl (one JSON object per step), samples.jsonl (the rollouts, when asked for) and the
progress bar; rank 0 only. On resume the logs are cut back to the checkpoint's step (rewritten
atomically); a torn last line from a kill mid-write is dropped with a warning."""
from __future__ import annotations

import json
import os
import warnings

from tqdm import tqdm


def read_rows(path: str) -> list[tuple[str, dict]]:
    """(line, parsed row) of a JSONL log. A torn last line (a kill mid-write) is dropped with a
    warning naming the file; a bad line anywhere else is an error naming file and line."""
    with open(path) as f:
        lines = [line if line.endswith("\n") else line + "\n" for line in f]
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append((line, json.loads(line)))
        except json.JSONDecodeError as e:
            if n < len(lines):
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg}); only a torn last line is "
                                 f"dropped on resume, this one is not the last") from None
            warnings.warn(f"{path}:{n}: dropped a torn last line (a write cut short): {line.strip()[:80]!r}")
    return out


class Logger:
    def __init__(self, out_dir: str, total: int, start: int = 0, enabled: bool = True,
                 progress: bool = True):
        self.enabled = enabled
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.samples_path = os.path.join(out_dir, "samples.jsonl")
        for path in (self.path, self.samples_path):
            if enabled and os.path.exists(path):  # a resumed run replays the steps after its checkpoint
                rows = [line for line, row in read_rows(path) if row.get("step", 0) <= start]
                with open(path + ".tmp", "w") as f:
                    f.writelines(rows)
                os.replace(path + ".tmp", path)
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

    def samples(self, step: int, rows: list[dict]) -> None:
        """One JSON object per rollout, tagged with its step."""
        if not self.enabled:
            return
        with open(self.samples_path, "a") as f:
            for r in rows:
                f.write(json.dumps({"step": step, **r}) + "\n")

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def print(self, text: str) -> None:
        if self.enabled:
            self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
