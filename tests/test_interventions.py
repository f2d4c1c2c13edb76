"""Interventions: step splitting, edit-and-continue from the exact edited prefix, step search picks
the best-scoring candidate at every step (a scripted policy), and both run on the real tiny model."""
import builtins
from dataclasses import replace

import pytest
import torch

from nanosafe import data, interventions as iv
from nanosafe.model import Bundle


class FakePolicy(torch.nn.Module):
    """A policy whose next text is a function of the response so far (decoded from the fed ids):
    `write(response, row, sampled) -> text`. Records every call's input ids and sampling flag."""

    def __init__(self, tok, write):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.tok, self.write, self.calls = tok, write, []
        self.eos = tok.convert_tokens_to_ids("<|im_end|>")

    def generate(self, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, **kw):
        self.calls.append((input_ids.clone(), attention_mask.clone(), bool(kw.get("do_sample"))))
        new = []
        for b, (row, m) in enumerate(zip(input_ids, attention_mask)):
            seen = self.tok.decode(row[m.bool()].tolist(), skip_special_tokens=False)
            response = seen.rsplit("<|im_start|>assistant\n", 1)[-1]
            text = self.write(response, b, bool(kw.get("do_sample")))
            new.append((self.tok(text, add_special_tokens=False)["input_ids"] + [self.eos])[:max_new_tokens])
        width = max(len(s) for s in new)
        new = torch.tensor([s + [pad_token_id] * (width - len(s)) for s in new], dtype=torch.long)
        return torch.cat([input_ids, new], 1)  # [B, T + width]


def _sample(i=0, label="general_rule"):
    return {"id": f"q{i}", "prompt": f"What is {i} + 4?", "images": [], "label": label,
            "answer": str(i + 4), "meta": {}, "_where": f"test:{i}"}


def _stripped(call_row, mask_row):
    return call_row[mask_row.bool()].tolist()


def test_think_steps_split_sentences_not_tools_or_decimals():
    text = ("<think>First I add 3.5 and 4. Then I carry the one.  <search>sum</search>"
            "<result>It is 7. Or 8.</result>So it is 7.</think>The answer. Is 7.")
    assert iv.think_steps(text) == ["First I add 3.5 and 4.", "Then I carry the one.",
                                    "<search>sum</search><result>It is 7. Or 8.</result>So it is 7."]
    assert iv.think_steps("<think> one. two</think>x") == ["one.", "two"]
    assert iv.think_steps("<think>unfinished. still thinking") == ["unfinished.", "still thinking"]
    assert iv.think_steps("<think></think>x") == []
    # a step boundary leaves the space to the next step; </think> is a boundary too
    assert iv._first_step(" a b. c d") == " a b." and iv._first_step(" a</think>b") == " a</think>"
    assert iv._first_step(" 3.5 is it") is None and iv._first_step("<result>x. y</result> z") is None


def test_edit_continues_from_exact_edited_prefix(tiny):
    cfg, _, bundle = tiny
    tok = bundle.tokenizer
    policy = FakePolicy(tok, lambda resp, b, sampled: " So 8.</think>\\boxed{8}")
    fake = Bundle(policy, tok)
    rcfg = replace(cfg.rollout, max_new_tokens=200)
    original = "<think>I add 3 and 4. Then I carry. So 7.</think>\\boxed{7}"
    prefix, cont, full = iv.edit_and_continue(fake, _sample(3), original, 1, "Then I add one more.",
                                              cfg.data, rcfg)
    assert prefix == "<think>I add 3 and 4. Then I add one more."
    assert cont == " So 8.</think>\\boxed{8}" and full == prefix + cont
    # the model was fed exactly prompt + the edited prefix, greedily
    (ids, mask, sampled), = policy.calls
    prompt = data.encode_prompt(fake, _sample(3), cfg.data)["input_ids"].tolist()
    assert _stripped(ids[0], mask[0]) == prompt + data.encode_response(tok, prefix, end=False)[0]
    assert not sampled
    # appending after the last step, and bounds
    prefix, _, _ = iv.edit_and_continue(fake, _sample(3), original, 3, "Check: 7.", cfg.data, rcfg)
    assert prefix == "<think>I add 3 and 4. Then I carry. So 7. Check: 7."
    with pytest.raises(IndexError):
        iv.edit_and_continue(fake, _sample(3), original, 4, "x", cfg.data, rcfg)


