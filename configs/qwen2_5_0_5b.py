"""Qwen2.5-0.5B-Instruct, text only: SafeLadder's released RL settings at the smallest real scale.

    torchrun --nproc_per_node 1 train_sft.py --config configs/qwen2_5_0_5b.py data.train=sft.jsonl \\
        data.heldout=held.jsonl
    torchrun --nproc_per_node 8 train_grpo.py --config configs/qwen2_5_0_5b.py stage=m3a \\
        init=out/qwen2_5_0_5b/sft/model data.train=rl.jsonl data.heldout=held.jsonl

A text model needs text-only data: the tiny world's situational prompts carry images. The RL
settings are SafeWork-R1's released ones (DESIGN §4) and are spelled out even where they equal
the defaults, so tuning the tiny world's defaults never moves a preset. One GPU is enough
(`python -m nanosafe.memory`); prompts_per_step must divide by GPUs x rl.mini_batches.
"""
overrides = {
    "model.init": "Qwen/Qwen2.5-0.5B-Instruct",
    "model.dtype": "float32",  # fp32 master weights; FSDP computes in bf16 (dist.mixed_precision)
    "model.gradient_checkpointing": True,
    "data.max_prompt_len": 1024,
    "data.max_len": 4096,
    # released RL settings: G = 8, lr 1e-6 with 3 % warmup then constant, weight decay 0.01,
    # CPGD with clip 0.2 and policy drift 1e-3, seq-mean-token-mean aggregation
    "rollout.group_size": 8,
    "optim.lr": 1e-6,
    "optim.warmup_frac": 0.03,
    "optim.min_lr_frac": 1.0,
    "optim.weight_decay": 0.01,
    "rl.algo": "cpgd",
    "rl.clip_lo": 0.2,
    "rl.clip_hi": 0.2,
    "rl.drift_coef": 1e-3,
    "rl.agg": "seq-mean-token-mean",
    "rl.kl_coef": 0.0,
    "model.freeze_vision": True,
    # scale: 64 prompts x 8 samples per step, one on-policy update each, 2k-token answers
    "rollout.prompts_per_step": 64,
    "rl.epochs": 1,
    "rl.mini_batches": 1,
    "rollout.max_new_tokens": 2048,
    "rollout.gen_batch_size": 128,  # rows per generate call, per GPU
    "optim.micro_batch_size": 16,  # sequences per forward/backward, per GPU
    "optim.steps": 300,
    "io.eval_every": 50,
    "io.save_every": 25,
    "io.log_every": 1,
}
stages = {
    # SFT's loss builds [T, vocabulary] logits (~14 bytes per entry with its fp32 copies and
    # gradient, ~17 GB for 2 x 4k tokens), hence the small micro-batch
    "sft": {"optim.lr": 1e-5, "optim.min_lr_frac": 0.1, "optim.batch_size": 128, "optim.micro_batch_size": 2,
            "optim.steps": 1000, "io.eval_every": 100, "io.save_every": 100, "io.log_every": 10},
    # a pretrained model answers fact lookups from memory, so they train from 2a on (the rung
    # table holds them back for the tiny world, whose RL-split facts need the knowledge base)
    "m3a": {"data.labels": "general_rule,knowledge"},
    "m3b": {"data.labels": ""},
    "cale": {"data.labels": ""},
}
