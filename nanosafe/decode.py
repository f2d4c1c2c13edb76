"""Lean sampling for Qwen2 and Qwen2.5-VL: HF's forward for the prompt, a compact decode loop after it.

    new = decode.sample(model, input_ids, attention_mask, max_new_tokens=64, stops=[eos], pad=pad,
                        temperature=1.0, top_p=1.0, vision=inputs)   # [B, <= 64], pad after a stop
    decode.supported(model)                            # else rollout.py calls model.generate

Why: on a small model Hugging Face's `generate` spends most of a decode step in Python (logits
processors, stopping criteria, mask and cache bookkeeping, ~9 ms a step on one CPU core) and its
DynamicCache grows by torch.cat every step. Here the prompt goes through the model's own forward
once (left padded, with the position ids `generate` gives: a row's real tokens count from 0; a
prompt's n equal rows run once), its keys and values are copied into fixed [B, kv_heads, T_max,
head_dim] buffers, and each new token runs through the same weights in a functional Qwen2 layer
(RMSNorm in fp32, RoPE from the model's own rotary module, grouped-query attention over the
buffers, SwiGLU MLP), q/k/v and gate/up fused into one matmul each. The numbers are HF's to
round-off (tests/test_decode.py: logits to 1e-5, greedy tokens identical to `generate`).
A Qwen2.5-VL's images go through that prefill (pixel_values, image_grid_thw; M-RoPE positions from
the model's get_rope_index, as `generate` gives them; prompts with images are not deduplicated);
after it a new token's three M-RoPE positions are equal, its text position plus the row's rope
delta, so its rotary embedding is the text model's rotary module at that one position.

Sampling is `generate`'s with do_sample, temperature, top_p and top_k=0 (or greedy): logits in
fp32 divided by the temperature, HF's top-p rule (drop the tokens whose ascending cumulative
probability is <= 1 - top_p, the most likely always kept), one draw per row from the resulting
probabilities (`draw`: the inverse CDF, where `generate` calls torch.multinomial). A row that emits
a stop id is finished and gets `pad` from then on (finished rows leave the batch); the loop ends
when every row has stopped or after max_new_tokens. Other generation settings (repetition
penalty, top_k, stop strings) are not implemented: rollout.py falls back to `generate` for stop
strings, FSDP-sharded policies (their lockstep forward passes) and any architecture `supported`
refuses."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nanosafe import dist

ARCHITECTURES = ("Qwen2ForCausalLM", "Qwen2_5_VLForConditionalGeneration")

def supported(model) -> bool:
    """A plain (unsharded) Qwen2 or Qwen2.5-VL with full attention, SiLU MLP and biased q/k/v."""
    if type(model).__name__ not in ARCHITECTURES or dist.is_sharded(model):
        return False
    c = model.config.get_text_config()
    return c.hidden_act == "silu" and not getattr(c, "use_sliding_window", False)

def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """logits [B, V] -> the same with -inf outside the top-p nucleus (HF's TopPLogitsWarper rule)."""
    sorted_logits, order = logits.sort(-1)  # [B, V] ascending
    drop = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p  # [B, V]
    drop[:, -1] = False  # the most likely token always stays
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))

def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One token per row of probs [B, V] from uniforms u [B] in [0, 1), by the inverse CDF: what
    torch.multinomial(probs, 1) samples, ~20x cheaper on a CPU (multinomial draws B * V exponentials).
    A token of probability 0 is never drawn (u * total rounding up to the total gives the last one
    that is not 0)."""
    cdf = probs.double().cumsum(-1)  # [B, V]
    idx = torch.searchsorted(cdf, (u.double() * cdf[:, -1])[:, None], right=True)[:, 0]  # [B]
    return torch.minimum(idx, (probs > 0).cumsum(-1).argmax(-1))

def pick(logits: torch.Tensor, greedy: bool, temperature: float, top_p: float, u: torch.Tensor | None):
    """Next token per row [B] from fp32 logits [B, V] and uniforms u [B] (unused when greedy)."""
    if greedy:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return draw(logits.softmax(-1), u)

def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen2RMSNorm (normalised in fp32, scaled in the model's dtype) in one fused op."""
    return weight * F.rms_norm(x.float(), x.shape[-1:], eps=eps).to(x.dtype)

