"""Qwen2.5-VL-72B-Instruct on one node of 8 x 80 GB, with the states in host memory.

    torchrun --nproc_per_node 8 train_grpo.py --config configs/qwen2_5_vl_72b.py stage=m3a \\
        init=out/qwen2_5_vl_72b/sft/model

fp32 master weights, gradients and AdamW moments of 73B parameters are about 1.1 TiB: they live in
host memory (dist.cpu_offload; the optimiser step runs on the CPU); with rank 0's consolidated
fp32 copy for the final export the node needs about 1.4 TiB of RAM (a DGX H100 has 2 TiB). The bf16 policy (145 GB) does not fit one GPU, so rollouts keep the layers sharded
and gather them layer by layer as they run (dist.rollout_unshard=false; every rank runs in
lockstep) -- correct but slow: every generated token all-gathers the whole model. A serving engine
with tensor parallelism (vLLM, SGLang) is the usual answer at this size; nanosafe stays with
Hugging Face generate.
"""
base = "qwen2_5_vl_7b.py"
overrides = {
    "model.init": "Qwen/Qwen2.5-VL-72B-Instruct",
    "dist.cpu_offload": True,
    "dist.rollout_unshard": False,
    "rollout.prompts_per_step": 32,
    "rollout.gen_batch_size": 16,
    "optim.micro_batch_size": 1,
}
