"""metrics.jsonl (one JSON object per step), samples.jsonl (the rollouts, when asked for) and the
progress bar; rank 0 only. On resume the logs are cut back to the checkpoint's step (rewritten
atomically); a torn last line from a kill mid-write is dropped with a warning.

`io.report_to` also sends every numeric metric to TensorBoard (`out_dir/tb`; a resume purges the
steps it replays) or Weights & Biases (project $WANDB_PROJECT or "nanosafe"; WANDB_MODE=offline
without a network): optional packages, imported only then. metrics.jsonl stays the record."""
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
                 progress: bool = True, report_to: str = "none", run_config: dict | None = None):
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
        self.tracker = _tracker(report_to, out_dir, start, run_config) if enabled and report_to != "none" else None

    def log(self, step: int, metrics: dict, show: tuple[str, ...] = ()) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tracker:
            self.tracker[0](step, {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"})
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
        if self.tracker:
            self.tracker[1]()
            self.tracker = None

def _tracker(kind: str, out_dir: str, start: int, run_config: dict | None):
    """(send(step, metrics), close) for TensorBoard or W&B; a missing package is an ImportError
    saying what to install."""
    try:
        if kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
        else:  # config.CHOICES allows nothing else
            import wandb
    except ImportError:
        raise ImportError(f"io.report_to={kind} needs the {kind} package: pip install {kind} (or pip "
                          "install -e '.[logging]'), or io.report_to=none") from None
    if kind == "tensorboard":
        writer = SummaryWriter(os.path.join(out_dir, "tb"), purge_step=start + 1 if start else None)

        def send(step, metrics):
            for k, v in metrics.items():
                writer.add_scalar(k, v, step)
        return send, writer.close
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "nanosafe"), name=os.path.normpath(out_dir),
                     dir=out_dir, config=run_config)
    return (lambda step, metrics: run.log(metrics, step=step)), run.finish
