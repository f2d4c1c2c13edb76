"""A starting config for your own pretrained model (0.5B-7B) and your own data.

    python train_sft.py --config configs/custom.py init=<hf model dir> \\
        data.train=sft.jsonl data.heldout=sft_heldout.jsonl
    python train_grpo.py --config configs/custom.py stage=m3b init=out/custom/sft/model \\
        data.train=rl.jsonl data.heldout=heldout.jsonl

The tiny defaults train a 1M-parameter model from scratch (SFT at 3e-3, RL at 1e-4); a
pretrained model needs far smaller steps: SFT 1e-5 with warmup and a cosine decay, RL 1e-6
constant (SafeWork-R1's released RL settings, as configs/qwen2_5_0_5b.py), and a small KL
anchor to the starting policy. Copy this file and set `base = "custom.py"` (relative to your
copy) to keep these; `verifiers.rewards` / `verifiers.recipes` add your reward functions and
labels (README, "Your own data and rewards"); stage=search also wants your passages,
rollout.kb=<JSONL>. Check what fits your GPUs first:
`python -m nanosafe.memory --config configs/custom.py init=<hf model dir>`.
"""
overrides = {
    "model.dtype": "float32",  # fp32 master weights; FSDP computes in bf16 on GPUs
    "model.gradient_checkpointing": True,
    "data.max_prompt_len": 1024,
    "data.max_len": 4096,
    "data.min_pixels": 256 * 28 * 28,  # Qwen2.5-VL: 256..1280 image tokens per image (text models ignore it)
    "data.max_pixels": 1280 * 28 * 28,
    # RL: lr 1e-6 after a 3 % warmup, then constant; CPGD with clip 0.2 and policy drift 1e-3
    "optim.lr": 1e-6,
    "optim.warmup_frac": 0.03,
    "optim.min_lr_frac": 1.0,
    "optim.weight_decay": 0.01,
    "rl.algo": "cpgd",
    "rl.clip_lo": 0.2,
    "rl.clip_hi": 0.2,
    "rl.drift_coef": 1e-3,
    "rl.agg": "seq-mean-token-mean",
    "rl.kl_coef": 1e-3,  # k3 KL to the starting policy (a frozen copy of it); 0 drops the copy
    "rl.epochs": 1,
    "rl.mini_batches": 1,
    "rollout.group_size": 8,
    "rollout.prompts_per_step": 32,  # must divide by GPUs x rl.mini_batches
    "rollout.max_new_tokens": 1024,
    "rollout.gen_batch_size": 64,  # rows per generate call, per GPU
    "optim.micro_batch_size": 8,  # sequences per forward/backward, per GPU
    "optim.steps": 200,
    "io.eval_every": 50,
    "io.save_every": 25,
    "io.log_every": 1,
}
stages = {
    # SFT: 1e-5, 3 % warmup, cosine to 10 %; a few epochs of your data (steps x batch_size)
    "sft": {"optim.lr": 1e-5, "optim.warmup_frac": 0.03, "optim.min_lr_frac": 0.1, "optim.batch_size": 64,
            "optim.micro_batch_size": 2, "optim.steps": 500,
            "io.eval_every": 100, "io.save_every": 100, "io.log_every": 10},
}
