"""nanosafe/rlbatch.py: how one RL step splits into optimiser steps and forward passes."""
import copy

import pytest
import torch

from nanosafe import attention, data, rlbatch, rollout
from nanosafe.model import Bundle


@pytest.mark.parametrize("n, minis, micro, want", [
    (8, 2, 3, [[[0, 1, 2], [3]], [[4, 5, 6], [7]]]),  # micro-batches never straddle a mini-batch
    (5, 2, 8, [[[0, 1, 2]], [[3, 4]]]),  # an uneven split: the last mini-batch is the short one
    (4, 1, 1, [[[0], [1], [2], [3]]]),
])
def test_split_into_mini_and_micro_batches(n, minis, micro, want):
    got = rlbatch.split(n, minis, micro)
    assert got == want
    assert [i for mini in got for m in mini for i in m] == list(range(n))  # every response once, in order

def _rollouts(bundle, samples, dcfg, lengths, seed=0):
    """Hand-made rollouts: len(lengths) // len(samples) per sample (sharing its prompt dict),
    random response tokens of the given lengths, a tool result (mask 0) in the longer ones."""
    g = torch.Generator().manual_seed(seed)
    n = len(lengths) // len(samples)
    prompts = [data.encode_prompt(bundle, s, dcfg) for s in samples]
    outs = []
    for i, k in enumerate(lengths):
        r = rollout.Rollout(samples[i // n], prompts[i // n])
        r.ids = torch.randint(20, 300, (k,), generator=g).tolist()
        r.mask = [0 if 3 <= t < 6 else 1 for t in range(k)]
        outs.append(r)
    return outs

@pytest.mark.parametrize("vl, per_row", [(True, 4), (True, 3), (False, 8)])
def test_shared_prompts_give_the_padded_logprobs_and_gradients(tiny, vl, per_row):
    """pack_shared (each prompt once per row of rollouts, the prompt-shared attention, M-RoPE for
    images) gives pack's log-probs and gradients in fp32, with empty responses and a group split
    over rows."""
    cfg, paths, bundle = tiny
    bundle = copy.deepcopy(bundle)
    if not vl:  # the same tokenizer on a text Qwen2
        from test_decode import qwen2
        bundle = Bundle(qwen2(vocab=len(bundle.tokenizer), tie=False, std=None), bundle.tokenizer)
    attention.use(bundle.model)
    assert attention.active(bundle.model)  # pack_shared is the default
    rows = data.read_jsonl(paths["heldout"])
    samples = [r for r in rows if r["images"]][:1] + [r for r in rows if not r["images"]][:2]
    if not vl:
        samples = [{**s, "images": []} for s in samples]
    outs = _rollouts(bundle, samples, cfg.data, [7, 0, 12, 5, 9, 3, 1, 10, 4, 8, 6, 11, 2, 13, 7])
    adv = torch.linspace(-1, 1, len(outs))
    pad = bundle.tokenizer.pad_token_id
    got = {}
    for layout in ("padded", "shared"):
        b = rlbatch.pack(outs, adv, pad) if layout == "padded" else \
            rlbatch.pack_shared(outs, adv, pad, None, bundle.model, per_row=per_row)
        bundle.model.zero_grad()
        logp, _ = rlbatch.response_logprobs(bundle, b, 0.7, "torch")  # [B, T_r]
        (logp * b.mask * adv[:, None]).sum().backward()
        got[layout] = logp.detach(), b, {k: p.grad.clone() for k, p in bundle.model.named_parameters()
                                         if p.grad is not None}
    (lp, bp, gp), (ls, bs, gs) = got["padded"], got["shared"]
    assert bs.inputs["input_ids"].numel() < bp.inputs["input_ids"].numel()  # prompts once per row
    assert torch.equal(bs.targets, bp.targets) and torch.equal(bs.mask, bp.mask)
    torch.testing.assert_close(ls, lp, rtol=0, atol=1e-6)
    assert gs.keys() == gp.keys() and gp
    for k in gp:
        torch.testing.assert_close(gs[k], gp[k], rtol=1e-5, atol=1e-6)
