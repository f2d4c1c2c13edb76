"""Inference-time interventions (DESIGN §1, after training): verifier-guided step search, and a
human edit of one reasoning step followed by generation from the edited text.

A step is a sentence of the response (a "." before whitespace, or "</think>"; never inside a tool
result). How continuing, searching and editing work, and what the search costs: docs/interventions.md."""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace

import verifiers
from nanosafe import data, rollout
from nanosafe.rollout import Rollout

STEP_END = re.compile(r"\.(?=\s)|</think>")
TOOL_TEXT = re.compile(r"<result>.*?(?:</result>|\Z)", re.S)  # an unclosed result was cut by the budget

def _hide_tools(text: str) -> str:
    """Same length, tool results blanked, so that their sentences cannot end a step."""
    return TOOL_TEXT.sub(lambda m: "\0" * len(m.group()), text)

def _think_block(text: str) -> tuple[int, int]:
    """Offsets of the think block's content: after <think> (or 0) up to </think> (or the end)."""
    a = text.find("<think>")
    a = 0 if a < 0 else a + len("<think>")
    b = text.find("</think>", a)
    return a, len(text) if b < 0 else b

def _step_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) offsets of the think block's steps, whitespace trimmed, empty ones dropped."""
    a, b = _think_block(text)
    cuts = [m.end() for m in STEP_END.finditer(_hide_tools(text), a, b)]
    spans = []
    for s, e in zip([a] + cuts, cuts + [b]):
        seg = text[s:e]
        s, e = s + len(seg) - len(seg.lstrip()), e - (len(seg) - len(seg.rstrip()))
        if e > s:
            spans.append((s, e))
    return spans

def think_steps(text: str) -> list[str]:
    """The sentences of a response's think block, in order (numbered from 0 by the edit tools)."""
    return [text[s:e] for s, e in _step_spans(text)]

def _first_step(continuation: str) -> str | None:
    """The continuation up to and including its first step boundary; None if it has none."""
    m = STEP_END.search(_hide_tools(continuation))
    return continuation[:m.end()] if m else None

def continue_from(bundle, samples: list[dict], prefixes: list[str], dcfg, rcfg, n: int = 1,
                  greedy: bool = False, tool=None, prompts: list[dict] | None = None) -> list[Rollout]:
    """rollout.generate continued from each sample's response prefix: n Rollouts per sample (sample
    major), each holding the whole response (ids/mask/text = prefix + continuation)."""
    tok = bundle.tokenizer
    prompts = prompts or [data.encode_prompt(bundle, s, dcfg) for s in samples]
    pre = [data.encode_response(tok, p, end=False) for p in prefixes]  # [(ids, mask)] per sample
    fed = [data.with_response(p, ids) for p, (ids, _) in zip(prompts, pre, strict=True)]  # [T + P] each
    rooms = [max(rcfg.max_new_tokens - len(ids), 0) for ids, _ in pre]
    outs = rollout.generate(bundle, samples, dcfg, replace(rcfg, max_new_tokens=max(rooms)), n=n,
                            greedy=greedy, tool=tool, prompts=fed)
    results = []
    for j, r in enumerate(outs):
        i, room = j // n, rooms[j // n]
        cut = len(r.ids) > room  # an end-of-turn token, if any, is the last one, so it goes too
        text = tok.decode(r.ids[:room], skip_special_tokens=False) if cut else r.text
        ids, mask = pre[i][0] + r.ids[:room], pre[i][1] + r.mask[:room]
        results.append(Rollout(r.sample, prompts[i], ids=ids, mask=mask, text=prefixes[i] + text,
                               tool_calls=r.tool_calls, ended=r.ended and not cut, bad_tokens=r.bad_tokens))
    return results

# ----------------------------------------------------------------------------- step search

@dataclass
class Searched(Rollout):
    # per step: {"candidates": [str], "scores": [float], "best": int, "completions": [str]}
    trace: list[dict] = field(default_factory=list)

def reward_fn(vcfg=None, judges=None):
    """score_fn(samples, texts) -> rewards: the recipe reward (verifiers.score_batch), with the
    weights, recipes, reward functions and format weight of a VerifierConfig when one is given."""
    kw = dict(weights=vcfg.weights or None, format_weight=vcfg.format_weight, rewards=vcfg.rewards,
              recipes=vcfg.recipes) if vcfg is not None else {}
    return lambda samples, texts: verifiers.score_batch(samples, texts, judges=judges, **kw)[0]

