"""kernels/ against float64 references; Triton runs interpreted on the CPU (see conftest.py).

Inputs are fresh random numbers every run; the seed is in every assertion message.
Error model. u = 2^-24 is fp32's unit roundoff and S = 1 + max |logit| the largest logit a row
block sees: a logit carries ~u*S absolute error, hence so do log p and H, and the gradients carry
~u*S relative to their scale; tolerances are 32*u*S (forward) and 64*u*S (backward). fp16 inputs
are exact in fp32, so the forward keeps the fp32 bound, but the gradients are returned in fp16 and
their dlogit operands are rounded to fp16 as in any fp16 linear layer: 2^-11 relative each, so the
backward gets 4 * 2^-11 of the gradient's scale.
"""
import random

import pytest
import torch

from kernels.advantage import group_advantages_triton
from kernels.logprob import fused_logprob
from nanosafe.rl import group_advantages

N, D, V = 37, 96, 1001
SMALL = dict(block=(16, 64, 32), splits=3, chunk=300)  # several splits and chunks, masked edges
U = 2.0 ** -24


@pytest.fixture
def seed():
    s = random.randrange(2 ** 31)
    torch.manual_seed(s)
    return s


def make_inputs(dtype, shift=0.0):
    h = torch.randn(N, D)
    W = torch.randn(V, D) * 0.3
    W[:, 0] = 1.0  # h[:, 0] then shifts every logit of its row
    h[:, 0] = 0.0
    h[5, 0] = h[6, 0] = shift  # two rows of very negative logits
    t = torch.randint(0, V, (N,))
    t[3] = t[10] = -100  # ignored rows
    return h.to(dtype), W.to(dtype), t


def reference(h, W, t, T):
    """float64 log_softmax + gather on the very same (rounded) inputs; returns the leaves too."""
    h, W = h.double().requires_grad_(), W.double().requires_grad_()
    z = h @ W.t() / T  # [N, V]
    logq = torch.log_softmax(z, -1)
    valid = t >= 0
    logp = torch.where(valid, logq.gather(1, t.clamp(min=0)[:, None])[:, 0], 0.0)
    ent = torch.where(valid, -(logq.exp() * logq).sum(-1), 0.0)
    return logp, ent, h, W, 1 + z.abs().max().item()


def assert_close(x, ref, tol, what, seed):
    err = (x.double() - ref).abs().max().item()
    assert err <= tol, f"{what}: max error {err:.3g} > {tol:.3g} (seed {seed})"


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("T", [0.7, 1.0, 1.5])
def test_logprob_entropy_and_grads_vs_float64(impl, dtype, T, seed):
    h, W, t = make_inputs(dtype, shift=-200.0)  # exp(-200 / T) underflows fp32 unless shifted
    g, g_ent = torch.randn(N), torch.randn(N)
    logp_ref, ent_ref, h64, W64, S = reference(h, W, torch.where(t == -100, -1, t), T)
    (g * logp_ref + g_ent * ent_ref).sum().backward()

    hh, WW = h.clone().requires_grad_(), W.clone().requires_grad_()
    logp, ent = fused_logprob(hh, WW, t, T, return_entropy=True, impl=impl, **SMALL)
    (g * logp + g_ent * ent).sum().backward()

    assert logp.dtype == ent.dtype == torch.float32 and hh.grad.dtype == WW.grad.dtype == dtype
    assert_close(logp, logp_ref, 32 * U * S, "logp", seed)
    assert_close(ent, ent_ref, 32 * U * S, "entropy", seed)
    rel = 64 * U * S if dtype == torch.float32 else 4 * 2.0 ** -11
    assert_close(hh.grad, h64.grad, rel * h64.grad.abs().max().item(), "dh", seed)
    assert_close(WW.grad, W64.grad, rel * W64.grad.abs().max().item(), "dW", seed)
    ignored = t == -100
    assert (logp[ignored] == 0).all() and (ent[ignored] == 0).all()
    assert (hh.grad[ignored] == 0).all()


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_extremely_negative_rows_stay_finite(impl, seed):
    h, W, t = make_inputs(torch.float32, shift=-1e4)
    hh, WW = h.clone().requires_grad_(), W.clone().requires_grad_()
    logp, ent = fused_logprob(hh, WW, t, 0.7, return_entropy=True, impl=impl, **SMALL)
    (logp + ent).sum().backward()
    for x in (logp, ent, hh.grad, WW.grad):
        assert torch.isfinite(x).all(), f"seed {seed}"
    logp_ref, ent_ref, *_, S = reference(h, W, torch.where(t == -100, -1, t), 0.7)
    assert_close(logp, logp_ref, 32 * U * S, "logp", seed)


