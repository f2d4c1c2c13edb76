"""One node, many GPUs: torchrun + FSDP2, and the few collectives the scripts need (DESIGN §7).

    torchrun --nproc_per_node 8 train_grpo.py --config configs/qwen2_5_vl_7b.py stage=m3a init=...

Without torchrun every helper is a no-op (rank 0 of 1). Losses are divided by the step's global
counts, so the ranks' gradients SUM to the single-process gradient. How the sharding, the mixed
image/text batches and the rollouts work: docs/scaling.md, "Inside nanosafe/dist.py"."""
from __future__ import annotations

import atexit
import contextlib
import os
import sys
import warnings

import torch
import torch.distributed as tdist

_device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

def init(dcfg) -> torch.device:
    """Join torchrun's process group if launched by torchrun; returns this rank's device."""
    global _device
    if "WORLD_SIZE" in os.environ and not tdist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        # auto on CUDA: NCCL for GPU tensors, gloo for host ones (the rank-0 broadcast into
        # host-memory shards under cpu_offload, DCP's and all_gather_object's bookkeeping)
        backend = dcfg.backend if dcfg.backend != "auto" else ("cpu:gloo,cuda:nccl" if cuda else "gloo")
        tdist.init_process_group(backend)
        # every exit path (a script's end, a test driver's check) must leave the group: a process
        # that exits with gloo's threads alive aborts ("terminate called without an active exception")
        atexit.register(_destroy)
        _device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    return _device

def close() -> None:
    """Wait for every rank, leave the process group and exit at once (the end of a script): the
    interpreter's teardown sometimes aborted a finished rank (docs/scaling.md)."""
    if not tdist.is_initialized():
        return
    tdist.barrier()
    _destroy()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

def _destroy() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()

def rank() -> int:
    return tdist.get_rank() if tdist.is_initialized() else 0

def world_size() -> int:
    return tdist.get_world_size() if tdist.is_initialized() else 1

def is_main() -> bool:
    return rank() == 0

def barrier() -> None:
    if tdist.is_initialized():
        tdist.barrier()

def _all_reduce(x, op):
    if not tdist.is_initialized():
        return x
    xs = x if isinstance(x, (list, tuple)) else [x]
    t = torch.tensor(xs, dtype=torch.float64, device=_device)  # float64: counts stay exact
    tdist.all_reduce(t, op=op)
    out = [type(v)(s) for v, s in zip(xs, t.tolist())]
    return out if isinstance(x, (list, tuple)) else out[0]

def all_reduce_sum(x):
    """Sum a number (or a list of numbers) over the ranks; ints stay ints."""
    return _all_reduce(x, tdist.ReduceOp.SUM)

def all_reduce_max(x):
    return _all_reduce(x, tdist.ReduceOp.MAX)

def gather_objects(items: list) -> list:
    """Concatenate every rank's list, in rank order."""
    if not tdist.is_initialized():
        return items
    parts = [None] * world_size()
    tdist.all_gather_object(parts, items)
    return [x for p in parts for x in p]

def local_slice(items: list, parts: int = 1) -> list:
    """This rank's share of a step's global batch: a contiguous slice; with `parts` > 1 (the RL
    step's mini-batches) a slice of each part, so that every optimiser step of the step sees the
    samples it would see in one process."""
    n, w = len(items), world_size()
    if n % (parts * w):
        raise ValueError(f"a global batch of {n} does not split into {parts} part(s) x {w} rank(s)")
    size = n // (parts * w)
    return [x for k in range(parts) for x in items[(k * w + rank()) * size:(k * w + rank() + 1) * size]]

def main_first(fn, *args):
    """fn(*args) on rank 0, then on the others: write shared files once, then read them."""
    out = fn(*args) if is_main() else None
    barrier()
    return out if is_main() else fn(*args)

def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)

def device_of(model) -> torch.device:
    """Where `model` computes: its parameters' device, except under FSDP, where the shards may
    live in host memory (cpu_offload) while the compute runs on this rank's device."""
    return _device if is_sharded(model) else next(model.parameters()).device

