"""The lean decode path (nanosafe/decode.py) against Hugging Face's forward and generate."""
import copy
import dataclasses

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.generation.logits_process import TopPLogitsWarper

from nanosafe import data, decode, rollout
from nanosafe.model import Bundle
from nanosafe.search import SearchTool

def qwen2(vocab=101, seed=0, tie=True, std=0.3) -> Qwen2ForCausalLM:
    """A random 2-layer Qwen2; std=None keeps HF's init (std 0.02: near-uniform logits), 0.3 makes
    the greedy choices clear-cut."""
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=tie, rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2 and std is not None:
                p.normal_(0, std)
    return model

def prompts(lengths, vocab=101, pad=0, seed=1):
    """Left-padded random prompts of the given lengths -> input_ids, attention_mask [B, T0]."""
    g = torch.Generator().manual_seed(seed)
    T0 = max(lengths)
    ids = torch.full((len(lengths), T0), pad)
    mask = torch.zeros((len(lengths), T0), dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, T0 - n:] = torch.randint(1, vocab, (n,), generator=g)
        mask[i, T0 - n:] = 1
    return ids, mask

def hf_new(model, ids, mask, n, stops, pad, **kw):
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, eos_token_id=stops,
                         pad_token_id=pad, repetition_penalty=1.0, **kw)
    return out[:, ids.shape[1]:]

def assert_steps_equal_forward(model, ids, mask, new):
    """Teacher-forced decode steps on new [B, n] give the logits of HF's forward over the whole
    sequence (fp32, left-padded prompts ids / mask [B, T0])."""
    full_mask = torch.cat([mask, torch.ones_like(new)], 1)
    pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(input_ids=torch.cat([ids, new], 1), attention_mask=full_mask, position_ids=pos).logits
        dec = decode.Decoder(model, ids, mask, new.shape[1])
        got = [dec.logits] + [dec.step(new[:, i]) for i in range(new.shape[1])]
    T0 = ids.shape[1]
    for i, logits in enumerate(got):
        torch.testing.assert_close(logits, ref[:, T0 - 1 + i].float(), atol=1e-5, rtol=1e-5)

def test_step_logits_equal_hf_forward():
    model = qwen2(tie=False)
    ids, mask = prompts([7, 3, 5, 1, 6])
    ids, mask = torch.cat([ids, ids[:2]]), torch.cat([mask, mask[:2]])  # two prompts twice: one prefill each
    new = torch.randint(1, 101, (7, 9), generator=torch.Generator().manual_seed(2))  # [B, 9]
    assert_steps_equal_forward(model, ids, mask, new)

@pytest.mark.parametrize("lengths", [[5, 2, 8], [4, 4, 1, 6, 3, 7, 2]])
def test_greedy_tokens_equal_generate(lengths):
    model = qwen2()
    ids, mask = prompts(lengths)
    free = hf_new(model, ids, mask, 12, [100], 0, do_sample=False)
    eos = int(free[0, 2])  # the first row writes it as its third token: that row ends early
    ref = hf_new(model, ids, mask, 12, [eos, 100], 0, do_sample=False)
    got = decode.sample(model, ids, mask, 12, [eos, 100], 0, greedy=True)
    assert torch.equal(got, ref)
    assert got[0, 2] == eos and (got[0, 3:] == 0).all() and got.shape[1] > 3

def test_sampled_tokens_equal_generate_with_the_same_seed(monkeypatch):
    """generate(do_sample, temperature, top_p, top_k=0) with its multinomial draw replaced by
    decode.draw gives our tokens under the same seed: the filtering order, the fp32 softmax, one
    uniform per row and step, pad after a stop, finished rows dropped without changing the draws."""
    model = qwen2()
    ids, mask = prompts([5, 2, 8, 3, 3, 6, 1, 4])
    monkeypatch.setattr(torch, "multinomial", lambda probs, num_samples: decode.draw(
        probs, torch.rand(probs.shape[0]))[:, None])
    for temperature, top_p in [(1.0, 1.0), (0.7, 0.9), (1.3, 0.5)]:
        torch.manual_seed(3)
        ref = hf_new(model, ids, mask, 16, [7, 11, 13], 0, do_sample=True, temperature=temperature,
                     top_p=top_p, top_k=0)
        torch.manual_seed(3)
        got = decode.sample(model, ids, mask, 16, [7, 11, 13], 0, temperature=temperature, top_p=top_p)
        assert torch.equal(got, ref), (temperature, top_p)
        assert (got == 0).sum(1).unique().numel() > 2  # rows stopped at different steps

