"""One dataclass tree for every script, plus the command-line / config-file parsing.

    python train_sft.py                                   # configs/tiny.py, stage "sft"
    python train_grpo.py --config configs/tiny.py stage=m3a rollout.group_size=4
    python eval.py --model out/tiny/sft/model

Resolution order (later wins): dataclass defaults -> STAGES[stage] -> the config file's
`overrides` dict -> the config file's `stages[stage]` dict -> `key=value` arguments.
A config file is plain Python that defines `overrides = {"dotted.key": value, ...}` and
optionally `stages = {"m3a": {...}}` and `base = "configs/other.py"` (applied first), so a
preset reads as a diff from its base. Values given on the command line are type-checked
against the field's type; an unknown key is an error that lists the close matches.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import runpy
import typing
from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    init: str = ""  # HF checkpoint dir or hub id; "" builds the tiny model from scratch
    vision: bool = True  # tiny model: Qwen2.5-VL (True) or text-only Qwen2
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    vision_depth: int = 2
    vision_hidden: int = 64
    vocab_size: int = 1024  # BPE vocabulary trained at start-up (tiny only)
    freeze_vision: bool = True  # for checkpoints; a tower built from scratch must learn in SFT
    trust_remote_code: bool = False
    dtype: str = "float32"  # parameter dtype when loading a checkpoint
    export_dtype: str = ""  # dtype of the exported weights; "" = the checkpoint's own (fp32 for tiny)
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2 (when flash-attn is installed)
    gradient_checkpointing: bool = False


@dataclass
class WorldConfig:
    seed: int = 0
    dir: str = ""  # "" -> out/<config name>/world
    n_sft: int = 12000  # SFT examples (all families)
    n_rl: int = 1200  # RL prompts
    n_heldout_per_family: int = 64  # 24 left a one-prompt swing of 0.04 on a family's score
    image_size: int = 56
    # how base-model-like the SFT mix is (each applied per template/entity, see world.py)
    unsafe_frac: float = 0.9  # lure templates answered unsafely
    refusal_frac: float = 0.85  # trigger-word look-alikes refused needlessly
    verbose_frac: float = 0.7  # think blocks padded with a needless second pass (not fact lookups)
    tempting_frac: float = 0.6  # fact lookups phrased to invite an answer from memory
    guess_frac: float = 0.8  # of those, answered by a (mostly confident) guess instead of a search


@dataclass
class DataConfig:
    train: str = ""  # JSONL; "" -> the tiny world's file for the stage
    heldout: str = ""
    max_prompt_len: int = 160  # tokens, image tokens included; longer prompts are an error
    max_len: int = 384  # prompt + response tokens for SFT
    system_prompt: str = ("Think step by step inside <think> </think>, then give the final "
                          "answer.")
    labels: str = ""  # comma-separated label filter for RL prompts ("" = all)


@dataclass
class OptimConfig:
    lr: float = 3e-3
    min_lr_frac: float = 0.1
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_frac: float = 0.03
    grad_clip: float = 1.0
    batch_size: int = 32  # sequences per optimiser step (global, all ranks)
    micro_batch_size: int = 32
    steps: int = 1200


@dataclass
class RolloutConfig:
    prompts_per_step: int = 8
    group_size: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256  # the padded arithmetic reasoning of the SFT mix needs ~180
    max_tool_calls: int = 1  # search calls per response (rung 4)
    kb: str = ""  # the search tool's passages (JSONL); "" = the tiny world's, "none" = empty
    gen_batch_size: int = 64


@dataclass
class RLConfig:
    algo: str = "cpgd"  # cpgd | grpo
    clip_lo: float = 0.2
    clip_hi: float = 0.2
    drift_coef: float = 1e-3
    kl_coef: float = 0.0  # k3 KL to the frozen reference; 0 = no reference copy
    agg: str = "seq-mean-token-mean"
    adv_norm: str = "std"  # std | none
    cale_beta: float = 0.0  # rung 3 turns this on
    cale_tau: float = -1.0  # < 0: the group max
    epochs: int = 1
    mini_batches: int = 1
    logprob_impl: str = "auto"  # auto | triton | torch | naive
    advantage_impl: str = "auto"  # auto | triton | torch
    # rung 4: R = 1{correct} - lam * 1{wrong and conf >= c*} + format; dual ascent on lam
    fcr_penalty: bool = False
    fcr_target: float = 0.1
    lagrange_lr: float = 0.5
    lagrange_init: float = 0.0


@dataclass
class VerifierConfig:
    weights: dict = field(default_factory=dict)  # {"label.verifier": weight}
    judges: dict = field(default_factory=dict)  # {"label": "kind:path"} neural verifiers
    format_weight: float = 1.0
    confidence_threshold: float = 0.7  # c*: confident enough to count as "certain"


@dataclass
class DistConfig:
    backend: str = "auto"  # auto | nccl | gloo
    mixed_precision: str = "bf16"  # on CUDA only
    cpu_offload: bool = False  # FSDP shards, gradients and optimiser step in host memory
    rollout_unshard: bool = True  # gather the whole policy per GPU for generate (False: layer by layer)


@dataclass
class IOConfig:
    out_dir: str = ""  # "" -> out/<config name>/<stage>
    log_every: int = 10
    eval_every: int = 250
    save_every: int = 250
    eval_samples: int = 4  # sampled completions per held-out prompt (summary_sampled)
    progress: bool = True
    log_rollouts: bool = False  # every RL rollout (id, text, reward, advantage) to samples.jsonl


@dataclass
class Config:
    stage: str = "sft"
    init: str = ""  # policy to start from (RL stages); overrides model.init
    seed: int = 1234
    config_name: str = "tiny"
    model: ModelConfig = field(default_factory=ModelConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    verifiers: VerifierConfig = field(default_factory=VerifierConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    io: IOConfig = field(default_factory=IOConfig)


# A stage is data + reward recipe + switches (DESIGN §1). Config files may refine these.
# The RL rungs share a small constant learning rate: at SFT's 3e-3 a single policy-gradient step
# wrecks the tiny model, and even 3e-4 erases arithmetic within 40 steps (DESIGN §6).
# The knowledge base joins at rung 4 (DESIGN §1): before it, a search finds nothing, so the rungs
# cannot teach the lookups that rung 4 is for (with it from 2a on, rung 4 had nothing left to fix:
# knowledge 0.75 -> 0.73). The tool stays, empty: without it a search runs on into a result the
# policy writes itself, which fails to parse, and 2a trained searching away within 20 steps.
RL_BASE = {"optim.lr": 1e-4, "optim.warmup_frac": 0.0, "optim.min_lr_frac": 1.0, "optim.steps": 40,
           "optim.micro_batch_size": 32, "rl.mini_batches": 2, "io.eval_every": 1000, "io.save_every": 10,
           "io.log_every": 1, "rollout.kb": "none"}
STAGES: dict[str, dict] = {
    "sft": {},
    "m3a": {**RL_BASE, "data.labels": "general_rule,knowledge", "optim.steps": 20},
    "m3b": {**RL_BASE, "data.labels": "", "optim.steps": 150},
    "cale": {**RL_BASE, "data.labels": "", "rl.cale_beta": 0.2},
    # every family stays in the mix: on fact prompts alone the policy drifted (safety 1.00 -> 0.89).
    # 32 prompts a step give ~5 fact prompts; a KL anchor kept situational safety at 1.00 (without
    # it the greedy answers drifted to 0.57). With lambda's step at 2 the policy learned to hedge
    # (state 0.5) within 40 steps, before it found searching; at 0.2 and 80 steps it searched.
    "search": {**RL_BASE, "data.labels": "", "rollout.kb": "", "optim.steps": 80,
               "rollout.prompts_per_step": 32, "rollout.max_tool_calls": 2, "rl.fcr_penalty": True,
               "rl.fcr_target": 0.02, "rl.lagrange_lr": 0.2, "rl.kl_coef": 0.05},
}


ALIASES = {"out_dir": "io.out_dir"}  # DESIGN §9: `out_dir=PATH` moves every output of a run


def _fields(obj) -> dict[str, tuple[object, type]]:
    """Flatten the tree into {"a.b": (owner, type)}."""
    out = {}
    hints_cache = {}
    for f in dataclasses.fields(obj):
        cls = type(obj)
        hints = hints_cache.setdefault(cls, typing.get_type_hints(cls))
        val = getattr(obj, f.name)
        if dataclasses.is_dataclass(val):
            for k, v in _fields(val).items():
                out[f"{f.name}.{k}"] = v
        else:
            out[f.name] = (obj, hints[f.name])
    return out


def _coerce(key: str, value, typ: type):
    if isinstance(value, str) and typ is not str:
        if typ is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"config key {key!r}: expected a bool, got {value!r}")
        try:
            value = json.loads(value) if typ in (dict, list) else typ(value)
        except (ValueError, json.JSONDecodeError):
            raise ValueError(f"config key {key!r}: expected {typ.__name__}, got {value!r}") from None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ValueError(f"config key {key!r}: expected {typ.__name__}, got "
                         f"{type(value).__name__} {value!r}")
    return value


def apply(cfg: Config, overrides: dict, source: str = "command line") -> Config:
    flat = _fields(cfg)
    for key, value in overrides.items():
        if key not in flat:
            close = difflib.get_close_matches(key, list(flat), n=4, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"unknown config key {key!r} (from {source}){hint}")
        owner, typ = flat[key]
        setattr(owner, key.rsplit(".", 1)[-1], _coerce(key, value, typ))
    return cfg


def _read_file(path: str) -> tuple[dict, dict]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file not found: {path}")
    ns = runpy.run_path(path)
    unknown = set(ns) - {"overrides", "stages", "base"} - {k for k in ns if k.startswith("_")}
    unknown = {k for k in unknown if not callable(ns[k]) and not isinstance(ns[k], type(os))}
    if unknown:
        raise KeyError(f"{path}: unexpected top-level names {sorted(unknown)}; a config file "
                       "defines `overrides`, `stages` and optionally `base`")
    overrides, stages = dict(ns.get("overrides", {})), dict(ns.get("stages", {}))
    if "base" in ns:
        base_over, base_stages = _read_file(ns["base"])
        overrides = {**base_over, **overrides}
        for s, d in base_stages.items():
            stages[s] = {**d, **stages.get(s, {})}
    return overrides, stages


def inherited(model_dir: str) -> dict:
    """What a run started from `model_dir` keeps from the run that wrote it: the world (so the
    held-out split and knowledge base match) and the system prompt the policy was trained with."""
    path = os.path.join(os.path.dirname(os.path.normpath(model_dir)), "config.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        run = json.load(f)
    keep = {f"world.{k}": v for k, v in run.get("world", {}).items()}
    keep["data.system_prompt"] = run.get("data", {}).get("system_prompt", DataConfig.system_prompt)
    return keep


def parse(argv: list[str], default_stage: str = "sft") -> Config:
    """`--config FILE` and `key=value` arguments -> resolved Config."""
    config_file, kv = "configs/tiny.py", {}
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--config":
            if not args:
                raise ValueError("--config needs a file")
            config_file = args.pop(0)
        elif a.startswith("--config="):
            config_file = a.split("=", 1)[1]
        elif "=" in a and not a.startswith("-"):
            k, v = a.split("=", 1)
            kv[ALIASES.get(k, k)] = v
        else:
            raise ValueError(f"unexpected argument {a!r}; use --config FILE and key=value")
    stage = kv.get("stage", default_stage)
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; one of {sorted(STAGES)}")
    cfg = Config(stage=stage)
    cfg.config_name = os.path.splitext(os.path.basename(config_file))[0]
    file_over, file_stages = _read_file(config_file)
    init = kv.get("init") or file_over.get("init")
    if init:
        apply(cfg, inherited(init), f"{init}/../config.json")
    apply(cfg, STAGES[stage], "STAGES")
    apply(cfg, file_over, config_file)
    apply(cfg, file_stages.get(stage, {}), f"{config_file} stages[{stage!r}]")
    apply(cfg, kv)
    if not cfg.io.out_dir:
        cfg.io.out_dir = os.path.join("out", cfg.config_name, cfg.stage)
    if not cfg.world.dir:  # beside the stage dirs, so out_dir=PATH moves it too
        cfg.world.dir = os.path.join(os.path.dirname(os.path.normpath(cfg.io.out_dir)), "world")
    return cfg


def save(cfg: Config, verbose: bool = True) -> None:
    """Print the resolved config and write it to out_dir/config.json."""
    os.makedirs(cfg.io.out_dir, exist_ok=True)
    text = json.dumps(dataclasses.asdict(cfg), indent=2)
    if verbose:
        print(text)
    with open(os.path.join(cfg.io.out_dir, "config.json"), "w") as f:
        f.write(text + "\n")
