"""
Fused linear log-prob (+ entropy): per-token log p(target) and entropy from the last hidden
states and the LM head, without ever materialising the [N, V] logits (docs/kernels.md).

For hidden h [N, D], head W [V, D], temperature T and target t_n, with z = h W^T / T:
    log p_n = z_{n,t} - logsumexp_v z_{n,v}
    H_n     = logsumexp_v z_{n,v} - sum_v p_{n,v} z_{n,v}
Forward (Triton): the vocabulary is cut into S splits; each program folds its logits tiles into
three running values per row (online softmax; _merge combines the S partials, no atomics):
    m = max z,   s = sum exp(z - m),   w = sum exp(z - m) (z - m)
    logsumexp = m + log s,   H = log s - w / s
Backward (torch, every impl but naive), with g = dL/dlog p and g_H = dL/dH:
    dL/dz_v = g (1[v = t] - p_v) - g_H p_v (z_v - logsumexp + H),    dL/dlogit = dL/dz / T
recomputing the logits one vocabulary chunk at a time with the same fp32 accumulation and T.
Ignored rows (target == ignore_index) give log p 0, entropy 0 and zero gradient."""
import torch
import triton
import triton.language as tl

@triton.jit
def _fwd_kernel(h_ptr, w_ptr, tgt_ptr, m_ptr, s_ptr, ent_ptr, zt_ptr, N, V, D, stride_h, stride_w,
                temperature, cols_per_split, ENTROPY: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    row_ok = rows < N
    rows64 = rows.to(tl.int64)
    tgt = tl.load(tgt_ptr + rows64, mask=row_ok, other=-1)  # [BN], -1 never matches a column
    m = tl.full([BLOCK_N], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_N], tl.float32)
    w = tl.zeros([BLOCK_N], tl.float32)
    zt = tl.zeros([BLOCK_N], tl.float32)
    v_start = pid_s * cols_per_split
    v_end = tl.minimum(V, v_start + cols_per_split)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)  # [BV]
        col_ok = cols < v_end
        cols64 = cols.to(tl.int64)
        acc = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)  # [BD]
            d_ok = dd < D
            h = tl.load(h_ptr + rows64[:, None] * stride_h + dd[None, :],
                        mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # [BN, BD]
            wt = tl.load(w_ptr + cols64[:, None] * stride_w + dd[None, :],
                         mask=col_ok[:, None] & d_ok[None, :], other=0.0)  # [BV, BD]
            acc = tl.dot(h, tl.trans(wt), acc, input_precision="ieee")  # [BN, BV] fp32
        z = tl.where(col_ok[None, :], acc / temperature, float("-inf"))  # [BN, BV]
        m_new = tl.maximum(m, tl.max(z, 1))  # [BN], finite: every tile has a valid column
        scale = tl.exp(m - m_new)  # 0 on the first tile (m = -inf)
        e = tl.exp(z - m_new[:, None])  # [BN, BV], 0 on masked columns
        if ENTROPY:
            zs = tl.where(col_ok[None, :], z - m_new[:, None], 0.0)  # avoids -inf * 0
            w = scale * (w + tl.where(s > 0, m - m_new, 0.0) * s) + tl.sum(e * zs, 1)
        s = scale * s + tl.sum(e, 1)
        m = m_new
        zt += tl.sum(tl.where(cols64[None, :] == tgt[:, None], z, 0.0), 1)
    out = pid_s.to(tl.int64) * N + rows64
    tl.store(m_ptr + out, m, mask=row_ok)
    tl.store(s_ptr + out, s, mask=row_ok)
    tl.store(ent_ptr + out, w, mask=row_ok)
    tl.store(zt_ptr + out, zt, mask=row_ok)

def _merge(m, s, w):
    """Combine partial online-softmax triples stacked on dim 0 ([S, N] each) into [N] each."""
    M = m.amax(0)  # [N]
    M = torch.where(torch.isfinite(M), M, torch.zeros_like(M))  # -inf guard
    a = torch.exp(m - M)  # [S, N], 0 for an empty partial
    shift = torch.where(s > 0, m - M, torch.zeros_like(s)) * s  # never -inf * 0
    return M, (a * s).sum(0), (a * (w + shift)).sum(0)

_MM_OUT_DTYPE = True  # torch.mm(..., out_dtype=) exists on CUDA from torch 2.8

def _mm32(a, b):
    """a @ b accumulated and returned in fp32 (bf16 logits would round z by ~1e-2)."""
    global _MM_OUT_DTYPE
    if a.is_cuda and a.dtype in (torch.float16, torch.bfloat16) and _MM_OUT_DTYPE:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError):
            _MM_OUT_DTYPE = False
    return a.float() @ b.float()

