"""A run's directory: one run at a time, the settings it was started with, and nothing written
before the run can start (docs/failures.md, "The run directory").

    run = runs.start(cfg)   # init dir checked, resume compatibility checked, out_dir locked
    ...                     # world, data, tokenizer, model: everything that can reject input
    run.commit()            # out_dir/config.json written (atomically); io.overwrite clears first
    run.close()             # lock released (also at exit)"""
from __future__ import annotations

import atexit
import dataclasses
import json
import os
import shutil
import socket

from nanosafe import checkpoint, config, dist

LOCK = "run.lock"
# bookkeeping that never changes what a run trains; everything else must match to resume
HARMLESS = ("io.", "optim.max_nonfinite", "world.dir", "config_name")
RUN_FILES = ("ckpt", "model", "metrics.jsonl", "samples.jsonl", "tb")  # what io.overwrite removes
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model")

class RunError(RuntimeError):
    pass

def check_init(cfg) -> None:
    """An `init=` dir must be a saved model: a config and a tokenizer (else the tokenizer loads
    empty and the run fails much later). A name that is no local path is left to the hub."""
    init = cfg.init or cfg.model.init
    if not init:
        return
    key = "init" if cfg.init else "model.init"
    if not os.path.isdir(init):
        if os.path.exists(init) or init.startswith((".", "/", "~")) or init.count("/") != 1:
            raise RunError(f"{key}={init}: no such model directory")
        return  # an org/name hub id
    missing = [what for what, ok in (("config.json", os.path.isfile(os.path.join(init, "config.json"))),
               ("tokenizer files (" + " / ".join(TOKENIZER_FILES) + ")",
                any(os.path.isfile(os.path.join(init, f)) for f in TOKENIZER_FILES))) if not ok]
    if missing:
        raise RunError(f"{key}={init}: not a saved model, it has no {' and no '.join(missing)}; point it "
                       f"at a model/ dir written by train_sft.py / train_grpo.py or save_pretrained")

def has_run(out_dir: str) -> bool:
    return checkpoint.exists(os.path.join(out_dir, "ckpt")) or os.path.isdir(os.path.join(out_dir, "model"))

def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and not (prefix == "verifiers." and k in ("weights", "judges")):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out

def differences(saved: dict, new: dict) -> list[tuple[str, object, object]]:
    """(key, saved value, new value) for every setting that changes the run and differs."""
    a, b, missing, out = _flat(saved), _flat(new), object(), []
    for key in sorted(set(a) | set(b)):
        if key.startswith(HARMLESS):
            continue
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            out.append((key, "<absent>" if va is missing else va, "<absent>" if vb is missing else vb))
    return out

def check_resume(cfg) -> None:
    """A run in out_dir may be resumed only with the settings it was started with."""
    out_dir = cfg.io.out_dir
    if not has_run(out_dir):
        return
    path = os.path.join(out_dir, "config.json")
    fresh = (f"To start afresh, pick a new out_dir=..., or pass io.overwrite=true to replace that run "
             f"(its {', '.join(RUN_FILES)} are removed).")
    if cfg.io.overwrite:
        print(f"io.overwrite: the run in {out_dir} is replaced once this one starts")
        return
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise RunError(f"{out_dir} holds a run but its {path} cannot be read ({e}), so there is no way "
                       f"to tell whether it was started with these settings. {fresh}") from None
    diff = differences(saved, dataclasses.asdict(cfg))
    if diff:
        lines = "\n".join(f"  {k}: {va!r} -> {vb!r}" for k, va, vb in diff)
        raise RunError(f"{out_dir} holds a run started with other settings ({path}); resuming it would "
                       f"keep its old optimiser, schedule and data state under the new values:\n{lines}\n"
                       f"{fresh}")

def _owner(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}  # a lock cut short between create and write: its owner died there

def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:  # a killed run its parent has not reaped yet is a zombie: dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True

def acquire(out_dir: str) -> str:
    """Create out_dir/run.lock for this process, or raise RunError if a live run holds it."""
    path, me = os.path.join(out_dir, LOCK), {"pid": os.getpid(), "host": socket.gethostname()}
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = _owner(path)
            if owner == me:
                return path
            if owner.get("host", me["host"]) != me["host"]:
                raise RunError(f"{out_dir} is in use by pid {owner.get('pid')} on host {owner['host']} "
                               f"({path}); if that run is gone, delete the lock file") from None
            if _alive(owner.get("pid")):
                raise RunError(f"{out_dir} is in use by another run (pid {owner['pid']}, {path}); wait for "
                               f"it, or use another out_dir (if no run uses it, delete the lock file)") from None
            print(f"taking over the stale lock {path}: its run (pid {owner.get('pid')}) is no longer running")
            try:  # renamed, not removed: of two runs taking it over at once, one finds it gone
                os.rename(path, f"{path}.stale-{me['pid']}")
                os.remove(f"{path}.stale-{me['pid']}")
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return path

def release(path: str) -> None:
    if _owner(path) == {"pid": os.getpid(), "host": socket.gethostname()}:
        os.remove(path)

@dataclasses.dataclass
class Run:
    cfg: config.Config
    lock: str | None  # None on ranks other than 0
    created: bool  # out_dir did not exist: removed again if the run never starts

    def commit(self) -> None:
        """The run starts: clear an old run if asked, write config.json. Every rank calls it."""
        if self.lock:
            if self.cfg.io.overwrite:
                for name in RUN_FILES:
                    p = os.path.join(self.cfg.io.out_dir, name)
                    if os.path.isdir(p) and not os.path.islink(p):
                        shutil.rmtree(p)
                    elif os.path.lexists(p):
                        os.remove(p)
            config.save(self.cfg, verbose=False)
            self.created = False
        dist.barrier()  # no rank looks for a checkpoint before the old one is gone

    def close(self) -> None:
        if self.lock:
            release(self.lock)
            out = self.cfg.io.out_dir
            if self.created and os.path.isdir(out) and not os.listdir(out):
                os.rmdir(out)
            self.lock = None

def start(cfg) -> Run:
    """Check what can be checked without reading the data, print the config, lock out_dir.
    Call after dist.init; every rank calls it, rank 0 does the work."""
    if not dist.is_main():
        return Run(cfg, None, False)
    check_init(cfg)
    created = not os.path.isdir(cfg.io.out_dir)
    os.makedirs(cfg.io.out_dir, exist_ok=True)
    try:
        run = Run(cfg, acquire(cfg.io.out_dir), created)
    except RunError:
        if created:
            os.rmdir(cfg.io.out_dir)
        raise
    atexit.register(run.close)  # a run that fails before commit leaves out_dir as it was
    try:
        check_resume(cfg)  # under the lock: no other run changes out_dir meanwhile
    except RunError:
        run.close()
        raise
    print(json.dumps(dataclasses.asdict(cfg), indent=2))
    return run
