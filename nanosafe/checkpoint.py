"""Resumable training state: model, optimiser, scheduler, RNG, step, data position and any extra
scalars (e.g. rung 4's Lagrange multiplier), written atomically to `<out_dir>/ckpt/`. The data
position is not stored: it follows from the step (data.batch_order).

One process: `state.pt`, written to a temporary file and renamed; loading uses
`torch.load(weights_only=True)`, so a checkpoint cannot run code. A state holding a NaN or inf
(weights, buffers or optimiser moments) is refused before anything is written.

Under FSDP (nanosafe.dist), each rank writes only its shards: `step-<N>/` holds the model and
optimiser through torch.distributed.checkpoint (DCP; `get_state_dict` / `set_state_dict` map
FSDP's sharded tensors to plain names, so DCP could reshard them onto another world size) and a
`rank<r>.pt` per rank with what is not sharded: the scheduler, step, extra scalars and that rank's
RNG state (each rank samples its own stream, so resuming replays exactly). The file `latest`
names the newest complete directory; it is replaced atomically after every rank has finished
writing, and only then are older directories removed, so a crash mid-save keeps the previous
checkpoint. Resuming needs the same number of ranks (the RNG streams are per rank).

`io.keep_last` = N keeps the N newest checkpoints (one process: `state-<step>.pt` too, a hard link
to `state.pt` when written; FSDP: the `step-*` directories), removed only once the new one is
complete; one from a later step (left from before resuming an earlier one) goes too. To go back,
copy `state-<step>.pt` over `state.pt` (or name the directory in `latest`). The final policy is
exported separately with `save_pretrained` (nanosafe.model.export).
"""
from __future__ import annotations

import os
import random
import re
import shutil

import torch

from nanosafe import dist

FILE = "state.pt"
LATEST = "latest"

def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_pos": random.getstate()[2]}
    if torch.cuda.is_available():  # sampling on a GPU draws from the device's generator
        state["cuda"] = torch.cuda.get_rng_state()
    return state

def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate((3, tuple(s["python"]), s["python_pos"]))
    if "cuda" in s:
        torch.cuda.set_rng_state(s["cuda"])

def nonfinite(model, optimizer) -> list[str]:
    """Names of this rank's parameters, buffers and optimiser states holding a NaN or inf."""
    local = lambda t: t.to_local() if hasattr(t, "to_local") else t  # noqa: E731  (FSDP's DTensor shards)
    bad = [n for n, t in [*model.named_parameters(), *model.named_buffers()]
           if t.is_floating_point() and not torch.isfinite(local(t)).all()]
    for i, st in enumerate(optimizer.state.values()):
        bad += [f"optimizer state {i}.{k}" for k, t in st.items() if torch.is_tensor(t)
                and t.is_floating_point() and not torch.isfinite(local(t)).all()]
    return bad

def save(ckpt_dir: str, model, optimizer, scheduler, step: int, extra: dict | None = None,
         keep_last: int = 1) -> None:
    """Every rank calls it (a collective under FSDP). A state with a NaN or inf anywhere is never
    written: FloatingPointError, and the previous checkpoint stays. `keep_last` checkpoints stay."""
    bad = nonfinite(model, optimizer)
    if dist.all_reduce_max(float(bool(bad))):
        raise FloatingPointError(f"step {step}: not writing a checkpoint to {ckpt_dir}: non-finite "
                                 f"{', '.join(bad[:4]) or 'values on another rank'}"
                                 f"{f' and {len(bad) - 4} more' if len(bad) > 4 else ''}; "
                                 f"the previous checkpoint is kept")
    os.makedirs(ckpt_dir, exist_ok=True)
    rest = {"scheduler": scheduler.state_dict(), "rng": rng_state(), "step": step, "extra": extra or {}}
    if not dist.is_sharded(model):
        tmp = os.path.join(ckpt_dir, FILE + ".tmp")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), **rest}, tmp)
        os.replace(tmp, os.path.join(ckpt_dir, FILE))
        if keep_last > 1:
            kept = os.path.join(ckpt_dir, f"state-{step:08d}.pt")
            if os.path.exists(kept):  # left from before a resume from an earlier step
                os.remove(kept)
            try:
                os.link(os.path.join(ckpt_dir, FILE), kept)
            except OSError:  # a file system without hard links
                shutil.copyfile(os.path.join(ckpt_dir, FILE), kept)
        _prune(ckpt_dir, step, keep_last if keep_last > 1 else 0)  # state.pt is the last one
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    name = f"step-{step:08d}"
    path = os.path.join(ckpt_dir, name)
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=path)
    torch.save({**rest, "world_size": dist.world_size()}, os.path.join(path, f"rank{dist.rank()}.pt"))
    dist.barrier()
    if dist.is_main():
        with open(os.path.join(ckpt_dir, LATEST + ".tmp"), "w") as f:
            f.write(name)
        os.replace(os.path.join(ckpt_dir, LATEST + ".tmp"), os.path.join(ckpt_dir, LATEST))
        _prune(ckpt_dir, step, keep_last)
    dist.barrier()

def _prune(ckpt_dir: str, step: int, keep: int) -> None:
    """Remove the step-<N>/ and state-<N>.pt checkpoints but the newest `keep` with N <= step."""
    found = {}
    for name in os.listdir(ckpt_dir):
        m = re.fullmatch(r"step-(\d+)|state-(\d+)\.pt", name)
        if m:
            found[name] = int(m.group(1) or m.group(2))
    kept = sorted((n for n in found if found[n] <= step), key=found.get)[-keep:] if keep else []
    for name in set(found) - set(kept):
        path = os.path.join(ckpt_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)

def exists(ckpt_dir: str) -> bool:
    return any(os.path.exists(os.path.join(ckpt_dir, f)) for f in (FILE, LATEST))

def load(ckpt_dir: str, model, optimizer, scheduler) -> tuple[int, dict]:
    """Restore everything in place; returns (step, extra)."""
    sharded = dist.is_sharded(model)
    if not os.path.exists(os.path.join(ckpt_dir, LATEST if sharded else FILE)):
        raise FileNotFoundError(f"{ckpt_dir} holds a {'single-process' if sharded else 'sharded'} "
                                "checkpoint; resume it the way it was written (torchrun or not)")
    if not sharded:
        state = torch.load(os.path.join(ckpt_dir, FILE), weights_only=True, map_location="cpu")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    else:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
        with open(os.path.join(ckpt_dir, LATEST)) as f:
            path = os.path.join(ckpt_dir, f.read().strip())
        model_state, optim_state = get_state_dict(model, optimizer)
        shards = {"model": model_state, "optimizer": optim_state}
        dcp.load(shards, checkpoint_id=path)
        set_state_dict(model, optimizer, model_state_dict=shards["model"], optim_state_dict=shards["optimizer"])
        own = os.path.join(path, f"rank{dist.rank()}.pt")
        state = torch.load(own, weights_only=True) if os.path.exists(own) else {}
        if state.get("world_size") != dist.world_size():
            raise RuntimeError(f"{path} was written by a different number of ranks; resume with the same "
                               f"number (the RNG streams are per rank)")
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state["step"], state["extra"]