def test_top_p_filter_is_hf_rule_and_draws_follow_it():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50, generator=g) * 3
    logits[0, :10] = 1.0  # ties
    for p in (0.0, 0.1, 0.5, 0.9, 0.999):
        assert torch.equal(decode.top_p_filter(logits, p), TopPLogitsWarper(p)(None, logits))
    row = torch.tensor([[2.0, 1.5, 1.0, 0.0, -1.0, -3.0]])  # nucleus at 0.8: the first three
    probs = decode.top_p_filter(row, 0.8).softmax(-1)[0]
    assert (probs[3:] == 0).all() and (probs[:3] > 0).all()
    torch.manual_seed(0)
    n = 40000
    draws = decode.pick(row.expand(n, -1), False, 1.0, 0.8, torch.rand(n))  # [n]
    freq = torch.bincount(draws, minlength=6).float() / n
    torch.testing.assert_close(freq, probs, atol=0.01, rtol=0)  # ~4 sigma
    # the extreme uniforms: the first and the last token of probability > 0, never a 0 after them
    edge = torch.tensor([0.0, 1 - 2 ** -24])
    assert decode.draw(probs.expand(2, -1), edge).tolist() == [0, 2]
    assert decode.draw(torch.tensor([[0.0, 0.3, 0.0, 0.7, 0.0]]), torch.ones(1)).tolist() == [3]

def test_supported_models(tiny):
    assert decode.supported(qwen2()) and decode.supported(tiny[2].model)  # Qwen2, Qwen2.5-VL
    sliding = qwen2()
    sliding.config.use_sliding_window = True
    assert not decode.supported(sliding)  # generate

def vl_bundle(tiny):
    """The tiny Qwen2.5-VL with its language model's matrices redrawn at std 0.3 (clear-cut greedy
    choices), and left-padded prompts with and without images (collated, with their vision inputs)."""
    bundle = copy.deepcopy(tiny[2])
    torch.manual_seed(0)
    with torch.no_grad():
        for p in bundle.model.model.language_model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    rows = data.read_jsonl(tiny[1]["heldout"])
    rows = [r for r in rows if r["images"]][:2] + [r for r in rows if not r["images"]][:1]
    return bundle, rows

def test_vl_step_logits_and_greedy_tokens_equal_generate(tiny):
    """A Qwen2.5-VL after HF's prefill (images, M-RoPE, left padding): each decode step's logits are
    generate's to 1e-5 (teacher-forced on generate's tokens) and the greedy tokens are generate's."""
    bundle, rows = vl_bundle(tiny)
    model, tok = bundle.model, bundle.tokenizer
    prompts_ = [data.encode_prompt(bundle, r, tiny[0].data) for r in rows]
    inputs = data.collate(prompts_, tok.pad_token_id, left=True)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert "image_grid_thw" in inputs and (mask == 0).any()
    ref = model.generate(**inputs, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id,
                         eos_token_id=[data.end_of_turn_id(tok)], repetition_penalty=1.0,
                         output_logits=True, return_dict_in_generate=True)
    new = ref.sequences[:, ids.shape[1]:]  # [B, 10]
    with torch.no_grad():
        dec = decode.Decoder(model, ids, mask, new.shape[1], vision=inputs)
        got = [dec.logits] + [dec.step(new[:, i]) for i in range(new.shape[1] - 1)]
    for i, logits in enumerate(got):
        torch.testing.assert_close(logits, ref.logits[i].float(), atol=1e-5, rtol=1e-5)
    greedy = decode.sample(model, ids, mask, 10, [data.end_of_turn_id(tok)], tok.pad_token_id, greedy=True,
                           vision=inputs)
    assert torch.equal(greedy, new) and len(new.unique()) > 3

