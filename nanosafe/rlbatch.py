"""RL training batches: rollouts -> typed training batches, per-token log-probs of the response
tokens (kernels.logprob: the [N, V] logits are never built), and the split of one RL step.

    minis = prepare(outs, adv, mini_batches=2, micro=32, pad_id=pad, device=dev,
                    logprobs=partial(response_logprobs, temperature=1.0, impl="torch"),
                    policy=bundle, ref=None)
    minis[k][j]         # mini-batch k (one optimiser step), micro-batch j (one forward/backward)

A mini-batch is what one optimiser step sees (`rl.mini_batches` updates per RL step whatever the
memory); a micro-batch is what one forward pass holds, and its size changes nothing but memory,
as the loss is normalised by the whole mini-batch's counts (rl.step_counts).

Two layouts of a micro-batch, the same log-probs and gradients (tests/test_rlbatch.py): `pack`,
a row per rollout (prompt + response, right padded), and `pack_shared`, the default under the
language model's attention nanosafe/attention.py (sdpa everywhere else): the G samples of a prompt
share one copy of it, which halves the tokens of the update on the benchmark's step (a 61-token
prompt, ~45-token responses; README, Speed), and the attention skips the blocks a query cannot see."""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, replace

import torch

from kernels.logprob import fused_logprob
from nanosafe import attention, data, rollout

PER_ROW = 8  # rollouts sharing one copy of their prompt in pack_shared (README, Speed: 8 beat 2 and 4)

@dataclass(frozen=True)
class Batch:
    """One micro-batch of responses: prompt + response per row, right padded (`pack`), or runs of a
    prompt and several of its responses one after another in one row (`pack_shared`)."""
    inputs: dict  # model inputs (data.MODEL_INPUTS present in the collated batch)
    targets: torch.Tensor  # [B, T_r] response token ids, data.IGNORE past each response's end
    mask: torch.Tensor  # [B, T_r] 1 = token written by the policy (tool results and padding are 0)
    rows: torch.Tensor  # [N] for each response token, its row in the batch ...
    cols: torch.Tensor  # [N] ... and the position whose hidden state predicts it (one before it)
    adv: torch.Tensor  # [B] group advantage of each response, or [B, T_r] per token (token_advantages)
    old_logp: torch.Tensor | None = None  # [B, T_r] under the sampling policy, before any update
    ref_logp: torch.Tensor | None = None  # [B, T_r] under the frozen reference (rl.kl_coef > 0)
    weight: torch.Tensor | None = None  # [B, T_r] per-token loss weight (token_advantages), None = 1

def _responses(items: list[rollout.Rollout], device) -> tuple[torch.Tensor, torch.Tensor]:
    """targets [B, T_r] (data.IGNORE past each response) and mask [B, T_r] of the rollouts."""
    T_r = max(1, max(len(r.ids) for r in items))
    targets = torch.full((len(items), T_r), data.IGNORE, dtype=torch.long)  # [B, T_r]
    mask = torch.zeros((len(items), T_r))  # [B, T_r]
    for i, r in enumerate(items):
        targets[i, :len(r.ids)] = torch.tensor(r.ids, dtype=torch.long)
        mask[i, :len(r.ids)] = torch.tensor(r.mask, dtype=torch.float32)
    return targets.to(device), mask.to(device)

def _batch(collated: dict, items, adv, rows: list[int], cols: list[int], device, **inputs) -> Batch:
    inputs = {**{k: v for k, v in collated.items() if k in data.MODEL_INPUTS}, **inputs}
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
    index = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)  # noqa: E731
    return Batch(inputs, *_responses(items, device), index(rows), index(cols), adv.to(device))

def pack(items: list[rollout.Rollout], adv: torch.Tensor, pad_id: int, device=None) -> Batch:
    """Rollouts (and their advantages [B]) -> one Batch on `device`, a row per rollout."""
    collated = data.collate([data.with_response(r.prompt, r.ids) for r in items], pad_id)
    rows, cols = [], []
    for i, r in enumerate(items):
        n, p = len(r.ids), len(r.prompt["input_ids"])
        rows += [i] * n
        cols += list(range(p - 1, p - 1 + n))  # the hidden state at t predicts token t + 1
    return _batch(collated, items, adv, rows, cols, device)