def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin

class _Layer:
    """One decoder layer's weights (q/k/v and gate/up concatenated) and its key / value buffers."""

    def __init__(self, layer, B: int, T_max: int):
        a, m = layer.self_attn, layer.mlp
        self.w_qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).T  # [D, (H + 2 KV) hd]
        self.b_qkv = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
        self.w_o = a.o_proj.weight.T  # [H hd, D]
        self.w_gu = torch.cat([m.gate_proj.weight, m.up_proj.weight]).T  # [D, 2 F]
        self.w_down = m.down_proj.weight.T  # [F, D]
        self.ln1, self.eps1 = layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon
        post = layer.post_attention_layernorm
        self.ln2, self.eps2 = post.weight, post.variance_epsilon
        self.scaling = a.scaling
        kv, hd = a.config.num_key_value_heads, a.head_dim
        self.k = self.w_o.new_zeros(B, kv, T_max, hd)  # [B, KV, T_max, hd]
        self.v = self.w_o.new_zeros(B, kv, T_max, hd)

    def step(self, x, cos, sin, bias, t: int, H: int, KV: int):
        """x [B, D], the token at cache slot t, bias [B KV, G, t + 1] the padding's -inf -> x [B, D]
        after this layer."""
        B, hd = x.shape[0], self.k.shape[-1]
        qkv = torch.addmm(self.b_qkv, _rms(x, self.ln1, self.eps1), self.w_qkv).view(B, H + 2 * KV, hd)
        qk = _rope(qkv[:, :H + KV], cos, sin)  # [B, H + KV, hd]
        self.k[:, :, t], self.v[:, :, t] = qk[:, H:], qkv[:, H + KV:]
        q = qk[:, :H].reshape(B * KV, H // KV, hd)  # [B KV, G, hd] the G heads sharing a kv head
        keys = self.k[:, :, :t + 1].flatten(0, 1)  # [B KV, t + 1, hd]
        values = self.v[:, :, :t + 1].flatten(0, 1)
        scores = torch.baddbmm(bias, q, keys.transpose(1, 2), alpha=self.scaling)  # [B KV, G, t + 1]
        attn = torch.bmm(scores.softmax(-1, dtype=torch.float32).to(q.dtype), values)  # [B KV, G, hd]
        x = x + attn.view(B, H * hd) @ self.w_o
        gate, up = (_rms(x, self.ln2, self.eps2) @ self.w_gu).chunk(2, -1)  # [B, F] each
        return x + (F.silu(gate) * up) @ self.w_down

class Decoder:
    """Left-padded prompts input_ids / attention_mask [B, T0] (and a Qwen2.5-VL's `vision` inputs:
    pixel_values, image_grid_thw, mm_token_type_ids) through the model's forward (`logits` [B, V]
    then predict each row's first new token); `step(tok)` appends one token per row and returns the
    next logits, for at most `max_new` steps."""

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new: int,
                 vision: dict | None = None):
        B, self.t = input_ids.shape
        c = model.config.get_text_config()
        self.H, self.KV = c.num_attention_heads, c.num_key_value_heads
        pos = attention_mask.long().cumsum(-1) - 1  # [B, T0] what `generate` gives a left-padded row
        self.delta = torch.zeros(B, 1, dtype=torch.long, device=input_ids.device)  # [B, 1] M-RoPE's shift
        if vision and "image_grid_thw" in vision:  # images: M-RoPE positions, every row (its images) once
            rows = torch.cat([input_ids, attention_mask], 1)
            inverse = torch.arange(B, device=input_ids.device)
            pos3, self.delta = model.model.get_rope_index(input_ids, vision["mm_token_type_ids"],
                                                          image_grid_thw=vision["image_grid_thw"],
                                                          attention_mask=attention_mask)  # [3, B, T0], [B, 1]
        else:  # the n samples of a prompt are n equal rows: the forward runs each distinct row once
            rows, inverse = torch.unique(torch.cat([input_ids, attention_mask], 1), dim=0,
                                         return_inverse=True)
            vision, pos3 = {}, None
        ids, mask = rows.split(self.t, 1)  # [U, T0] each
        out = model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1,
                    position_ids=(mask.long().cumsum(-1) - 1).clamp(min=0) if pos3 is None else pos3,
                    **{k: v for k, v in vision.items() if k in ("pixel_values", "image_grid_thw")})
        self.logits = out.logits[inverse, -1].float()  # [B, V]
        # after the prompt a token's three M-RoPE positions are equal (its text position + delta): plain RoPE
        lm = getattr(model.model, "language_model", model.model)
        self.layers = [_Layer(layer, B, self.t + max_new) for layer in lm.layers]
        for layer, cached in zip(self.layers, out.cache.layers):
            layer.k[:, :, :self.t], layer.v[:, :, :self.t] = cached.keys[inverse], cached.values[inverse]
        self.bias = out.logits.new_zeros(B, self.t + max_new)  # [B, T_max] -inf on the prompts' padding
        self.bias[:, :self.t].masked_fill_(attention_mask == 0, float("-inf"))
        self.pos = pos[:, -1:] + 1  # [B, 1] the next token's position
        self.embed = model.get_input_embeddings().weight  # [V, D]
        self.head = model.get_output_embeddings().weight.T  # [D, V]
        self.rotary, self.norm = lm.rotary_emb, lm.norm

    def step(self, tok: torch.Tensor) -> torch.Tensor:
        """tok [B] -> logits [B, V] (fp32) for the token after it."""
        x = self.embed[tok]  # [B, D]
        cos, sin = self.rotary(x, self.pos + self.delta)  # [B, 1, hd] each, broadcast over the heads
        B, G = len(tok), self.H // self.KV
        bias = self.bias[:, None, None, :self.t + 1].expand(B, self.KV, G, -1).reshape(B * self.KV, G, -1)
        for layer in self.layers:
            x = layer.step(x, cos, sin, bias, self.t, self.H, self.KV)
        self.t, self.pos = self.t + 1, self.pos + 1
        return (_rms(x, self.norm.weight, self.norm.variance_epsilon) @ self.head).float()

    def keep(self, idx: torch.Tensor) -> None:
        """Go on with rows idx [b] only."""
        for layer in self.layers:
            layer.k, layer.v = layer.k[idx], layer.v[idx]
        self.bias, self.pos, self.delta = self.bias[idx], self.pos[idx], self.delta[idx]

