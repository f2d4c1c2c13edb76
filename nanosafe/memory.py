"""Per-GPU memory estimate of an RL run: any preset or config, any model, any GPU count and size.

    python -m nanosafe.memory                                   # every configs/qwen2_5_*.py, 1 and 8 GPUs
    python -m nanosafe.memory --config configs/qwen2_5_vl_7b.py --gpus 4 --gpu-mem 48
    python -m nanosafe.memory --config configs/qwen2_5_0_5b.py init=out/qwen2_5_0_5b/sft/model

The model's shape comes from its config.json (a local dir's, or for the presets' hub ids the copy
in HUB_CONFIGS; nothing is downloaded), the run settings from the config (stage m3b unless told).
GiB per GPU under FSDP over N GPUs; what each column counts: docs/scaling.md, "Memory per GPU".
An estimate to choose presets by, not a measurement."""
from __future__ import annotations

import argparse
import glob
import json
import os
from dataclasses import dataclass

from nanosafe import config

GiB = 2 ** 30

# The architecture fields of each preset model's published config.json (Hugging Face hub),
# in that file's own layout (VL: text fields at the top level, the tower under vision_config).
_QWEN2_5 = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu",
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
            "bos_token_id": 151643, "eos_token_id": 151645, "torch_dtype": "bfloat16"}
_QWEN2_5_VL = {**_QWEN2_5, "model_type": "qwen2_5_vl", "architectures": ["Qwen2_5_VLForConditionalGeneration"],
               "max_position_embeddings": 128000, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
               "vision_start_token_id": 151652, "vision_end_token_id": 151653, "image_token_id": 151655,
               "video_token_id": 151656}
