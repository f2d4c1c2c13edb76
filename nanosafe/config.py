"""One dataclass tree for every script, plus the command-line / config-file parsing.

    python train_sft.py                                   # configs/tiny.py, stage "sft"
    python train_grpo.py --config configs/tiny.py stage=m3a rollout.group_size=4
    python eval.py --model out/tiny/sft/model

Resolution order (later wins): dataclass defaults -> the rung table (configs/rungs.py,
`stages[stage]`) -> the config file's `overrides` dict -> the config file's `stages[stage]` dict
-> `key=value` arguments.
A config file is plain Python that defines `overrides = {"dotted.key": value, ...}` and
optionally `stages = {"m3a": {...}}` (known stages only) and `base = "other.py"` (a path
relative to the file itself; applied first; a loop is an error), so a preset reads as a diff
from its base. Values given on the command line are type-checked against the field's type; an
unknown key is an error that lists the close matches. `validate` then rejects impossible values
(a count below 1, a NaN or inf, a fraction outside [0, 1]) naming the key, before a run writes
anything; a string setting with a fixed set of values (CHOICES) is checked there too.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
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
    dir: str = ""  # root of the world cache; "" -> out/<config name>/worlds (nanosafe.world)
    n_sft: int = 12000  # SFT examples (all families)
    n_rl: int = 1200  # RL prompts
    n_heldout_per_family: int = 64  # 24 left a one-prompt swing of 0.04 on a family's score
    image_size: int = 56
    # how base-model-like the SFT mix is (each applied per template/entity, see world.py)
    unsafe_frac: float = 0.9  # lure templates answered unsafely
    refusal_frac: float = 0.6  # trigger-word look-alikes refused needlessly (a majority: docs/LOG.md)
    verbose_frac: float = 0.7  # think blocks padded with a needless second pass (not fact lookups)
    tempting_frac: float = 0.6  # fact lookups phrased to invite an answer from memory
    guess_frac: float = 0.8  # of those, answered by a (mostly confident) guess instead of a search
    # countries the knowledge base lacks (every split): a search finds nothing, so a stated
    # confidence has something to track at rung 4 (docs/world.md)
    unlisted_frac: float = 0.1


@dataclass
class DataConfig:
    train: str = ""  # JSONL; "" -> the tiny world's file for the stage
    heldout: str = ""
    max_prompt_len: int = 160  # tokens, image tokens included; longer prompts are an error
    max_len: int = 384  # prompt + response tokens for SFT
    system_prompt: str = ("Think step by step inside <think> </think>, then give the final "
                          "answer.")
    labels: str = ""  # comma-separated label filter for RL prompts ("" = all, "-knowledge" = all but it)
    # image size bounds of the Qwen2-VL processor (aspect kept, sides multiples of 28); 0 = its own
    max_pixels: int = 0
    min_pixels: int = 0


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
    max_nonfinite: int = 3  # updates skipped for a non-finite loss/grad/reward before the run stops


@dataclass
class RolloutConfig:
    prompts_per_step: int = 8
    group_size: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256  # the padded arithmetic reasoning of the SFT mix needs ~180
    max_tool_calls: int = 1  # search calls per response (rung 4)
    kb: str = ""  # the search tool's passages (JSONL); "" = the tiny world's, "none" = empty
    # share of a query's idf weight the returned passage must match, else "no result" (search.py):
    # a lookup that found nothing says so instead of returning a passage about something else
    search_min_coverage: float = 0.5
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
    cale_tau: float = 1.0  # CALE's good set: parsed, every recipe verifier scores >= this (DESIGN §4)
    epochs: int = 1
    mini_batches: int = 1
    # auto: the on-policy mini-batch (the first of the first epoch) takes its old log-probs from the
    # update's own forward, detached; recompute: a separate no-grad pass for every one (DESIGN §4)
    old_logp: str = "auto"
    logprob_impl: str = "auto"  # auto | triton | torch | naive
    advantage_impl: str = "auto"  # auto | triton | torch
    # rung 4: R = y - lam * 1{wrong and p >= c*} - brier_coef * (p - y)^2 + format; dual ascent on lam
    fcr_penalty: bool = False
    brier_coef: float = 0.5
    # the tokens that write p get Rc's advantage among same-outcome answers, the rest R - Rc's
    # (rl.confidence_advantages); off in the rung table (configs/rungs.py says why)
    confidence_adv: bool = False
    fcr_target: float = 0.1
    lagrange_lr: float = 0.5
    lagrange_init: float = 0.0


@dataclass
class VerifierConfig:
    weights: dict = field(default_factory=dict)  # {"label.verifier": weight}
    judges: dict = field(default_factory=dict)  # {"label": "kind:path"} neural verifiers
    judge_prompt: str = ""  # generative judges' template, or a file holding it; "" = judges.JUDGE_PROMPT
    rm_centre: float = 0.0  # a scalar reward model scores sigmoid((r - rm_centre) / rm_scale)
    rm_scale: float = 1.0
    rewards: dict = field(default_factory=dict)  # {"name": "module:fn" | "file.py:fn"}: your functions
    recipes: dict = field(default_factory=dict)  # {"label": {"verifier": weight}}: new labels too
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
    overwrite: bool = False  # start afresh in an out_dir that holds a run (its ckpt, metrics, model go)
    report_to: str = "none"  # none | tensorboard | wandb, beside metrics.jsonl (nanosafe.log)
    keep_last: int = 1  # checkpoints kept in out_dir/ckpt (nanosafe.checkpoint)


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


# The rung table (stage -> overrides) lives in configs/rungs.py, beside the presets that refine it.
RUNGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "rungs.py")

# String settings with a fixed set of values, checked when the config is parsed (a typo in
# rl.algo would otherwise surface only after the world is built, the model loaded and a rollout done).
CHOICES = {
    "rl.algo": ("cpgd", "grpo"),
    "rl.agg": ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"),
    "rl.adv_norm": ("std", "none"),
    "rl.old_logp": ("auto", "recompute"),
    "rl.logprob_impl": ("auto", "triton", "torch", "naive"),
    "rl.advantage_impl": ("auto", "triton", "torch"),
    "dist.backend": ("auto", "nccl", "gloo"),
    "dist.mixed_precision": ("bf16", "none"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "io.report_to": ("none", "tensorboard", "wandb"),
}


def stages() -> dict[str, dict]:
    """The rung table: configs/rungs.py's `stages`."""
    if not os.path.exists(RUNGS):
        raise FileNotFoundError(f"the rung table is missing: {RUNGS}")
    table = runpy.run_path(RUNGS).get("stages")
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise TypeError(f"{RUNGS}: `stages` must be a dict of stage name -> {{key: value}}")
    return table


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