@pytest.mark.parametrize("impl", ["triton", "torch", "naive"])
def test_logprob_only_with_leading_dims(impl, seed):
    h, W, t = make_inputs(torch.float32)
    g = torch.randn(N)
    logp_ref, _, h64, W64, S = reference(h, W, torch.where(t == -100, -1, t), 1.0)
    (g * logp_ref).sum().backward()
    hh, WW = h.clone().requires_grad_(), W.clone().requires_grad_()
    kw = {} if impl == "naive" else SMALL
    # [N, D] viewed as [1, N, D]: the trainer passes [B, T, D] hidden states and [B, T] targets
    logp = fused_logprob(hh[None], WW, t[None], impl=impl, **kw)
    assert logp.shape == (1, N)
    (g * logp[0]).sum().backward()
    assert_close(logp[0], logp_ref, 32 * U * S, "logp", seed)
    assert_close(hh.grad, h64.grad, 64 * U * S * h64.grad.abs().max().item(), "dh", seed)
    assert_close(WW.grad, W64.grad, 64 * U * S * W64.grad.abs().max().item(), "dW", seed)


@pytest.mark.parametrize("impl", ["triton", "torch", "naive"])
def test_no_rows(impl):
    h, W = torch.randn(0, 32, requires_grad=True), torch.randn(100, 32, requires_grad=True)
    logp, ent = fused_logprob(h, W, torch.zeros(0, dtype=torch.long), return_entropy=True, impl=impl)
    (logp.sum() + ent.sum()).backward()
    assert logp.shape == ent.shape == (0,) and (W.grad == 0).all()


def test_triton_default_blocks_and_splits(seed):
    h, W, t = make_inputs(torch.float32)
    logp, ent = fused_logprob(h, W, t, 1.0, return_entropy=True, impl="triton")  # (64, 128, 64)
    logp_ref, ent_ref, *_, S = reference(h, W, torch.where(t == -100, -1, t), 1.0)
    assert_close(logp, logp_ref, 32 * U * S, "logp", seed)
    assert_close(ent, ent_ref, 32 * U * S, "entropy", seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("G", [1, 2, 3, 8, 13])
def test_advantage_kernel_matches_rl(dtype, G, seed):
    n = 7
    R = torch.randint(0, 3, (n * G,)).to(dtype) / 2  # ties at 0, 0.5, 1 ...
    R = R + (torch.rand(n * G) < 0.3) * torch.rand(n * G, dtype=dtype)  # ... and some continuous
    R[:G] = 0.1  # an all-equal group (0.1 * G / G != 0.1 in floating point)
    L = torch.randint(1, 60, (n * G,))
    good, wrong = R >= 0.5, torch.zeros(n * G, dtype=torch.bool)  # wrong: an all-wrong batch, no CALE
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    for kw in (dict(), dict(norm="none"), dict(lengths=L, cale_beta=0.2, good=good),
               dict(lengths=L, cale_beta=1.0, good=wrong), dict(norm="none", lengths=L, cale_beta=0.5, good=good)):
        ref = group_advantages(R, G, **kw)
        out = group_advantages_triton(R, G, **kw)
        assert out.dtype == ref.dtype
        assert_close(out, ref, tol * (1 + ref.abs().max().item()), str(kw), seed)
        if "lengths" not in kw:
            assert (out[:G] == 0).all(), f"seed {seed}"  # exactly, like rl.py
        if G == 1:
            assert (out == 0).all(), f"seed {seed}"
    with pytest.raises(ValueError, match="good mask"):
        group_advantages_triton(R, G, lengths=L, cale_beta=0.2)
