"""Rollouts: the search-tool loop (stop, insert, continue, mask), vision-token guard, BM25."""
import pytest
import torch

from nanosafe import config, data, rollout
from nanosafe.config import RolloutConfig
from nanosafe.model import Bundle
from nanosafe.search import SearchTool


class ScriptedModel(torch.nn.Module):
    """Stands in for a policy: each generate() call emits the next scripted token list."""

    def __init__(self, scripts, pad):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.scripts, self.pad, self.calls = list(scripts), pad, []

    def generate(self, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, **kw):
        self.calls.append(input_ids.clone())
        new = [s[:max_new_tokens] for s in self.scripts.pop(0)]
        width = max(len(s) for s in new)
        new = torch.tensor([s + [self.pad] * (width - len(s)) for s in new])
        return torch.cat([input_ids, new], 1)


def test_tool_loop_stops_inserts_continues_and_masks(tiny):
    cfg, _, bundle = tiny
    tok = bundle.tokenizer
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    first = enc("<think>look it up<search>capital of Zed</search>")
    second = enc("so it is Qu</think>Qu") + [eos]
    model = ScriptedModel([[first], [second]], tok.pad_token_id)
    kb = SearchTool(["The capital of Zed is Qu.", "Bread is made of flour."])
    sample = {"id": "q", "prompt": "What is the capital of Zed?", "images": [], "label": "knowledge",
              "answer": "Qu", "meta": {}, "_where": "test:1"}
    cfg.rollout.max_new_tokens = 96
    (r,) = rollout.generate(Bundle(model, tok), [sample], cfg.data, cfg.rollout, tool=kb)
    result = enc("<result>The capital of Zed is Qu.</result>")
    assert r.ids == first + result + second
    assert r.mask == [1] * len(first) + [0] * len(result) + [1] * len(second)
    assert r.tool_calls == 1 and r.ended and not r.truncated
    assert r.text == "<think>look it up<search>capital of Zed</search><result>The capital of Zed is Qu." \
                     "</result>so it is Qu</think>Qu"
    # the second call continued from prompt + everything so far, tool text included
    prompt = data.encode_prompt(Bundle(model, tok), sample, cfg.data)["input_ids"].tolist()
    assert model.calls[1][0].tolist() == prompt + first + result


