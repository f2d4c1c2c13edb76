"""nanosafe/rlbatch.py: how one RL step splits into optimiser steps and forward passes."""
import copy
import functools
import math

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

def _plain_tokenizer():
    """A byte-level BPE with no special tokens but its end of text: every tag is several tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["The answer is Zel. <confidence>0.25</confidence> confidence"] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")

def test_confidence_span_finds_the_tokens_that_write_p(tiny):
    """The value tokens of the last <confidence>...</confidence>, with the tags as special tokens
    (exact) and as plain text (from the decoded prefixes); none without a closed one."""
    tok = tiny[2].tokenizer
    plain = _plain_tokenizer()
    assert rollout.token_id(plain, "<confidence>") is None and rollout.token_id(tok, "<confidence>") is not None
    for t in (tok, plain):
        for text, value in [("<think>x</think>The answer is Zel.<confidence>0.25</confidence>", "0.25"),
                            ("<confidence>1</confidence> again <confidence>0.7</confidence><|im_end|>", "0.7"),
                            ("The answer is Zel.", None), ("The answer is Zel.<confidence>0.9", None),
                            ("<confidence></confidence>", None)]:
            ids = t(text, add_special_tokens=False)["input_ids"]
            span = rlbatch.confidence_span(t, ids)
            assert (t.decode(ids[span[0]:span[1]]) if span else None) == value, (t is plain, text, span)

def test_prepare_gives_the_confidence_tokens_their_own_advantage(tiny):
    cfg, paths, bundle = tiny
    tok = bundle.tokenizer
    sample = data.read_jsonl(paths["heldout"])[0]
    prompt = data.encode_prompt(bundle, sample, cfg.data)
    texts = ["<think>x</think>The answer is Zel.<confidence>0.9</confidence>", "<think>x</think>No idea at all, sorry."]
    outs = []
    for text in texts:
        r = rollout.Rollout(sample, prompt)
        r.ids = tok(text, add_special_tokens=False)["input_ids"]
        r.mask = [1] * len(r.ids)
        outs.append(r)
    start, end = rlbatch.confidence_span(tok, outs[0].ids)
    logprobs = functools.partial(rlbatch.response_logprobs, temperature=1.0, impl="torch")
    b = rlbatch.prepare(outs, torch.tensor([1.0, -1.0]), 1, 8, tok.pad_token_id, None, logprobs, bundle,
                        spans=[(start, end, -0.5, 6.0), None])[0][0]
    assert b.adv.shape == b.mask.shape == b.weight.shape  # [B, T_r]
    want, weight = torch.ones_like(b.adv), torch.ones_like(b.adv)
    want[0, start:end], want[1], weight[0, start:end] = -0.5, -1.0, 6.0
    assert torch.equal(b.adv, want) and torch.equal(b.weight, weight)
    plain = rlbatch.prepare(outs, torch.tensor([1.0, -1.0]), 1, 8, tok.pad_token_id, None, logprobs, bundle)[0][0]
    assert plain.adv.tolist() == [1.0, -1.0] and plain.weight is None  # no spans: one advantage per response

def test_confidence_spans_of_a_scored_step(tiny):
    """rlstep.confidence_spans: the stated confidences of fact lookups, scored by score_batch,
    get rl.confidence_advantages on their value tokens and a loss weight that makes the span weigh
    as much as the response's policy tokens; other labels and unstated ones get None."""
    import types

    import verifiers
    from nanosafe import rl, rlstep
    cfg, paths, bundle = tiny
    tok = bundle.tokenizer
    fact = {"id": "f", "label": "knowledge", "answer": "Zel", "prompt": "What is the capital of Q?"}
    chat = {"id": "c", "label": "general_rule", "answer": "4", "prompt": "2 + 2?"}
    think = "<think>I looked it up.</think>"
    texts = [(fact, think + "The answer is Zel.<confidence>0.9</confidence>"),
             (fact, think + "The answer is Zel.<confidence>0.5</confidence>"),
             (fact, think + "The answer is Pim.<confidence>0.8</confidence>"),
             (fact, think + "The answer is Pim.<confidence>0.1</confidence>"),
             (fact, think + "The answer is Zel."), (chat, think + "4")]
    outs = []
    for s, text in texts:
        r = rollout.Rollout(s, {})
        r.ids, r.text = tok(text, add_special_tokens=False)["input_ids"], text
        r.mask = [1] * len(r.ids)
        r.mask[:3] = [0, 0, 0]  # as if a tool had written them: they do not count
        outs.append(r)
    _, vm = verifiers.score_batch([s for s, _ in texts], [t for _, t in texts], lam=1.0)
    spans, rc = rlstep.confidence_spans(types.SimpleNamespace(policy=bundle), outs, vm, lam=1.0, mu=0.5)
    assert spans[4] is None and spans[5] is None and math.isnan(rc[4]) and math.isnan(rc[5])
    want_rc = [rl.confidence_reward(c, f, p, 1.0, 0.5) for c, f, p in
               [(True, 0, 0.9), (True, 0, 0.5), (False, 1, 0.8), (False, 0, 0.1)]]
    assert rc[:4] == pytest.approx(want_rc)
    want = rl.confidence_advantages(torch.tensor(want_rc), torch.tensor([1.0, 1.0, 0.0, 0.0]))
    for o, span, a in zip(outs, spans, want):
        assert tok.decode(o.ids[span[0]:span[1]]) == o.text[-16:-13]  # "0.9", ...
        assert span[2:] == pytest.approx((float(a), (len(o.ids) - 3) / (span[1] - span[0])))
    assert spans[0][2] > 0 > spans[1][2] and spans[3][2] > 0 > spans[2][2]

def test_score_splits_the_search_reward(tiny):
    """rlstep.score with mu (rl.confidence_adv): a stated confidence's Rc leaves the response's
    reward for the group advantage of its other tokens; a missing one (p = 1) stays in it."""
    import types

    import verifiers
    from nanosafe import rl, rlstep
    cfg, paths, bundle = tiny
    tok = bundle.tokenizer
    fact = {"id": "f", "label": "knowledge", "answer": "Zel", "prompt": "What is the capital of Q?"}
    texts = ["<think>x</think>The answer is Zel.<confidence>0.9</confidence>",
             "<think>x</think>The answer is Pim.<confidence>0.9</confidence>",
             "<think>x</think>The answer is Pim.<confidence>0.1</confidence>", "<think>x</think>The answer is Pim."]
    outs = []
    for text in texts:
        r = rollout.Rollout(fact, {})
        r.ids, r.text = tok(text, add_special_tokens=False)["input_ids"], text
        r.mask = [1] * len(r.ids)
        outs.append(r)
    score = functools.partial(verifiers.score_batch, mu=0.5)
    run = types.SimpleNamespace(policy=bundle, score=score, advantages=rl.group_advantages)
    rewards, _, _, adv, spans = rlstep.score(run, outs, 4, lam=2.0, mu=0.5)
    assert rewards.tolist() == pytest.approx([1.995, -1.405, 0.995, -1.5])  # y + Rc + format
    answer = torch.tensor([2.0, 1.0, 1.0, -1.5])  # y + format; the last keeps its Rc (-2 - 0.5)
    torch.testing.assert_close(adv, rl.group_advantages(answer, 4))
    assert [s is None for s in spans] == [False, False, False, True]
    _, _, _, plain, none = rlstep.score(run, outs, 4, lam=2.0)  # without mu: one advantage per response
    torch.testing.assert_close(plain, rl.group_advantages(rewards, 4))
    assert none is None