def pack_shared(items: list[rollout.Rollout], adv: torch.Tensor, pad_id: int, device, model,
                per_row: int = PER_ROW) -> Batch:
    """pack's Batch with each prompt computed once for up to `per_row` of its rollouts: a run is
    [prompt, response 1, ..., response k], a response attending to the prompt and to itself, its
    positions continuing the prompt's (M-RoPE's for a Qwen2.5-VL prompt with images), and the runs
    follow each other in one row of L tokens, no padding (attention.Shared says who reads whom).
    Same log-probs and gradients as `pack`, with a group's prompt tokens computed once instead of k
    times and no score computed for a key a query cannot see."""
    runs = []  # consecutive rollouts of one prompt (rollout.generate's n samples share the dict)
    for r in items:
        if runs and runs[-1][0].prompt is r.prompt and len(runs[-1]) < per_row:
            runs[-1].append(r)
        else:
            runs.append([r])
    collated = data.collate([data.with_response(run[0].prompt, [t for r in run for t in r.ids]) for run in runs],
                            pad_id)
    R, T = collated["input_ids"].shape
    seg = torch.full((R, T), -1)  # [R, T] per run: 0 the prompt, j response j, -1 padding
    pos = torch.zeros((R, T), dtype=torch.long)  # [R, T] text positions
    rows, cols, prompt_len = [], [], []
    for g, run in enumerate(runs):
        p = len(run[0].prompt["input_ids"])
        seg[g, :p], pos[g, :p], at = 0, torch.arange(p), p
        for j, r in enumerate(run, 1):
            n = len(r.ids)
            seg[g, at:at + n], pos[g, at:at + n] = j, torch.arange(p, p + n)
            rows += [g] * n
            cols += ([p - 1] + list(range(at, at + n - 1)))[:n]  # response j's own previous token
            at += n
        prompt_len.append(p)
    if "image_grid_thw" in collated:  # M-RoPE for the prompt's images; responses shift with the prompt
        pos3, _ = model.model.get_rope_index(collated["input_ids"], collated["mm_token_type_ids"],
                                             image_grid_thw=collated["image_grid_thw"], attention_mask=seg >= 0)
        p = torch.tensor(prompt_len)  # [R]
        shift = pos3[0, torch.arange(R), p - 1] + 1 - p  # [R] a response's first position minus p
        pos = torch.where(seg > 0, pos + shift[:, None], pos3.to(pos.device))  # [3, R, T]
    # the model sees the rows one after another, padding dropped: [1, L]
    real = seg >= 0  # [R, T]
    start = real.sum(1).cumsum(0) - real.sum(1)  # [R] where each row begins
    flat = {k: collated[k][real][None] for k in ("input_ids", "mm_token_type_ids") if k in collated}
    return _batch(collated, items, adv, [0] * len(rows), (start[rows] + torch.tensor(cols)).tolist(), device,
                  attention_mask=None, position_ids=pos[..., real][..., None, :],  # [1, L] or [3, 1, L]
                  shared=attention.Shared.of(seg).to(device), **flat)

def response_logprobs(bundle, batch: Batch, temperature: float, impl: str, entropy: bool = False):
    """Per-token log p (and entropy, detached) of the response tokens -> [B, T_r] each, 0 off the
    responses; entropy is None unless asked for."""
    # Through the top-level forward, where FSDP gathers the embeddings, vision tower and LM head
    # (they stay gathered until backward ends); it computes one position's logits only, and the
    # hidden states are caught on their way out of the backbone by a forward hook.
    caught = []
    hook = bundle.model.model.register_forward_hook(lambda m, a, out: caught.append(out.last_hidden_state))
    bundle.model(**batch.inputs, logits_to_keep=1)
    hook.remove()
    hidden = caught[0]  # [B, T, D]
    weight = bundle.model.get_output_embeddings().weight  # [V, D]
    h = hidden[batch.rows, batch.cols]  # [N, D] the response positions only
    on_response = batch.targets != data.IGNORE  # [B, T_r]
    out = fused_logprob(h, weight, batch.targets[on_response], temperature=temperature,
                        return_entropy=entropy, impl=impl)
    logp, ent = out if entropy else (out, None)
    full = torch.zeros(batch.targets.shape, dtype=torch.float32, device=h.device).masked_scatter(on_response, logp)
    if ent is not None:
        ent = torch.zeros_like(full).masked_scatter(on_response, ent.detach())
    return full, ent

