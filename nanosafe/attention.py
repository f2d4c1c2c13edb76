"""Prompt-shared attention: the update's rows of [prompt, response 1, ..., response k]
(rlbatch.pack_shared) without the attention over the blocks no query may see.

    attention.use(model)                      # model.make does it: sdpa -> NAME on the language model
    shared = Shared.of(seg)                   # seg [R, T]: 0 the prompt, j response j, -1 padding
    model(input_ids=ids, position_ids=pos, shared=shared)   # the attention reads `shared`

Why: in such a row a response's queries see the prompt's keys and their own, nothing else, but an
attention given a [R, 1, T, T] mask computes all T x T scores (sdpa on a CPU, eager anywhere) and
the row grows with k: at 8 responses of ~45 tokens behind a 61-token prompt, ~85 % of the scores
are masked. Here the prompts' queries attend causally within the prompts ([R, P, P], P the longest
prompt), and each response's queries to its row's prompt keys and its own causal block ([N, S,
P + S], S the longest response): the same softmax over the same keys, two batched sdpa calls.
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
    """Where the queries of a [R, T] batch of shared-prompt rows read their keys (built once per
    batch, used by every layer)."""
    prompt_mask: torch.Tensor  # [R, 1, P, P] causal within each row's prompt (rows start with it)
    resp: torch.Tensor  # [N, S] flat index (row * T + t) of each response's tokens, padded
    row: torch.Tensor  # [N] the row of each response
    resp_mask: torch.Tensor  # [N, 1, S, P + S] the row's prompt keys, then causal on its own
    out: torch.Tensor  # [R T] each token's slot in cat(prompt outputs [R P], response outputs [N S])

    @classmethod
    def of(cls, seg: torch.Tensor) -> "Shared":
        """seg [R, T]: 0 on a row's prompt (its first tokens), j on its response j, -1 on padding."""
        R, T = seg.shape
        plen = (seg == 0).sum(1)  # [R]
        P = int(plen.max())
        blocks = [(g, (seg[g] == j).nonzero()[:, 0]) for g in range(R) for j in range(1, int(seg[g].max()) + 1)]
        blocks = [(g, t) for g, t in blocks if len(t)]
        S = max([len(t) for _, t in blocks], default=1)
        N = len(blocks)
        resp = torch.zeros(N, S, dtype=torch.long)  # [N, S] a padded query reads token 0 of row 0
        out = torch.zeros(R * T, dtype=torch.long)  # [R T] padding reads slot 0: never used
        n_tok = torch.zeros(N, dtype=torch.long)  # [N]
        for n, (g, t) in enumerate(blocks):
            resp[n, :len(t)], n_tok[n] = g * T + t, len(t)
            out[g * T + t] = R * P + n * S + torch.arange(len(t))
        for g in range(R):
            out[g * T:g * T + int(plen[g])] = g * P + torch.arange(int(plen[g]))
        i = torch.arange(max(P, S))
        causal = i[:P, None] >= i[None, :P]  # [P, P]
        prompt_mask = causal & (i[None, None, :P] < plen[:, None, None])  # [R, P, P]
        row = torch.tensor([g for g, _ in blocks], dtype=torch.long)  # [N]
        own = (i[None, :S] <= i[:S, None]) & (i[None, None, :S] < n_tok[:, None, None])  # [N, S, S]
        to_prompt = (i[None, None, :P] < plen[row][:, None, None]).expand(N, S, P)  # [N, S, P]
        return cls(prompt_mask[:, None], resp, row, torch.cat([to_prompt, own], -1)[:, None], out)

    def to(self, device) -> "Shared":
        return Shared(*(x.to(device) for x in (self.prompt_mask, self.resp, self.row, self.resp_mask, self.out)))

def _sdpa(q, k, v, mask, scaling):
    """q [n, H, L, hd], k / v [n, KV, L', hd] (grouped-query heads), mask [n, 1, L, L'] -> [n, L, H, hd]."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling,
                                          enable_gqa=k.shape[1] != q.shape[1]).transpose(1, 2)

def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, shared: Shared | None = None,
              **kwargs):
    """AttentionInterface's signature: query [B, H, T, hd], key / value [B, KV, T, hd] -> ([B, T, H, hd],
    None); Hugging Face's sdpa unless `shared` is given."""
    if shared is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    B, H, T, hd = query.shape
    P, (N, S) = shared.prompt_mask.shape[-1], shared.resp.shape
    kp, vp = key[:, :, :P], value[:, :, :P]  # [B, KV, P, hd]
    o_prompt = _sdpa(query[:, :, :P], kp, vp, shared.prompt_mask, scaling)  # [B, P, H, hd]
    flat = lambda x: x.transpose(1, 2).flatten(0, 1)[shared.resp].transpose(1, 2)  # noqa: E731  [N, heads, S, hd]
    o_resp = _sdpa(flat(query), torch.cat([kp[shared.row], flat(key)], 2), torch.cat([vp[shared.row], flat(value)], 2),
                   shared.resp_mask, scaling)  # [N, S, H, hd]
    out = torch.cat([o_prompt.flatten(0, 1), o_resp.flatten(0, 1)])[shared.out]  # [B T, H, hd]
    return out.view(B, T, H, hd), None

AttentionInterface.register(NAME, attention)
AttentionMaskInterface.register(NAME, sdpa_mask)

def use(model) -> None:
    """Select NAME for the language model when it runs Hugging Face's sdpa (the vision tower keeps its own)."""
    text = model.config.get_text_config()
    if text._attn_implementation == "sdpa":
        model.set_attn_implementation(NAME if text is model.config else {"text_config": NAME})

def active(model) -> bool:
    return model.config.get_text_config()._attn_implementation == NAME