def test_vl_rollouts_equal_the_generate_path(tiny, monkeypatch):
    """rollout.generate on the Qwen2.5-VL through the lean path and through model.generate (its
    multinomial replaced by decode.draw): the same sampled rollouts under the same seed."""
    bundle, rows = vl_bundle(tiny)
    monkeypatch.setattr(torch, "multinomial", lambda probs, num_samples: decode.draw(
        probs, torch.rand(probs.shape[0]))[:, None])
    rcfg = dataclasses.replace(tiny[0].rollout, max_new_tokens=12, gen_batch_size=5)
    runs = []
    for lean in (True, False):
        monkeypatch.setattr(decode, "supported", lambda m, lean=lean: lean)
        torch.manual_seed(5)
        runs.append(rollout.generate(bundle, rows, tiny[0].data, rcfg, n=3))
    fields = lambda r: (r.ids, r.mask, r.text, r.ended, r.bad_tokens)  # noqa: E731
    assert [fields(r) for r in runs[0]] == [fields(r) for r in runs[1]]
    assert len({tuple(r.ids) for r in runs[0]}) > 3

def biased_text_bundle(tiny):
    """A text Qwen2 on the tiny tokenizer whose logits favour `</search>` and end of turn, so
    random weights call the tool, stop and run out of budget within one batch."""
    tok = tiny[2].tokenizer
    model = qwen2(vocab=len(tok), tie=False)
    with torch.no_grad():
        for name, boost in (("</search>", 2.5), ("<|im_end|>", 2.0)):
            model.lm_head.weight[tok.convert_tokens_to_ids(name)] *= boost
    return Bundle(model, tok)

def test_rollouts_equal_the_generate_path(tiny, monkeypatch):
    """rollout.generate through the lean path and through model.generate (the fallback, its
    multinomial replaced by decode.draw): the same rollouts under the same seed, the search tool's
    calls, masks and ends included."""
    cfg = tiny[0]
    monkeypatch.setattr(torch, "multinomial", lambda probs, num_samples: decode.draw(
        probs, torch.rand(probs.shape[0]))[:, None])
    bundle = biased_text_bundle(tiny)
    rows = [r for r in data.read_jsonl(tiny[1]["heldout"]) if not r["images"]][:3]
    rcfg = dataclasses.replace(cfg.rollout, max_new_tokens=20, max_tool_calls=2, gen_batch_size=5)
    kb = SearchTool(["The capital of Zed is Qu.", "Bread is made of flour."])
    runs = []
    for lean in (True, False):
        monkeypatch.setattr(decode, "supported", lambda m, lean=lean: lean)
        torch.manual_seed(5)
        runs.append(rollout.generate(bundle, rows, cfg.data, rcfg, n=4, tool=kb))
    fields = lambda r: (r.ids, r.mask, r.text, r.tool_calls, r.ended, r.bad_tokens)  # noqa: E731
    assert [fields(r) for r in runs[0]] == [fields(r) for r in runs[1]]
    lean = runs[0]
    assert any(r.tool_calls for r in lean) and any(r.ended for r in lean) and any(r.truncated for r in lean)
    assert any(0 in r.mask for r in lean) and all(len(r.mask) == len(r.ids) <= 20 for r in lean)

def test_qwen2_5_stand_in_equals_hf(tmp_path, tiny, monkeypatch):
    """The published Qwen2.5-0.5B config (rope_theta 1e6, tied head, q/k/v biases, a
    generation_config whose top_k and repetition penalty rollout overrides), shrunk: the decode
    steps give HF's logits, and rollout.generate the same greedy rollouts as through generate."""
    import real_checkpoints
    from nanosafe import config, model
    path = real_checkpoints.write(str(tmp_path / "qwen"), "Qwen/Qwen2.5-0.5B-Instruct")
    bundle = model.load(path, config.parse(["model.dtype=float32"]).model)
    assert decode.supported(bundle.model) and bundle.model.config.rope_parameters["rope_theta"] == 1e6
    ids, mask = prompts([9, 4, 6], vocab=len(bundle.tokenizer), pad=bundle.tokenizer.pad_token_id)
    new = torch.randint(0, len(bundle.tokenizer), (3, 8), generator=torch.Generator().manual_seed(4))
    assert_steps_equal_forward(bundle.model, ids, mask, new)
    rows = [r for r in data.read_jsonl(tiny[1]["heldout"]) if not r["images"]][:3]
    rcfg = dataclasses.replace(tiny[0].rollout, max_new_tokens=16)
    runs = []
    for lean in (True, False):
        monkeypatch.setattr(decode, "supported", lambda m, lean=lean: lean)
        outs = rollout.generate(bundle, rows, tiny[0].data, rcfg, n=2, greedy=True)
        runs.append([(r.ids, r.ended) for r in outs])
    assert runs[0] == runs[1] and any(ids for ids, _ in runs[0])
