"""Per-GPU memory estimate of an RL run for each preset, from the models' public config numbers.

    python -m nanosafe.memory                       # every configs/qwen2_5_*.py, on 1 and 8 GPUs
    python -m nanosafe.memory configs/qwen2_5_vl_7b.py

No download: the shapes below are copied from each model's config.json on the Hugging Face hub;
the run settings (micro-batch, sequence lengths, generation batch, offload, rollout mode) come from
the preset itself (nanosafe.config). All figures in GiB per GPU, for FSDP over N GPUs (N = 1 is
one process with the same precision choices).

  states      fp32 master weights (every parameter, sharded) + fp32 gradients and AdamW's two
              moments (trainable parameters only: the vision tower is frozen): (4 P + 12 P_t) / N;
              0 on the GPU under dist.cpu_offload, which moves them to host memory ("host" column,
              per node).
  gathered    bf16 copies FSDP gathers for compute: the root unit (embeddings, LM head, vision
              tower, final norm) for the whole forward/backward, plus two decoder layers (the
              running one and the prefetched one) and one layer's unsharded fp32 gradient.
  activations gradient checkpointing keeps each layer's bf16 input, b * T * h * 2 bytes per layer,
              plus one layer's recomputed activations, about b * T * (8 h + 4 i) * 2 bytes
              (flash/SDPA attention: no T^2 term); b = optim.micro_batch_size,
              T = data.max_prompt_len + rollout.max_new_tokens. The RL loss never builds [T, V]
              logits (kernels.logprob).
  train       states + gathered + activations.
  gen weights dist.rollout_unshard: the whole policy in bf16 on every GPU (2 P); otherwise the
              root unit and two layers, gathered as the layers run.
  KV cache    rollout.gen_batch_size rows * T tokens * layers * 2 (K, V) * kv_heads * head_dim * 2 B.
  rollout     states without gradients (freed after each step) + gen weights + KV cache.
  fits        max(train, rollout) + 5 GiB (CUDA context, allocator slack) <= 80 GiB.

Not counted beyond that margin: the vision tower's activations (small next to the language
model's at these image sizes) and the collectives' temporary buffers. It is an estimate to choose
presets by, not a measurement.
"""
from __future__ import annotations

import glob
import sys
from dataclasses import dataclass

from nanosafe import config

GiB = 2 ** 30


@dataclass
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    vision_depth: int = 0  # Qwen2.5-VL vision tower: blocks of width 1280, 2x2 patch merger
    vision_intermediate: int = 0

    def layer_params(self) -> int:
        h, kv = self.hidden, self.kv_heads * (self.hidden // self.heads)
        attn = h * (h + 2 * kv) + (h + 2 * kv) + h * h  # q/k/v with bias, o without
        return attn + 3 * h * self.intermediate + 2 * h  # SwiGLU MLP, two RMSNorms

    def vision_params(self) -> int:
        if not self.vision_depth:
            return 0
        w, i = 1280, self.vision_intermediate
        block = 3 * w * w + 3 * w + w * w + w + 2 * (w * i + i) + i * w + w + 2 * w
        merger = w + (4 * w) * (4 * w) + 4 * w + 4 * w * self.hidden + self.hidden
        return 3 * 2 * 14 * 14 * w + self.vision_depth * block + merger  # patch embed (no bias)

    def root_params(self) -> int:
        emb = self.vocab * self.hidden
        return emb * (1 if self.tied else 2) + self.hidden + self.vision_params()

    def total(self) -> int:
        return self.root_params() + self.layers * self.layer_params()


# config.json of each hub model (text_config for the VL ones)
SHAPES = {
    "Qwen/Qwen2.5-0.5B-Instruct": Shape(896, 24, 14, 2, 4864, 151936, tied=True),
    "Qwen/Qwen2.5-VL-3B-Instruct": Shape(2048, 36, 16, 2, 11008, 151936, tied=True,
                                         vision_depth=32, vision_intermediate=3420),
    "Qwen/Qwen2.5-VL-7B-Instruct": Shape(3584, 28, 28, 4, 18944, 152064, tied=False,
                                         vision_depth=32, vision_intermediate=3420),
    "Qwen/Qwen2.5-VL-72B-Instruct": Shape(8192, 80, 64, 8, 29568, 152064, tied=False,
                                          vision_depth=32, vision_intermediate=3456),
}


def estimate(cfg: config.Config, n_gpus: int) -> dict:
    s = SHAPES[cfg.model.init]
    P, P_frozen = s.total(), s.vision_params() if cfg.model.freeze_vision else 0
    P_t = P - P_frozen
    T = cfg.data.max_prompt_len + cfg.rollout.max_new_tokens
    b, h, L = cfg.optim.micro_batch_size, s.hidden, s.layers
    offload = cfg.dist.cpu_offload
    master, grads_adam = 4 * P / n_gpus, 12 * P_t / n_gpus
    states = 0 if offload else master + grads_adam
    gathered = 2 * s.root_params() + 2 * 2 * s.layer_params() + 4 * s.layer_params()
    acts = b * T * h * 2 * L + b * T * (8 * h + 4 * s.intermediate) * 2
    layers_gen = 2 * s.total() if cfg.dist.rollout_unshard else 2 * s.root_params() + 2 * 2 * s.layer_params()
    kv = cfg.rollout.gen_batch_size * T * L * 2 * s.kv_heads * (h // s.heads) * 2
    rollout_states = 0 if offload else master + 8 * P_t / n_gpus
    row = {"params_B": P / 1e9, "gpus": n_gpus, "states": states / GiB, "gathered": gathered / GiB,
           "activations": acts / GiB, "train": (states + gathered + acts) / GiB,
           "gen_weights": layers_gen / GiB, "kv_cache": kv / GiB,
           "rollout": (rollout_states + layers_gen + kv) / GiB,
           "host": (4 * P + 12 * P_t) / GiB if offload else 0.0}
    row["fits"] = "yes" if max(row["train"], row["rollout"]) + 5 <= 80 else "no"
    return row


COLUMNS = {"preset": "s", "params_B": ".2f", "gpus": "d", "states": ".1f", "gathered": ".1f",
           "activations": ".1f", "train": ".1f", "gen_weights": ".1f", "kv_cache": ".1f", "rollout": ".1f",
           "fits": "s", "host": ".0f"}  # name: format


def table(presets: list[str], gpus=(1, 8)) -> str:
    """A markdown table: one row per (preset, GPU count), GiB per GPU (host: GiB per node)."""
    cfgs = sorted((config.parse(["--config", path, "stage=m3b"]) for path in presets),
                  key=lambda c: SHAPES[c.model.init].total())
    rows = [{"preset": cfg.config_name, **estimate(cfg, n)} for cfg in cfgs for n in gpus]
    cells = [[f"{r[c]:{f}}" for c, f in COLUMNS.items()] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(COLUMNS)]

    def line(xs):
        return "| " + " | ".join(x.rjust(w) for x, w in zip(xs, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(COLUMNS), rule, *map(line, cells)])


if __name__ == "__main__":
    print(table(sys.argv[1:] or sorted(glob.glob("configs/qwen2_5_*.py"))))
