"""
Group advantage + CALE length term as one Triton kernel: one program per prompt group.

The formulas and every choice are those of nanosafe.rl.group_advantages (nanosafe/rl.py, the
single source of truth); this file only maps them onto a kernel and is tested against it.
Statistics in float32, or float64 for float64 rewards (docs/kernels.md)."""
import torch
import triton
import triton.language as tl

@triton.jit
def _adv_kernel(r_ptr, len_ptr, good_ptr, par_ptr, out_ptr, G, STD: tl.constexpr, CALE: tl.constexpr,
                BLOCK_G: tl.constexpr):
    offs = tl.arange(0, BLOCK_G)  # [BG]
    ok = offs < G
    base = tl.program_id(0).to(tl.int64) * G
    r = tl.load(r_ptr + base + offs, mask=ok, other=0.0)  # [BG]
    eps = tl.load(par_ptr)
    # group advantage: see nanosafe/rl.py
    mean = tl.sum(r, 0) / G
    d = tl.where(ok, r - mean, 0.0)
    adv = d
    if STD:
        adv = d / (tl.sqrt(tl.sum(d * d, 0) / tl.maximum(G - 1, 1)) + eps)
    r_max = tl.max(tl.where(ok, r, float("-inf")), 0)
    flat = r_max == tl.min(tl.where(ok, r, float("inf")), 0)  # also true for a group of one
    adv = tl.where(flat, 0.0, adv)
    if CALE:
        # CALE: see nanosafe/rl.py
        L = tl.load(len_ptr + base + offs, mask=ok, other=0.0)  # [BG]
        beta = tl.load(par_ptr + 1)
        good = ok & (tl.load(good_ptr + base + offs, mask=ok, other=0) != 0)  # [BG]
        n_good = tl.sum(good.to(r.dtype), 0)
        mean_c = tl.sum(tl.where(good, L, 0.0), 0) / tl.maximum(n_good, 1.0)
        dc = tl.where(good, L - mean_c, 0.0)
        std_c = tl.sqrt(tl.sum(dc * dc, 0) / tl.maximum(n_good - 1.0, 1.0))
        spread = tl.max(tl.where(good, L, float("-inf")), 0) > tl.min(tl.where(good, L, float("inf")), 0)
        a_len = tl.where(good, tl.maximum(-(L - mean_c) / (std_c + eps), 0.0), 0.0)  # [BG]
        a_len = tl.where(spread & (n_good >= 2), a_len, 0.0)
        adv = adv + beta * a_len
    tl.store(out_ptr + base + offs, adv, mask=ok)

def group_advantages_triton(rewards, group_size, norm="std", eps=1e-6, lengths=None, cale_beta=0.0, good=None):
    """Same arguments and result as nanosafe.rl.group_advantages (see nanosafe/rl.py)."""
    if norm not in ("std", "none"):
        raise ValueError(f"norm must be 'std' or 'none', got {norm!r}")
    dt = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    r = rewards.reshape(-1).to(dt).contiguous()  # [B]
    if r.numel() % group_size:
        raise ValueError(f"{r.numel()} rewards do not split into groups of {group_size}")
    cale = lengths is not None and cale_beta != 0
    if cale and good is None:
        raise ValueError("CALE (cale_beta > 0) needs the good mask: which responses are correct / safe")
    L = lengths.reshape(-1).to(dt).contiguous() if cale else r  # [B]
    good = good.reshape(-1).to(torch.int8).contiguous() if cale else r  # [B]
    params = torch.tensor([eps, cale_beta], dtype=dt, device=r.device)
    out = torch.empty_like(r)
    _adv_kernel[(r.numel() // group_size,)](r, L, good, params, out, group_size, STD=norm == "std",
                                            CALE=cale, BLOCK_G=triton.next_power_of_2(group_size))
    return out
