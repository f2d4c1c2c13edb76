"""Rollouts: n samples per prompt, with the search tool in the loop.

    outs = generate(bundle, samples, cfg.data, cfg.rollout, n=8, tool=SearchTool(...))
    outs[i * 8 + g]     # sample i, draw g: .ids, .mask, .text, .tool_calls, .truncated

Batched with left padding; sampling or greedy; stops at end of turn. A Qwen2 or Qwen2.5-VL samples
through nanosafe/decode.py's lean loop (images in its prefill), anything else (an FSDP-sharded
policy, a `</search>` of several tokens, another architecture) through Hugging Face `generate`,
from the same distribution. Rung 4's tool use: generation also stops at `</search>`, the query
runs on the local knowledge base and `<result>...</result>` is appended with mask 0 (the policy
did not write it: no loss), up to `max_tool_calls` calls; a response has `max_new_tokens` tokens
in all. The trainer computes the old log-probs itself (the sampler's scores are post-processed by
top-p). A sampled vision special token would crash the next training
forward of a VL model, so the response is cut before it and the event counted."""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import torch

from nanosafe import data, decode, dist

TAG = re.compile(r"<[^<>]*>")
VISION_SPECIALS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")

@dataclass
class Rollout:
    sample: dict
    prompt: dict  # data.encode_prompt output
    ids: list[int] = field(default_factory=list)  # response tokens, end-of-turn included if reached
    mask: list[int] = field(default_factory=list)  # 1 = written by the policy, 0 = tool result
    text: str = ""
    tool_calls: int = 0
    ended: bool = False  # reached end of turn (not cut by the token budget)
    bad_tokens: int = 0  # vision specials sampled and cut away

    @property
    def truncated(self) -> bool:
        return not self.ended

@dataclass(frozen=True)
class _Special:
    """The token ids a generate call stops at, pads with or cuts at, for one tokenizer and tool."""
    eos: int  # end of turn
    pad: int
    close: int | None  # `</search>` when it is one token and the tool is on
    stop_strings: list[str] | None  # `</search>` as a string when it is several tokens
    bad_ids: frozenset  # vision specials: a response is cut before one

    @classmethod
    def of(cls, tok, tool) -> "_Special":
        close = token_id(tok, "</search>") if tool is not None else None
        return cls(data.end_of_turn_id(tok), tok.pad_token_id, close,
                   ["</search>"] if tool is not None and close is None else None,
                   frozenset(i for i in (token_id(tok, t) for t in VISION_SPECIALS) if i is not None))

def token_id(tokenizer, text: str) -> int | None:
    """Id of `text` if it is a single token of this tokenizer, else None."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None

@torch.no_grad()
def generate(bundle, samples: list[dict], dcfg, rcfg, n: int = 1, greedy: bool = False,
             tool=None, prompts: list[dict] | None = None) -> list[Rollout]:
    tok, model = bundle.tokenizer, bundle.model
    special = _Special.of(tok, tool)
    prompts = prompts or [data.encode_prompt(bundle, s, dcfg) for s in samples]
    outs = [Rollout(s, p) for s, p in zip(samples, prompts) for _ in range(n)]
    was_training = model.training
    model.eval()
    max_rounds = (rcfg.max_tool_calls if tool is not None else 0) + 1
    with dist.generation(model) as lockstep:
        for _ in range(max_rounds):
            todo = [r for r in outs if not r.ended and len(r.ids) < rcfg.max_new_tokens and not r.bad_tokens]
            chunks = [todo[i:i + rcfg.gen_batch_size] for i in range(0, len(todo), rcfg.gen_batch_size)]
            n_calls = dist.all_reduce_max(len(chunks)) if lockstep else len(chunks)
            if not n_calls:
                break
            for i in range(n_calls):
                if i < len(chunks):
                    _extend(model, tok, chunks[i], rcfg, greedy, special, lockstep)
                else:  # this rank is done, but each sharded forward pass needs every rank: a throw-away
                    # row of one greedy token (no random draw), then generate follows the others
                    _extend(model, tok, [Rollout(outs[0].sample, outs[0].prompt)], replace(rcfg, max_new_tokens=1),
                            True, special, lockstep)
            for r in todo:
                if tool is not None and not r.ended and _ends_with_search(tok, r) and r.tool_calls < rcfg.max_tool_calls:
                    query = tok.decode(r.ids).rsplit("<search>", 1)[-1].replace("</search>", "").strip()
                    found = TAG.sub("", tool(query))  # a passage must not close the think block or open a tool
                    res_ids, _ = data.encode_response(tok, f"<result>{found}</result>", end=False)
                    room = rcfg.max_new_tokens - len(r.ids)
                    r.ids += res_ids[:room]
                    r.mask += [0] * min(len(res_ids), room)
                    r.tool_calls += 1
    for r in outs:
        r.text = tok.decode([t for t in r.ids if t != special.eos], skip_special_tokens=False)
    model.train(was_training)
    return outs

def _ends_with_search(tok, r: Rollout) -> bool:
    return tok.decode(r.ids[-4:], skip_special_tokens=False).endswith("</search>")

def _extend(model, tok, batch: list[Rollout], rcfg, greedy, special: _Special, lockstep=False):
    """One generate call that continues every rollout in `batch` from its current response;
    `lockstep` (FSDP, layers sharded): keep running forward passes until every rank is done."""
    eos, pad, close, stop_strings = special.eos, special.pad, special.close, special.stop_strings
    inputs = data.collate([data.with_response(r.prompt, r.ids) for r in batch], pad, left=True)
    device = dist.device_of(model)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    budget = rcfg.max_new_tokens - min(len(r.ids) for r in batch)
    stops = [eos] + ([close] if close is not None else [])
    # a row also ends at what the loop below cuts at (pad, a vision special): nothing after it is kept
    ends = stops + [pad, *sorted(special.bad_ids)]
    if decode.supported(model) and not stop_strings and not lockstep:  # Qwen2 / Qwen2.5-VL: the lean loop
        new = decode.sample(model, inputs["input_ids"], inputs["attention_mask"], budget, ends, pad, greedy,
                            rcfg.temperature, rcfg.top_p, vision=inputs)
    else:
        # the checkpoint's generation_config may carry top_k / repetition_penalty; override them, or the
        # samples would not come from the pi_old whose log-probs the trainer recomputes
        kwargs = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=rcfg.temperature,
                                                           top_p=rcfg.top_p, top_k=0)
        kwargs["repetition_penalty"] = 1.0
        if stop_strings:
            kwargs.update(stop_strings=stop_strings, tokenizer=tok)
        out = model.generate(**inputs, max_new_tokens=budget, eos_token_id=ends, pad_token_id=pad,
                             synced_gpus=lockstep, **kwargs)
        new = out[:, inputs["input_ids"].shape[1]:]
    new = new.tolist()  # [B, <=budget]
    for r, seq in zip(batch, new):
        room = rcfg.max_new_tokens - len(r.ids)
        for t in seq[:room]:
            if t in special.bad_ids:
                r.bad_tokens += 1
                break
            if t == pad and pad not in stops:
                break
            r.ids.append(t)
            r.mask.append(1)
            if t == eos:
                r.ended = True
                break
            if t == close or (stop_strings and _ends_with_search(tok, r)):
                break