def shard(model: torch.nn.Module, dcfg) -> torch.nn.Module:
    """FSDP2 as docs/scaling.md says; a single process just moves the model to its device."""
    if not tdist.is_initialized():
        return model.to(_device)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard

    kw = {"mesh": init_device_mesh(_device.type, (world_size(),))}
    if _device.type == "cuda" and dcfg.mixed_precision == "bf16":
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if dcfg.cpu_offload:
        kw["offload_policy"] = CPUOffloadPolicy(pin_memory=_device.type == "cuda")
    on_meta = any(p.is_meta for p in model.parameters())
    from_rank0 = bool(all_reduce_max(int(on_meta)))  # some ranks built a skeleton to be filled
    full = model.state_dict() if from_rank0 and is_main() else {}
    for m in model.modules():
        if type(m).__name__.endswith("DecoderLayer"):
            fully_shard(m, reshard_after_forward=True, **kw)
    fully_shard(model, reshard_after_forward=False, **kw)
    model.set_reduce_scatter_unused_params(True)
    # The root's pre-backward hook must issue no collective: it fires only on a rank whose loss
    # reaches one of the root's outputs (docs/scaling.md, "mixed image/text batches"). Prefetching
    # itself (instead of FSDP's default, the next layer) is a no-op: the root stays gathered.
    model.set_modules_to_backward_prefetch([model])
    for m in model.modules():
        if isinstance(m, FSDPModule):  # sum, not mean, over ranks (docs/scaling.md: "Data parallelism")
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-scaled sum)
    if from_rank0:
        if on_meta:
            model.to_empty(device="cpu" if dcfg.cpu_offload else _device)
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True,
                                                                   broadcast_from_rank0=True))
        for mod in model.modules():  # buffers (rotary frequencies) are not in the state dict
            for name, buf in mod.named_buffers(recurse=False):
                buf = buf.to(_device)
                tdist.broadcast(buf, src=0)
                setattr(mod, name, buf)
    model._rollout_unshard = dcfg.rollout_unshard  # read by `generation`
    # the modules holding parameters of their own, each marked when a step's loss can reach it
    model._nanosafe_owners = [m for m in model.modules() if next(m.parameters(recurse=False), None) is not None]
    for m in model._nanosafe_owners:
        m.register_forward_hook(_mark_used)
    # FSDP warns that the model returns views (logits slices); nanosafe never edits them in place
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    return model

@contextlib.contextmanager
def generation(model):
    """Around `generate` on every rank; yields True when the ranks must run in lockstep (the layers
    stay sharded), False when each rank may generate on its own (single process, or policy gathered)."""
    from torch.distributed.fsdp import FSDPModule
    if not is_sharded(model):
        yield False
        return
    # the root unit in both modes: generate runs the vision tower outside the hooks that gather it
    units = [m for m in model.modules() if isinstance(m, FSDPModule)] if model._rollout_unshard else [model]
    for m in units:
        m.unshard()
        m.set_reshard_after_forward(False)
    try:
        yield not model._rollout_unshard
    finally:
        for m in units:
            m.reshard()
            m.set_reshard_after_forward(m is not model)  # back to `shard`'s setting

def _mark_used(module, args, out) -> None:
    if torch.is_grad_enabled():  # a forward the loss can reach (not old / reference log-probs)
        module._nanosafe_used = True

def clip_grad_norm_(model, max_norm: float) -> float:
    """Clip the global gradient norm (over every shard of every rank); returns it. Under FSDP a
    parameter whose module ran no forward with grad on any rank since the last step gets a None
    gradient, as an unused parameter has in one process, so AdamW skips it there too
    (docs/scaling.md, "Unused parameters"). A parameter shared by two modules (tied embedding and
    LM head) is used when either ran."""
    if is_sharded(model):
        owners = model._nanosafe_owners
        used = torch.tensor([float(getattr(m, "_nanosafe_used", False)) for m in owners], device=_device)
        tdist.all_reduce(used, op=tdist.ReduceOp.MAX)  # [M] 1 where any rank ran the module
        ran = {id(p) for m, u in zip(owners, used.tolist()) if u for p in m.parameters(recurse=False)}
        for m in owners:
            m._nanosafe_used = False
        for p in model.parameters():
            if id(p) not in ran:
                p.grad = None
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

def full_copy(model):
    """The model itself when unsharded. Under FSDP (a collective) rank 0 gets a plain copy of the
    model class with the consolidated weights on the host, for save_pretrained; the others None."""
    if not is_sharded(model):
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main():
        return None
    cls = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))  # the class before fully_shard
    with torch.device("meta"):
        plain = cls(model.config)
    plain.load_state_dict(state, assign=True)
    plain.tie_weights()  # assign replaced the shared embedding / LM head tensor by two equal ones
    plain.generation_config = model.generation_config
    return plain
