"""A starting config for your own pretrained model (0.5B-7B) and your own data.

    python train_sft.py --config configs/custom.py init=<hf model dir> \\
        data.train=sft.jsonl data.heldout=sft_heldout.jsonl
    python train_grpo.py --config configs/custom.py stage=m3b init=out/custom/sft/model \\
        data.train=rl.jsonl data.heldout=heldout.jsonl

The tiny defaults train a 1M-parameter model from scratch (SFT at 3e-3, RL at 1e-4); a
pretrained model needs far smaller steps: SFT 1e-5 with warmup and a cosine decay, RL 1e-6
constant (SafeWork-R1's released RL settings: this file is a diff from configs/qwen2_5_0_5b.py,
which spells them out), and a small KL anchor to the starting policy. Copy this file and set `base = "custom.py"` (relative to your
copy) to keep these; `verifiers.rewards` / `verifiers.recipes` add your reward functions and
labels (README, "Your own data and rewards"); stage=search also wants your passages,
rollout.kb=<JSONL>. Check what fits your GPUs first:
`python -m nanosafe.memory --config configs/custom.py init=<hf model dir>`.
"""
base = "qwen2_5_0_5b.py"
overrides = {
    "model.init": "",  # yours: init=<hf model dir>
    "data.min_pixels": 256 * 28 * 28,  # Qwen2.5-VL: 256..1280 image tokens per image (text models ignore it)
    "data.max_pixels": 1280 * 28 * 28,
    "rl.kl_coef": 1e-3,  # k3 KL to the starting policy (a frozen copy of it); 0 drops the copy
    # a smaller step than the preset's, to fit one node while you try it
    "rollout.prompts_per_step": 32,  # must divide by GPUs x rl.mini_batches
    "rollout.max_new_tokens": 1024,
    "rollout.gen_batch_size": 64,  # rows per generate call, per GPU
    "optim.micro_batch_size": 8,  # sequences per forward/backward, per GPU
    "optim.steps": 200,
}
stages = {
    # SFT: 1e-5, 3 % warmup, cosine to 10 % (the preset's); a few epochs of your data (steps x batch_size)
    "sft": {"optim.batch_size": 64, "optim.steps": 500},
}