_TOWER = {"depth": 32, "hidden_size": 1280, "hidden_act": "silu", "num_heads": 16, "in_chans": 3,
          "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
          "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2}
HUB_CONFIGS = {
    "Qwen/Qwen2.5-0.5B-Instruct": {**_QWEN2_5, "hidden_size": 896, "num_hidden_layers": 24,
                                   "num_attention_heads": 14, "num_key_value_heads": 2,
                                   "intermediate_size": 4864, "vocab_size": 151936, "tie_word_embeddings": True},
    "Qwen/Qwen2.5-VL-3B-Instruct": {**_QWEN2_5_VL, "hidden_size": 2048, "num_hidden_layers": 36,
                                    "num_attention_heads": 16, "num_key_value_heads": 2,
                                    "intermediate_size": 11008, "vocab_size": 151936, "tie_word_embeddings": True,
                                    "vision_config": {**_TOWER, "intermediate_size": 3420, "out_hidden_size": 2048}},
    "Qwen/Qwen2.5-VL-7B-Instruct": {**_QWEN2_5_VL, "hidden_size": 3584, "num_hidden_layers": 28,
                                    "num_attention_heads": 28, "num_key_value_heads": 4,
                                    "intermediate_size": 18944, "vocab_size": 152064, "tie_word_embeddings": False,
                                    "vision_config": {**_TOWER, "intermediate_size": 3420, "out_hidden_size": 3584}},
    "Qwen/Qwen2.5-VL-72B-Instruct": {**_QWEN2_5_VL, "hidden_size": 8192, "num_hidden_layers": 80,
                                     "num_attention_heads": 64, "num_key_value_heads": 8,
                                     "intermediate_size": 29568, "vocab_size": 152064, "tie_word_embeddings": False,
                                     "vision_config": {**_TOWER, "intermediate_size": 3456, "out_hidden_size": 8192}},
}

@dataclass
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    vision_depth: int = 0  # Qwen2.5-VL vision tower: blocks, their width and MLP width
    vision_hidden: int = 0
    vision_intermediate: int = 0
    patch: int = 14

    @classmethod
    def from_config(cls, cfg: dict, where: str) -> "Shape":
        """A config.json as a dict: the text fields at the top (Qwen2, old Qwen2.5-VL files) or
        under text_config (what transformers 5 writes), the tower under vision_config."""
        text, vis = cfg.get("text_config") or cfg, cfg.get("vision_config") or {}
        try:
            return cls(text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"],
                       text.get("num_key_value_heads", text["num_attention_heads"]), text["intermediate_size"],
                       text["vocab_size"], bool(cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
                       vis.get("depth", 0), vis.get("hidden_size", 0), vis.get("intermediate_size", 0),
                       vis.get("patch_size", 14))
        except KeyError as e:
            raise KeyError(f"{where}: field {e.args[0]!r} missing: not a Qwen2 / Qwen2.5-VL config") from None

    def layer_params(self) -> int:
        h, kv = self.hidden, self.kv_heads * (self.hidden // self.heads)
        attn = h * (h + 2 * kv) + (h + 2 * kv) + h * h  # q/k/v with bias, o without
        return attn + 3 * h * self.intermediate + 2 * h  # SwiGLU MLP, two RMSNorms

    def vision_params(self) -> int:
        if not self.vision_depth:
            return 0
        w, i = self.vision_hidden, self.vision_intermediate
        block = 3 * w * w + 3 * w + w * w + w + 2 * (w * i + i) + i * w + w + 2 * w
        merger = w + (4 * w) * (4 * w) + 4 * w + 4 * w * self.hidden + self.hidden
        return 3 * 2 * self.patch * self.patch * w + self.vision_depth * block + merger  # patch embed (no bias)

    def root_params(self) -> int:
        emb = self.vocab * self.hidden
        return emb * (1 if self.tied else 2) + self.hidden + self.vision_params()

    def total(self) -> int:
        return self.root_params() + self.layers * self.layer_params()

def model_config(model: str) -> dict:
    """config.json of a local model dir, or the kept copy for a hub id the presets name."""
    path = os.path.join(model, "config.json")
    if os.path.isdir(model):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: not found (a Hugging Face model dir holds config.json)")
        with open(path) as f:
            return json.load(f)
    if model in HUB_CONFIGS:
        return HUB_CONFIGS[model]
    raise KeyError(f"model {model!r}: not a local dir with a config.json, and not one of the hub ids "
                   f"known without a download ({', '.join(HUB_CONFIGS)}); download it and pass the dir")

def shape_of(cfg: config.Config) -> Shape:
    model = cfg.init or cfg.model.init
    if not model:
        raise ValueError(f"{cfg.config_name}: model.init is empty (the tiny model); give init=<model dir or hub id>")
    return Shape.from_config(model_config(model), os.path.join(model, "config.json"))

def estimate(cfg: config.Config, n_gpus: int, gpu_mem: float = 80.0) -> dict:
    s = shape_of(cfg)
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
    row["fits"] = "yes" if max(row["train"], row["rollout"]) + 5 <= gpu_mem else "no"
    return row

COLUMNS = {"preset": "s", "params_B": ".2f", "gpus": "d", "states": ".1f", "gathered": ".1f",
           "activations": ".1f", "train": ".1f", "gen_weights": ".1f", "kv_cache": ".1f", "rollout": ".1f",
           "fits": "s", "host": ".0f"}  # name: format

def table(presets: list[str], gpus=(1, 8), gpu_mem: float = 80.0, overrides: list[str] = (),
          stage: str = "m3b") -> str:
    """A markdown table: one row per (config, GPU count), GiB per GPU (host: GiB per node)."""
    cfgs = sorted((config.parse(["--config", path, f"stage={stage}", *overrides]) for path in presets),
                  key=lambda c: shape_of(c).total())
    rows = [{"preset": cfg.config_name, **estimate(cfg, n, gpu_mem)} for cfg in cfgs for n in gpus]
    cells = [[f"{r[c]:{f}}" for c, f in COLUMNS.items()] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(COLUMNS)]

    def line(xs):
        return "| " + " | ".join(x.rjust(w) for x, w in zip(xs, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(COLUMNS), rule, *map(line, cells)])

def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(prog="python -m nanosafe.memory", description=(
        "Per-GPU memory estimate (GiB) of an RL step under FSDP, from a config's run settings and its "
        "model's config.json (a local dir, or a preset's hub id without download)."),
        epilog="key=value arguments override the config, e.g. init=out/qwen2_5_0_5b/sft/model "
               "optim.micro_batch_size=2 (any key of nanosafe.config).")
    ap.add_argument("configs", nargs="*", help="config files (default: every configs/qwen2_5_*.py)")
    ap.add_argument("--config", action="append", default=[], help="a config file (repeatable)")
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 8], help="GPU counts, one row each (default 1 8)")
    ap.add_argument("--gpu-mem", type=float, default=80.0, help="GiB per GPU for the 'fits' column (default 80)")
    ap.add_argument("--stage", default="m3b", help="the config stage whose settings are used (default m3b)")
    args, rest = ap.parse_known_args(argv)
    overrides = [a for a in args.configs + rest if "=" in a and not a.startswith("-")]
    if len(overrides) != len([a for a in args.configs if "=" in a]) + len(rest):
        ap.error(f"unrecognized arguments: {' '.join(a for a in rest if a not in overrides)}")
    args.configs = [a for a in args.configs if "=" not in a]
    if any(n < 1 for n in args.gpus) or args.gpu_mem <= 0:
        ap.error("--gpus must be >= 1 and --gpu-mem > 0")
    paths = args.configs + args.config or sorted(glob.glob("configs/qwen2_5_*.py"))
    out = table(paths, args.gpus, args.gpu_mem, overrides, args.stage)
    print(out)
    return out

if __name__ == "__main__":
    main()
