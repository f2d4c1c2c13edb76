"""Resumable training state: model, optimiser, scheduler, RNG, step, data position and any extra
scalars (e.g. rung 4's Lagrange multiplier), written atomically to `<out_dir>/ckpt/`.

Loading uses `torch.load(weights_only=True)`, so a checkpoint cannot run code. The final policy is
exported separately with `save_pretrained` (nanosafe.model.export).
"""
from __future__ import annotations

import os
import random

import torch

FILE = "state.pt"


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "python_pos": random.getstate()[2]}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate((3, tuple(s["python"]), s["python_pos"]))


def save(ckpt_dir: str, model, optimizer, scheduler, step: int, extra: dict | None = None) -> None:
    os.makedirs(ckpt_dir, exist_ok=True)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "rng": rng_state(), "step": step,
             "extra": extra or {}}
    tmp = os.path.join(ckpt_dir, FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, os.path.join(ckpt_dir, FILE))


def exists(ckpt_dir: str) -> bool:
    return os.path.exists(os.path.join(ckpt_dir, FILE))


def load(ckpt_dir: str, model, optimizer, scheduler) -> tuple[int, dict]:
    """Restore everything in place; returns (step, extra)."""
    state = torch.load(os.path.join(ckpt_dir, FILE), weights_only=True, map_location="cpu")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state["step"], state["extra"]