def _forward_triton(h, W, tgt, T, entropy, block, splits):
    N, D = h.shape
    V = W.shape[0]
    BN, BV, BD = block
    tiles = triton.cdiv(V, BV)
    row_blocks = triton.cdiv(N, BN)
    if splits is None:  # enough programs for two waves on the GPU
        sms = torch.cuda.get_device_properties(h.device).multi_processor_count if h.is_cuda else 2
        splits = triton.cdiv(2 * sms, max(row_blocks, 1))
    splits = max(1, min(splits, tiles))
    cols_per_split = triton.cdiv(tiles, splits) * BV
    splits = triton.cdiv(V, cols_per_split)  # no empty split
    m, s, w, zt = torch.empty(4, splits, N, dtype=torch.float32, device=h.device)  # [S, N] each
    if N:  # a micro-batch may hold no response token
        _fwd_kernel[(row_blocks, splits)](h, W, tgt, m, s, w, zt, N, V, D, h.stride(0), W.stride(0),
                                          float(T), cols_per_split, ENTROPY=entropy, BLOCK_N=BN,
                                          BLOCK_V=BV, BLOCK_D=BD, num_warps=8 if BN * BV >= 8192 else 4)
    return (*_merge(m, s, w), zt.sum(0))

def _forward_torch(h, W, tgt, T, entropy, chunk):
    N, V = h.shape[0], W.shape[0]
    state = None
    zt = torch.zeros(N, dtype=torch.float32, device=h.device)
    for v0 in range(0, V, chunk):
        zs = _mm32(h, W[v0:v0 + chunk].t()).div_(T)  # [N, C] logits
        mc = zs.amax(1)  # [N]
        zs.sub_(mc[:, None])  # shifted in place: two [N, C] buffers at most
        e = torch.exp(zs)  # [N, C]
        wc = torch.einsum("nc,nc->n", e, zs) if entropy else torch.zeros_like(mc)
        part = torch.stack([mc, e.sum(1), wc])  # [3, N]
        state = part if state is None else torch.stack(_merge(*torch.stack([state, part], 1)))
        idx = tgt - v0
        inside = (idx >= 0) & (idx < zs.shape[1])  # [N]
        z_t = zs.gather(1, idx.clamp(0, zs.shape[1] - 1)[:, None])[:, 0] + mc
        zt += torch.where(inside, z_t, 0.0)
    return (*state, zt)

def _backward(h, W, tgt, logz, ent, g_logp, g_ent, T, chunk):
    N, V = h.shape[0], W.shape[0]
    dh = torch.zeros(N, h.shape[1], dtype=torch.float32, device=h.device)  # [N, D]
    dW = torch.empty_like(W)  # [V, D]
    for v0 in range(0, V, chunk):
        Wc = W[v0:v0 + chunk]  # [C, D]
        # in place from here: two [N, C] fp32 buffers at most
        logq = _mm32(h, Wc.t()).div_(T).sub_(logz[:, None])  # [N, C], same precision and T as forward
        p = torch.exp(logq)  # [N, C]
        if g_ent is None:
            coef = g_logp[:, None]
        else:  # g + g_H (log p_v + H)
            coef = logq.add_(ent[:, None]).mul_(g_ent[:, None]).add_(g_logp[:, None])
        dz = p.mul_(coef).neg_()  # [N, C]
        idx = tgt - v0
        inside = (idx >= 0) & (idx < Wc.shape[0])
        dz.scatter_add_(1, idx.clamp(0, Wc.shape[0] - 1)[:, None], torch.where(inside, g_logp, 0.0)[:, None])
        dlogit = dz.div_(T).to(h.dtype)  # [N, C], operands in the input dtype like any linear layer
        dh += _mm32(dlogit, Wc)
        dW[v0:v0 + chunk] = _mm32(dlogit.t(), h)  # [C, D], complete fp32 sum over N, cast once
    return dh.to(h.dtype), dW