def confidence_span(tokenizer, ids: list[int]) -> tuple[int, int] | None:
    """[start, end) of the response tokens that write the value of its last
    `<confidence>p</confidence>`, or None. Exact where both tags are single tokens (the tiny
    tokenizer's specials); otherwise from the decoded text, a token holding both a value character
    and the tag's first character counting with the tag."""
    opening, closing = rollout.token_id(tokenizer, "<confidence>"), rollout.token_id(tokenizer, "</confidence>")
    if opening is not None and closing is not None:
        starts = [k for k, t in enumerate(ids) if t == opening]
        end = next((k for k in range(starts[-1] + 1, len(ids)) if ids[k] == closing), None) if starts else None
        return (starts[-1] + 1, end) if end is not None and end > starts[-1] + 1 else None
    text = tokenizer.decode(ids)
    i0 = text.rfind("<confidence>")
    i1 = text.find("</confidence>", i0) if i0 >= 0 else -1
    if i1 < 0:
        return None
    # the fewest tokens whose text reaches past a character: decoded prefixes only grow
    reach = lambda at: bisect.bisect_left(range(len(ids) + 1), at, key=lambda k: len(tokenizer.decode(ids[:k])))  # noqa: E731
    start, end = reach(i0 + len("<confidence>")), reach(i1 + 1) - 1
    return (start, end) if end > start else None

def split(n: int, mini_batches: int, micro: int) -> list[list[list[int]]]:
    """Response indices 0..n-1 -> [mini-batch][micro-batch] -> indices, in order."""
    per_mini = math.ceil(n / mini_batches)
    minis = [list(range(k, min(k + per_mini, n))) for k in range(0, n, per_mini)]
    return [[m[i:i + micro] for i in range(0, len(m), micro)] for m in minis]

def token_advantages(items: list[rollout.Rollout], adv: torch.Tensor, spans: list) -> tuple[torch.Tensor, torch.Tensor]:
    """adv [B] -> (advantages [B, T_r], loss weights [B, T_r]): each response's advantage and weight
    1 on its tokens, except on its span (start, end, value, weight): the confidence tokens' own
    advantage and weight (rlstep.confidence_spans)."""
    T_r = max(1, max(len(r.ids) for r in items))
    out, weight = adv[:, None].repeat(1, T_r), torch.ones(len(items), T_r, device=adv.device)  # [B, T_r] each
    for i, span in enumerate(spans):
        if span is not None:
            out[i, span[0]:span[1]], weight[i, span[0]:span[1]] = span[2], span[3]
    return out, weight

@torch.no_grad()
def prepare(outs: list[rollout.Rollout], adv: torch.Tensor, mini_batches: int, micro: int, pad_id: int,
            device, logprobs, policy, ref=None, first_on_policy=False, spans: list | None = None) -> list[list[Batch]]:
    """The step's responses as mini-batches of micro-batches, each with its old (and reference)
    log-probs computed now, before the first update changes the policy. `logprobs(bundle, batch)`
    is response_logprobs with the temperature and implementation bound. first_on_policy: the first
    mini-batch's old_logp stays None; nothing has changed the policy before its update's forward,
    which gives them (rl.old_logp=auto, DESIGN §4). spans: per response None or (start, end, value,
    weight), tokens with an advantage and loss weight of their own (token_advantages)."""
    out = []
    for k, mini in enumerate(split(len(outs), mini_batches, micro)):
        out.append([])
        for idx in mini:
            items, a, w = [outs[j] for j in idx], adv[idx], None  # [b]
            if spans is not None and any(spans[j] is not None for j in idx):
                a, w = token_advantages(items, a, [spans[j] for j in idx])  # [b, T_r] each
            b = pack_shared(items, a, pad_id, device, policy.model) \
                if attention.active(policy.model) else pack(items, a, pad_id, device)
            out[-1].append(replace(b, old_logp=None if first_on_policy and k == 0 else logprobs(policy, b)[0],
                                   ref_logp=logprobs(ref, b)[0] if ref is not None else None,
                                   weight=None if w is None else w.to(b.mask.device)))
    return out