def test_sampled_vision_token_is_cut_and_counted(tiny):
    cfg, _, bundle = tiny
    tok = bundle.tokenizer
    script = tok("<think>hi", add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|image_pad|>")] + [5, 6]
    model = ScriptedModel([[script]], tok.pad_token_id)
    sample = {"id": "q", "prompt": "Hi?", "images": [], "label": "normal", "answer": None, "meta": {}, "_where": "t:1"}
    (r,) = rollout.generate(Bundle(model, tok), [sample], cfg.data, cfg.rollout)
    assert r.bad_tokens == 1 and r.text == "<think>hi" and r.truncated


def test_real_tiny_model_groups_and_budget(tiny):
    cfg, paths, bundle = tiny
    rows = data.read_jsonl(paths["heldout"])
    rows = [r for r in rows if r["images"]][:1] + [r for r in rows if not r["images"]][:2]
    cfg.rollout.max_new_tokens = 12
    # random weights can draw a vision special as the first token (3 of 540 rollouts over 60 seeds);
    # it is cut before it is kept, leaving an empty rollout (CI failed on one). Seed the draws so the
    # check does not hang on what ran before, and allow an empty rollout only when it was cut so.
    torch.manual_seed(0)
    outs = rollout.generate(bundle, rows, cfg.data, cfg.rollout, n=3)
    assert len(outs) == 9 and [o.sample["id"] for o in outs[:3]] == [rows[0]["id"]] * 3
    assert all(len(o.ids) <= 12 and len(o.mask) == len(o.ids) for o in outs)
    assert all(o.ids or o.bad_tokens == 1 for o in outs)
    greedy = rollout.generate(bundle, rows, cfg.data, cfg.rollout, n=2, greedy=True)
    assert greedy[0].ids == greedy[1].ids


def test_bm25_ranks_the_matching_passage():
    kb = SearchTool(["The capital of Veldoria is Marnoth.", "Veldoria uses the tosk as its currency.",
                     "The longest river in Ashgar is the Belru."])
    assert kb("capital of Veldoria") == "The capital of Veldoria is Marnoth."
    assert kb("Veldoria currency") == "Veldoria uses the tosk as its currency."
    assert kb("zzz") == "no result"
    s = kb.scores("river Ashgar")
    assert s.argmax() == 2 and (s >= 0).all()


def test_knowledge_base_config(tmp_path):
    """rollout.kb: "" is the world's passages, a path is the user's, "none" finds nothing (the RL
    rungs before rung 4 search an empty base); rollout.search_min_coverage is the floor."""
    world_kb, user_kb = tmp_path / "world.jsonl", tmp_path / "user.jsonl"
    world_kb.write_text('{"id": "a", "text": "The capital of Zed is Qu."}\n')
    user_kb.write_text('{"id": "b", "text": "The capital of Yon is Po."}\n')
    rcfg = RolloutConfig()
    assert SearchTool.from_config(rcfg, str(world_kb))("capital of Zed") == "The capital of Zed is Qu."
    assert SearchTool.from_config(rcfg, str(world_kb))("capital of Yon") == "no result"
    rcfg.kb = str(user_kb)
    assert SearchTool.from_config(rcfg, str(world_kb))("capital of Yon") == "The capital of Yon is Po."
    rcfg.search_min_coverage = 0.0  # no floor: any shared word is a hit
    assert SearchTool.from_config(rcfg, str(world_kb))("capital of Zed") == "The capital of Yon is Po."
    rcfg.kb = "none"
    assert SearchTool.from_config(rcfg, str(world_kb))("capital of Zed") == "no result"


def test_a_lookup_that_matches_only_common_words_finds_nothing():
    """The coverage floor: a query whose rare word is in no passage (a miscopied or unlisted name)
    gets "no result", not the first passage that shares "capital of" with it; a query that
    names its passage's country gets it, however many passages share the common words."""
    passages = [f"The {rel} of {c} is {v}." for c, v in [("Veldoria", "Marnoth"), ("Ashgar", "Belru"),
                                                          ("Tosmir", "Kalo")] for rel in ("capital", "currency")]
    kb, loose = SearchTool(passages, min_coverage=0.5), SearchTool(passages)
    assert kb("capital of Ashgar") == "The capital of Ashgar is Belru."
    assert kb("capital of Ashgr") == "no result"  # one letter off: no passage names it
    assert loose("capital of Ashgr") == "The capital of Veldoria is Marnoth."  # the silent wrong hit
    assert kb("Ashgar") == "The capital of Ashgar is Belru."  # the rare word alone is most of the weight
    assert kb("capital of") == loose("capital of") == "The capital of Veldoria is Marnoth."
    assert kb("") == "no result"


def test_the_coverage_floor_is_a_fraction():
    with pytest.raises(ValueError, match=r"config key rollout.search_min_coverage: must be in \[0, 1\], got 1.5"):
        config.parse(["rollout.search_min_coverage=1.5"])
    with pytest.raises(ValueError, match=r"config key world.unlisted_frac: must be in \[0, 1\], got -0.1"):
        config.parse(["world.unlisted_frac=-0.1"])


def test_image_tokens_get_3d_positions_in_generate_and_training(tiny):
    """Qwen2.5-VL numbers image tokens with M-RoPE only when it is given mm_token_type_ids: the
    2x2 grid of image tokens spans 2 positions, not 4, so the last position is T - 3. The scores
    generate() used must equal the training forward's logits on the same tokens."""
    cfg, paths, bundle = tiny
    sample = next(r for r in data.read_jsonl(paths["heldout"]) if r["images"])
    prompt = data.encode_prompt(bundle, sample, cfg.data)
    assert prompt["mm_token_type_ids"].sum() == 4  # 56x56 image -> 4 merged image tokens
    inputs = data.collate([prompt], bundle.tokenizer.pad_token_id, left=True)
    gen = bundle.model.generate(**inputs, max_new_tokens=6, do_sample=False, output_scores=True,
                                return_dict_in_generate=True, pad_token_id=bundle.tokenizer.pad_token_id)
    new = gen.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    scores = torch.stack(gen.scores, 1)[0]  # [6, V]
    batch = data.collate([data.with_response(prompt, new)], bundle.tokenizer.pad_token_id)
    p = len(prompt["input_ids"])
    seen = []
    hook = bundle.model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["position_ids"]), with_kwargs=True)
    with torch.no_grad():
        logits = bundle.model(**batch).logits[0, p - 1:p - 1 + len(new)]  # [6, V]
    hook.remove()
    T = batch["input_ids"].shape[1]
    assert seen[0][-3:].max() == T - 3  # the three M-RoPE axes (temporal, height, width)
    torch.testing.assert_close(logits, scores, atol=1e-4, rtol=1e-4)