def test_budget_counts_the_prefix_per_row(tiny):
    cfg, _, bundle = tiny
    tok = bundle.tokenizer
    fake = Bundle(FakePolicy(tok, lambda resp, b, sampled: " a b"), tok)
    short, long = "<think>one", "<think>one two three four five six seven"
    n_short, n_long = (len(data.encode_response(tok, p, end=False)[0]) for p in (short, long))
    cont = len(tok(" a b", add_special_tokens=False)["input_ids"]) + 1  # + end of turn
    rcfg = replace(cfg.rollout, max_new_tokens=n_long + 1)
    assert n_long + 1 - n_short > cont  # the short prefix has room to finish, the long one not
    r_short, r_long = iv.continue_from(fake, [_sample(0), _sample(1)], [short, long], cfg.data, rcfg)
    assert r_short.ended and r_short.text == short + " a b" and len(r_short.ids) == n_short + cont
    assert r_long.truncated and len(r_long.ids) == len(r_long.mask) == n_long + 1
    assert r_long.text.startswith(long) and r_long.text == tok.decode(r_long.ids)


def _three_step_writer(k):
    """Sampled rows write step t of candidate c = row % k; greedy rows finish the response."""
    def write(resp, row, sampled):
        t, c = resp.count("step"), row % k
        if "</think>" in resp:
            return f"ok{c}" if sampled else ""
        if not sampled:
            return " rest.</think>fine"
        if t == 3:
            return f"</think>ok{c}"
        return ("<think>" if not resp else "") + f" step{t} c{c}. tail words"
    return write


def test_step_search_keeps_the_best_candidate_each_step(tiny):
    cfg, _, bundle = tiny
    tok, k = bundle.tokenizer, 4
    policy = FakePolicy(tok, _three_step_writer(k))
    samples = [_sample(0), _sample(1)]
    want = lambda i, t: (t + i + 1) % k  # noqa: E731  prompt i prefers a different candidate per step

    def score_fn(ss, texts):
        out = []
        for s, text in zip(ss, texts):
            i = int(s["id"][1:])
            out.append(sum(f"step{t} c{want(i, t)}." in text for t in range(3))
                       + (f"ok{want(i, 4)}" in text))
        return out

    rcfg = replace(cfg.rollout, max_new_tokens=200, gen_batch_size=64)
    res = iv.step_search(Bundle(policy, tok), samples, cfg.data, rcfg, k=k, max_steps=8, score_fn=score_fn)
    for i, r in enumerate(res):
        assert r.text == "<think>" + "".join(f" step{t} c{want(i, t)}." for t in range(3)) + \
            f"</think>ok{want(i, 4)}"
        assert r.ended and r.ids[-1] == policy.eos and r.sample is samples[i]
        assert [s["best"] for s in r.trace] == [want(i, t) for t in range(3)] + [0, want(i, 4)]
        assert r.trace[0]["candidates"][2] == "<think> step0 c2."
        assert all(s["scores"][s["best"]] == max(s["scores"]) for s in r.trace)
    # cost: per step one sampled call and one greedy call over both prompts' k candidates
    # (none for the last step, whose drafts already ended)
    assert [(len(ids), s) for ids, _, s in policy.calls] == [(8, True), (8, False)] * 4 + [(8, True)]


def test_step_search_stops_at_max_steps_with_the_greedy_completion(tiny):
    cfg, _, bundle = tiny
    tok, k = bundle.tokenizer, 3
    policy = FakePolicy(tok, _three_step_writer(k))
    score_fn = lambda ss, texts: [t.count("c1") for t in texts]  # noqa: E731
    rcfg = replace(cfg.rollout, max_new_tokens=200, gen_batch_size=64)
    (r,) = iv.step_search(Bundle(policy, tok), [_sample()], cfg.data, rcfg, k=k, max_steps=2,
                          score_fn=score_fn)
    assert r.text == "<think> step0 c1. step1 c1. rest.</think>fine" and len(r.trace) == 2
    assert len(policy.calls) == 4


def test_real_tiny_model_search_and_edit(tiny, monkeypatch, capsys):
    cfg, paths, bundle = tiny
    rows = data.read_jsonl(paths["heldout"])
    rows = [r for r in rows if r["images"]][:1] + [r for r in rows if not r["images"]][:1]
    rcfg = replace(cfg.rollout, max_new_tokens=16)
    torch.manual_seed(0)
    res = iv.step_search(bundle, rows, cfg.data, rcfg, k=2, max_steps=2)  # default: recipe reward
    assert len(res) == 2
    for row, r in zip(rows, res):
        assert r.sample is row and 1 <= len(r.trace) <= 2 and len(r.ids) == len(r.mask) <= 16
        chosen = "".join(s["candidates"][s["best"]] for s in r.trace)
        assert r.text.startswith(chosen) and r.text == r.trace[-1]["completions"][r.trace[-1]["best"]]
    out = iv.run_edit_cli(bundle, rows[1], replace(cfg, rollout=rcfg), 0, "<think>I think.")
    assert out["response"] == out["prefix"] + out["continuation"]
    assert out["prefix"].endswith("<think>I think.") and isinstance(out["reward_edited"], float)
    answers = iter(["0", "<think>Look."])
    monkeypatch.setattr(builtins, "input", lambda _: next(answers, ""))
    final = iv.interactive_edit(bundle, rows[1], cfg.data, rcfg)
    assert "[0]" in capsys.readouterr().out and "Look." in final
