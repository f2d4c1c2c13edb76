"""Qwen2.5-VL-3B-Instruct: the 7B preset on a smaller model (8 GPUs; see nanosafe.memory for fewer).

    torchrun --nproc_per_node 8 train_grpo.py --config configs/qwen2_5_vl_3b.py stage=m3a \\
        init=out/qwen2_5_vl_3b/sft/model
"""
base = "qwen2_5_vl_7b.py"
overrides = {
    "model.init": "Qwen/Qwen2.5-VL-3B-Instruct",
    "rollout.gen_batch_size": 128,
    "optim.micro_batch_size": 8,
}