def step_search(bundle, samples: list[dict], dcfg, rcfg, k: int = 4, max_steps: int = 8, tool=None,
                score_fn=None) -> list[Searched]:
    """Verifier-guided step search (docs/interventions.md): per prompt, the chosen response and the
    trace. Costs at most 2 * max_steps generate calls of len(samples) * k rows each."""
    assert k >= 1 and max_steps >= 1, "step_search needs k >= 1 and max_steps >= 1"
    score_fn = score_fn or reward_fn()
    prompts = [data.encode_prompt(bundle, s, dcfg) for s in samples]
    prefix = [""] * len(samples)
    best: list[Rollout | None] = [None] * len(samples)
    traces: list[list[dict]] = [[] for _ in samples]
    todo = list(range(len(samples)))
    for _ in range(max_steps):
        if not todo:
            break
        S, P, pre = [samples[i] for i in todo], [prompts[i] for i in todo], [prefix[i] for i in todo]
        # 1. draft: row j belongs to prompt j // k
        drafts = continue_from(bundle, S, pre, dcfg, rcfg, n=k, tool=tool, prompts=P)
        steps, full = [], []
        for j, d in enumerate(drafts):
            rest = d.text[len(pre[j // k]):]
            step = _first_step(rest)
            steps.append(rest if step is None else step)
            full.append(d if step is None else None)  # no boundary: the draft is a full response
        final = [f is not None for f in full]
        # 2. complete the other candidates greedily
        need = [j for j, f in enumerate(full) if f is None]
        if need:
            comps = continue_from(bundle, [S[j // k] for j in need], [pre[j // k] + steps[j] for j in need],
                                  dcfg, rcfg, greedy=True, tool=tool, prompts=[P[j // k] for j in need])
            for j, c in zip(need, comps):
                full[j] = c
        # 3. score and keep the best step of each prompt
        scores = score_fn([S[j // k] for j in range(len(full))], [f.text for f in full])
        still = []
        for a, i in enumerate(todo):
            js = range(a * k, (a + 1) * k)
            b = max(js, key=lambda j: scores[j])  # the first maximum: ties keep the earlier draft
            prefix[i] += steps[b]
            best[i] = full[b]
            traces[i].append({"candidates": [steps[j] for j in js], "scores": [float(scores[j]) for j in js],
                              "best": b - a * k, "completions": [full[j].text for j in js]})
            if not final[b]:
                still.append(i)
        todo = still
    return [Searched(**{f.name: getattr(r, f.name) for f in fields(Rollout)}, trace=t)
            for r, t in zip(best, traces)]

# ----------------------------------------------------------------------------- edit and continue

def edit_and_continue(bundle, sample: dict, response_text: str, step_index: int, new_step_text: str,
                      dcfg, rcfg, greedy: bool = True, tool=None) -> tuple[str, str, str]:
    """Replace think step `step_index` (0-based; len(steps) appends one) by `new_step_text`, drop
    everything after it and continue generating. -> (prefix, continuation, prefix + continuation)."""
    spans = _step_spans(response_text)
    if not 0 <= step_index <= len(spans):
        raise IndexError(f"step {step_index} out of range: the think block has {len(spans)} steps "
                         f"(0..{len(spans) - 1}; {len(spans)} appends a step)")
    if step_index < len(spans):
        prefix = response_text[:spans[step_index][0]] + new_step_text
    elif spans:
        prefix = response_text[:spans[-1][1]] + " " + new_step_text
    else:
        prefix = response_text[:_think_block(response_text)[0]] + new_step_text
    (r,) = continue_from(bundle, [sample], [prefix], dcfg, rcfg, greedy=greedy, tool=tool)
    return prefix, r.text[len(prefix):], r.text

def _answer(bundle, sample: dict, dcfg, rcfg, tool=None) -> str:
    """The policy's greedy response, the starting point of an edit."""
    return rollout.generate(bundle, [sample], dcfg, rcfg, greedy=True, tool=tool)[0].text

def interactive_edit(bundle, sample: dict, dcfg, rcfg, tool=None, response_text: str | None = None) -> str:
    """`eval.py --edit`: show the numbered steps, ask (input()) which to replace and with what,
    continue from the edit; repeat until an empty answer. Returns the last response."""
    text = _answer(bundle, sample, dcfg, rcfg, tool) if response_text is None else response_text
    print(f"prompt: {sample['prompt']}")
    while True:
        steps = think_steps(text)
        print(f"\nresponse: {text}\nsteps:")
        for i, s in enumerate(steps):
            print(f"  [{i}] {s}")
        ans = input(f"step to replace (0-{len(steps)}; {len(steps)} appends; empty quits): ").strip()
        if not ans:
            return text
        if not ans.isdigit() or int(ans) > len(steps):
            print(f"not a step number: {ans!r}")
            continue
        new = input("new text for the step: ")
        prefix, cont, text = edit_and_continue(bundle, sample, text, int(ans), new, dcfg, rcfg, tool=tool)
        print(f"\nedited prefix: {prefix}\ncontinuation: {cont}")

def run_edit_cli(bundle, sample: dict, cfg, step: int, text: str, tool=None) -> dict:
    """`eval.py --edit-step k --edit-text "..."`: answer greedily, edit step k (0-based), continue,
    and score both responses with the run's reward recipe."""
    original = _answer(bundle, sample, cfg.data, cfg.rollout, tool)
    prefix, cont, full = edit_and_continue(bundle, sample, original, step, text, cfg.data, cfg.rollout,
                                           tool=tool)
    r_orig, r_edit = reward_fn(cfg.verifiers)([sample, sample], [original, full])
    return {"id": sample["id"], "prompt": sample["prompt"], "original": original,
            "steps": think_steps(original), "step": step, "new_step": text, "prefix": prefix,
            "continuation": cont, "response": full, "reward_original": r_orig, "reward_edited": r_edit}
