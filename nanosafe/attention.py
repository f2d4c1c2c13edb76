"""Prompt-shared attention: the update's rows of [prompt, response 1, ..., response k]
(rlbatch.pack_shared) without the attention over the blocks no query may see.

    attention.use(model)                      # model.make does it: sdpa -> NAME on the language model
    shared = Shared.of(seg)                   # seg [R, T]: 0 the prompt, j response j, -1 padding
    model(input_ids=ids[seg >= 0][None], position_ids=..., shared=shared)   # the attention reads it

Why: in such a row a response's queries see the prompt's keys and their own, nothing else, but an
attention given a [R, 1, T, T] mask computes all T x T scores (sdpa on a CPU, eager anywhere) and
the row grows with k: at 8 responses of ~45 tokens behind a 61-token prompt, ~85 % of the scores
are masked. Here all the rows' tokens are one row without padding (the linear layers see only
real tokens), the prompts' queries attend causally within their prompt ([R, P, P], P the longest
prompt), and each response's queries to its prompt's keys and its own causal block ([N, S, P + S],
S the longest response): the same softmax over the same keys, two batched sdpa calls.
The prompt keys and values are gathered per response, so their gradient sums over the responses
that read them, as in the row. Without `shared` (generation, any other forward) the function is
Hugging Face's sdpa, so the model is unchanged everywhere else; it is registered under NAME in
transformers' AttentionInterface (and sdpa's mask function under the same name), and the name is
selected in the language model's config, so it also holds under activation checkpointing (the
recomputed forward gets the same keyword arguments). Tested against the padded layout
(rlbatch.pack) in tests/test_rlbatch.py."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "nanosafe_sdpa"

@dataclass(frozen=True)
class Shared:
    """Where the queries of pack_shared's tokens, one row of L with no padding, read their keys
    (built once per batch, used by every layer)."""
    prompt: torch.Tensor  # [R, P] index of each prompt's tokens in the row, padded with its first
    prompt_mask: torch.Tensor  # [R, 1, P, P] causal within each prompt
    resp: torch.Tensor  # [N, S] index of each response's tokens, padded with its prompt's first
    group: torch.Tensor  # [N] the prompt of each response
    resp_mask: torch.Tensor  # [N, 1, S, P + S] its prompt's keys, then causal on its own
    out: torch.Tensor  # [L] each token's slot in cat(prompt outputs [R P], response outputs [N S])

    @classmethod
    def of(cls, seg: torch.Tensor) -> "Shared":
        """seg [R, T]: a prompt (0) then its responses (1, 2, ...) per row, -1 on padding; the
        model's row is the R rows' tokens (seg >= 0) one after another."""
        flat = torch.full(seg.shape, -1, dtype=torch.long)  # [R, T] each token's place in the row
        flat[seg >= 0] = torch.arange(int((seg >= 0).sum()))
        plen = (seg == 0).sum(1)  # [R]
        blocks = [(g, flat[g][seg[g] == j]) for g in range(len(seg)) for j in range(1, int(seg[g].max()) + 1)]
        blocks = [(g, t) for g, t in blocks if len(t)]
        R, P, N = len(seg), int(plen.max()), len(blocks)
        S = max([len(t) for _, t in blocks], default=1)
        prompt = flat[:, :1].repeat(1, P)  # [R, P]
        resp = torch.zeros(N, S, dtype=torch.long)  # [N, S]
        out = torch.zeros(int((seg >= 0).sum()), dtype=torch.long)  # [L]
        n_tok = torch.zeros(N, dtype=torch.long)  # [N]
        for g in range(R):
            prompt[g, :plen[g]] = flat[g, :plen[g]]
            out[flat[g, :plen[g]]] = g * P + torch.arange(int(plen[g]))
        for n, (g, t) in enumerate(blocks):
            resp[n], n_tok[n] = flat[g, 0], len(t)
            resp[n, :len(t)] = t
            out[t] = R * P + n * S + torch.arange(len(t))
        i = torch.arange(max(P, S))
        prompt_mask = (i[:P, None] >= i[None, :P]) & (i[None, None, :P] < plen[:, None, None])  # [R, P, P]
        group = torch.tensor([g for g, _ in blocks], dtype=torch.long)  # [N]
        own = (i[None, :S] <= i[:S, None]) & (i[None, None, :S] < n_tok[:, None, None])  # [N, S, S]
        to_prompt = (i[None, None, :P] < plen[group][:, None, None]).expand(N, S, P)  # [N, S, P]
        return cls(prompt, prompt_mask[:, None], resp, group, torch.cat([to_prompt, own], -1)[:, None], out)

    def to(self, device) -> "Shared":
        return Shared(*(x.to(device) for x in (self.prompt, self.prompt_mask, self.resp, self.group,
                                                self.resp_mask, self.out)))

def _sdpa(q, k, v, mask, scaling):
    """q [n, H, L, hd], k / v [n, KV, L', hd] (grouped-query heads), mask [n, 1, L, L'] -> [n, L, H, hd]."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling,
                                          enable_gqa=k.shape[1] != q.shape[1]).transpose(1, 2)

def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
              shared: Shared | None = None, **kwargs):
    """AttentionInterface's signature: query [B, H, T, hd], key / value [B, KV, T, hd] -> ([B, T, H, hd],
    None); Hugging Face's sdpa unless `shared` is given (then B = 1)."""
    if shared is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    _, H, L, hd = query.shape
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [L, heads, hd]
    at = lambda x, idx: x[idx].transpose(1, 2)  # noqa: E731  [n, heads, len(idx[0]), hd]
    kp, vp = at(k, shared.prompt), at(v, shared.prompt)  # [R, KV, P, hd]
    o_prompt = _sdpa(at(q, shared.prompt), kp, vp, shared.prompt_mask, scaling)  # [R, P, H, hd]
    keys = torch.cat([kp[shared.group], at(k, shared.resp)], 2)  # [N, KV, P + S, hd]
    values = torch.cat([vp[shared.group], at(v, shared.resp)], 2)
    o_resp = _sdpa(at(q, shared.resp), keys, values, shared.resp_mask, scaling)  # [N, S, H, hd]
    out = torch.cat([o_prompt.flatten(0, 1), o_resp.flatten(0, 1)])[shared.out]  # [L, H, hd]
    return out[None], None

AttentionInterface.register(NAME, attention)
AttentionMaskInterface.register(NAME, sdpa_mask)

def use(model) -> None:
    """Select NAME for the language model when it runs Hugging Face's sdpa (the vision tower keeps
    its own)."""
    text = model.config.get_text_config()
    if text._attn_implementation == "sdpa":
        model.set_attn_implementation(NAME if text is model.config else {"text_config": NAME})

def active(model) -> bool:
    return model.config.get_text_config()._attn_implementation == NAME