def _read_file(path: str, chain: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """A config file's (overrides, stages), its `base` chain applied first. `base` is relative to
    the file that names it, so a preset works from any working directory."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file not found: {path}" +
                                (f" (the base of {chain[-1]})" if chain else ""))
    real = os.path.realpath(path)
    if real in chain:
        raise ValueError("config base loop: " + " -> ".join(chain[chain.index(real):] + (real,)))
    ns = runpy.run_path(path)
    unknown = set(ns) - {"overrides", "stages", "base"} - {k for k in ns if k.startswith("_")}
    unknown = {k for k in unknown if not callable(ns[k]) and not isinstance(ns[k], type(os))}
    if unknown:
        raise KeyError(f"{path}: unexpected top-level names {sorted(unknown)}; a config file "
                       "defines `overrides`, `stages` and optionally `base`")
    overrides, by_stage = dict(ns.get("overrides", {})), dict(ns.get("stages", {}))
    known = stages()
    bad = set(by_stage) - set(known)
    if bad:
        raise KeyError(f"{path}: stages has unknown stage(s) {sorted(bad)}; one of {sorted(known)}")
    if "base" in ns:
        base = ns["base"]
        if not isinstance(base, str):
            raise ValueError(f"{path}: base must be a path string, got {base!r}")
        base = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
        base_over, base_stages = _read_file(base, chain + (real,))
        overrides = {**base_over, **overrides}
        for s, d in base_stages.items():
            by_stage[s] = {**d, **by_stage.get(s, {})}
    return overrides, by_stage


def inherited(model_dir: str) -> dict:
    """What a run started from `model_dir` keeps from the run that wrote it: the world (so the
    held-out split and knowledge base match) and the system prompt the policy was trained with."""
    path = os.path.join(os.path.dirname(os.path.normpath(model_dir)), "config.json")
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            run = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); it is the config of "
                         f"the run that wrote {model_dir}") from None
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
    stage, table = kv.get("stage", default_stage), stages()
    if stage not in table:
        raise ValueError(f"unknown stage {stage!r}; one of {sorted(table)}")
    cfg = Config(stage=stage)
    cfg.config_name = os.path.splitext(os.path.basename(config_file))[0]
    file_over, file_stages = _read_file(config_file)
    init = kv.get("init") or file_over.get("init")
    if init:
        apply(cfg, inherited(init), f"{init}/../config.json")
    apply(cfg, table[stage], f"{RUNGS} stages[{stage!r}]")
    apply(cfg, file_over, config_file)
    apply(cfg, file_stages.get(stage, {}), f"{config_file} stages[{stage!r}]")
    apply(cfg, kv)
    if not cfg.io.out_dir:
        cfg.io.out_dir = os.path.join("out", cfg.config_name, cfg.stage)
    if not cfg.world.dir:  # beside the stage dirs, so out_dir=PATH moves it too (nanosafe.world)
        cfg.world.dir = os.path.join(os.path.dirname(os.path.normpath(cfg.io.out_dir)), "worlds")
    return validate(cfg)


def save(cfg: Config, verbose: bool = True) -> None:
    """Print the resolved config and write it to out_dir/config.json, atomically (a temporary file
    renamed over it), so a crash never leaves half a config."""
    os.makedirs(cfg.io.out_dir, exist_ok=True)
    text = json.dumps(dataclasses.asdict(cfg), indent=2)
    if verbose:
        print(text)
    path = os.path.join(cfg.io.out_dir, "config.json")
    with open(path + ".tmp", "w") as f:
        f.write(text + "\n")
    os.replace(path + ".tmp", path)


# What validate() checks by key: counts (a zero divides by zero or trains nothing), coefficients,
# choices and fractions.
POSITIVE = ("optim.batch_size", "optim.micro_batch_size", "optim.steps", "rollout.prompts_per_step",
            "rollout.group_size", "rollout.max_new_tokens", "rollout.gen_batch_size", "rl.epochs",
            "rl.mini_batches", "io.log_every", "io.eval_every", "io.save_every",
            "data.max_prompt_len", "data.max_len", "world.n_sft", "world.n_rl",
            "world.n_heldout_per_family", "world.image_size", "model.hidden_size",
            "model.intermediate_size", "model.num_layers", "model.num_heads", "model.num_kv_heads",
            "model.vision_depth", "model.vision_hidden", "model.vocab_size", "io.keep_last")
NONNEGATIVE = ("io.eval_samples", "optim.max_nonfinite", "rollout.max_tool_calls", "optim.weight_decay",
               "rl.clip_lo", "rl.clip_hi", "rl.drift_coef", "rl.kl_coef", "rl.cale_beta", "rl.lagrange_lr",
               "rl.brier_coef", "data.max_pixels", "data.min_pixels")
FRACTIONS = ("optim.min_lr_frac", "optim.warmup_frac", "world.unsafe_frac", "world.refusal_frac",
             "world.verbose_frac", "world.tempting_frac", "world.guess_frac", "world.unlisted_frac",
             "rl.cale_tau", "rollout.search_min_coverage")


def validate(cfg: Config) -> Config:
    """Impossible values -> ValueError naming the config key, before a run writes anything:
    every number finite (verifier weights included), counts >= 1, coefficients >= 0, fractions in
    [0, 1], choices from their list."""
    flat = {k: getattr(owner, k.rsplit(".", 1)[-1]) for k, (owner, _) in _fields(cfg).items()}
    for key, v in flat.items():
        nums = v.items() if isinstance(v, dict) else [("", v)]
        for sub, x in nums:
            if isinstance(x, float) and not math.isfinite(x):
                raise ValueError(f"config key {key}{f'[{sub!r}]' if sub else ''}: {x} is not finite")
    for key in POSITIVE:
        if flat[key] < 1:
            raise ValueError(f"config key {key}: must be >= 1, got {flat[key]}")
    for key in NONNEGATIVE:
        if flat[key] < 0:
            raise ValueError(f"config key {key}: must be >= 0, got {flat[key]}")
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise ValueError(f"config key {key!r}: {flat[key]!r} is not one of {', '.join(allowed)}")
    for key in FRACTIONS:
        if not 0.0 <= flat[key] <= 1.0:
            raise ValueError(f"config key {key}: must be in [0, 1], got {flat[key]}")
    if flat["optim.lr"] < 0 or flat["optim.grad_clip"] <= 0:
        raise ValueError("config keys optim.lr >= 0 and optim.grad_clip > 0 are required, got "
                         f"{flat['optim.lr']} and {flat['optim.grad_clip']}")
    if flat["rollout.temperature"] <= 0 or not 0 < flat["rollout.top_p"] <= 1:
        raise ValueError("config keys rollout.temperature > 0 and rollout.top_p in (0, 1] are required, "
                         f"got {flat['rollout.temperature']} and {flat['rollout.top_p']}")
    if cfg.stage == "sft" and flat["optim.batch_size"] % flat["optim.micro_batch_size"]:
        raise ValueError(f"config key optim.batch_size ({flat['optim.batch_size']}) must be a multiple "
                         f"of optim.micro_batch_size ({flat['optim.micro_batch_size']})")
    return cfg
