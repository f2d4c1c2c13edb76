"""Qwen2.5-VL-7B-Instruct on one node of 8 x 80 GB: SafeWork-R1's base model and RL settings.

    torchrun --nproc_per_node 8 train_sft.py --config configs/qwen2_5_vl_7b.py
    torchrun --nproc_per_node 8 train_grpo.py --config configs/qwen2_5_vl_7b.py stage=m3a \\
        init=out/qwen2_5_vl_7b/sft/model

Without data.train / data.heldout it runs on the tiny world's prompts (images included), which
makes a cheap end-to-end check of a node; bring your own JSONL (DESIGN §3) for real training.
The vision tower stays frozen. Per-GPU memory: `python -m nanosafe.memory`.
"""
base = "qwen2_5_0_5b.py"  # the released RL settings
overrides = {
    "model.init": "Qwen/Qwen2.5-VL-7B-Instruct",
    "data.max_prompt_len": 2048,  # image tokens included
    # Qwen's suggested bounds: 256-1280 image tokens (28x28 pixels each) whatever the photo's size
    "data.min_pixels": 256 * 28 * 28,
    "data.max_pixels": 1280 * 28 * 28,
    "data.max_len": 6144,
    "rollout.max_new_tokens": 4096,
    "rollout.gen_batch_size": 64,
    "optim.micro_batch_size": 4,
}
stages = {"sft": {"optim.micro_batch_size": 1}}  # [T, vocabulary] logits: ~13 GB at 6k tokens