class _FusedLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, W, tgt, T, want_ent, impl, block, splits, chunk):
        m, s, w, zt = (_forward_triton(h, W, tgt, T, want_ent, block, splits) if impl == "triton"
                       else _forward_torch(h, W, tgt, T, want_ent, chunk))
        valid = tgt >= 0
        logz = m + torch.log(s)  # [N]
        logp = torch.where(valid, zt - logz, 0.0)  # [N]
        ent = torch.where(valid, torch.log(s) - w / s, 0.0) if want_ent else logz.new_zeros(0)
        if not want_ent:
            ctx.mark_non_differentiable(ent)
        ctx.save_for_backward(h, W, tgt, logz, ent)
        ctx.T, ctx.chunk = T, chunk
        ctx.set_materialize_grads(False)
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        h, W, tgt, logz, ent = ctx.saved_tensors
        valid = tgt >= 0  # ignored rows get no gradient
        g_logp = torch.zeros_like(logz) if g_logp is None else torch.where(valid, g_logp.float(), 0.0)
        g_ent = torch.where(valid, g_ent.float(), 0.0) if g_ent is not None and ent.numel() else None
        dh, dW = _backward(h, W, tgt, logz, ent, g_logp, g_ent, ctx.T, ctx.chunk)
        return dh, dW, None, None, None, None, None, None, None

def _naive(h, W, tgt, T, want_ent):
    logq = torch.log_softmax((h.float() @ W.float().t()) / T, dim=-1)  # [N, V] fp32
    valid = tgt >= 0
    logp = torch.where(valid, logq.gather(1, tgt.clamp(min=0)[:, None])[:, 0], 0.0)
    ent = torch.where(valid, -(logq.exp() * logq).sum(-1), 0.0) if want_ent else None
    return logp, ent

def fused_logprob(hidden, weight, targets, temperature=1.0, return_entropy=False, ignore_index=-100,
                  impl="auto", block=(64, 128, 64), splits=None, chunk=None):
    """hidden [..., D], weight [V, D], targets [...] -> log p(target) [...] fp32 (, entropy [...]).

    impl: "triton" | "torch" | "naive" | "auto" (triton on CUDA, else torch). block = (BLOCK_N,
    BLOCK_V, BLOCK_D) and splits (vocab splits, None = fill the GPU) tune the Triton forward;
    chunk (vocab columns per step, None = ~64 MB temporaries) the torch forward and the backward.
    """
    if impl == "auto":
        impl = "triton" if hidden.is_cuda else "torch"
    if impl not in ("triton", "torch", "naive"):
        raise ValueError(f"impl must be triton|torch|naive|auto, got {impl!r}")
    lead = targets.shape
    h = hidden.reshape(-1, hidden.shape[-1]).contiguous()  # [N, D]
    W = weight.contiguous()  # [V, D]
    tgt = torch.where(targets == ignore_index, -1, targets).reshape(-1)  # [N], -1 marks an ignored row
    if impl == "torch" and tgt.numel() and not (-1 <= int(tgt.min()) and int(tgt.max()) < W.shape[0]):
        # the chunked gather would clamp an out-of-range id and return a finite, wrong log p
        raise IndexError(f"fused_logprob: target ids must lie in [0, {W.shape[0]}) (or be "
                         f"ignore_index={ignore_index}); got min {int(tgt.min())}, max {int(tgt.max())}")
    if impl == "naive":
        logp, ent = _naive(h, W, tgt, temperature, return_entropy)
    else:
        chunk = chunk or max(256, min(65536, 2 ** 24 // max(h.shape[0], 1)))  # ~64 MB per fp32 [N, chunk]
        logp, ent = _FusedLogprob.apply(h, W, tgt, float(temperature), return_entropy, impl, block,
                                        splits, chunk)
    logp = logp.reshape(lead)
    return (logp, ent.reshape(lead)) if return_entropy else logp