@torch.no_grad()
def sample(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
           stops: list[int], pad: int, greedy: bool = False, temperature: float = 1.0,
           top_p: float = 1.0, vision: dict | None = None) -> torch.Tensor:
    """Left-padded prompts input_ids / attention_mask [B, T0] (with a Qwen2.5-VL's `vision` inputs,
    Decoder's) -> new tokens [B, n], n <= max_new_tokens
    (n = the step at which the last row stopped), `pad` after each row's stop id. Finished rows
    leave the batch once they are a quarter of it; every step draws B uniforms whatever the rows
    left, so a seed gives the draws of `generate` with multinomial replaced by `draw`."""
    B, device = input_ids.shape[0], input_ids.device
    dec = Decoder(model, input_ids, attention_mask, max_new_tokens, vision)
    logits, stops = dec.logits, torch.tensor(stops, device=device)
    new = torch.full((B, max_new_tokens), pad, dtype=torch.long, device=device)  # [B, max_new]
    rows = torch.arange(B, device=device)  # [b] the rows still in the batch
    done = torch.zeros(B, dtype=torch.bool, device=device)  # [b]
    for i in range(max_new_tokens):
        u = None if greedy else torch.rand(B, device=device)[rows]  # [b]
        tok = pick(logits, greedy, temperature, top_p, u).masked_fill(done, pad)  # [b]
        new[rows, i] = tok
        done |= torch.isin(tok, stops)
        if i + 1 == max_new_tokens or bool(done.all()):
            return new[:, :i + 1]
        if 4 * int(done.sum()) >= len(rows):  # a finished row costs a live one's compute
            keep = (~done).nonzero()[:, 0]  # [b']
            dec.keep(keep)
            rows, tok, done = rows[keep], tok[keep], done[keep]
        logits = dec.step(tok)
    return new
