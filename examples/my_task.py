"""The README's worked example (section "Your own data and rewards"): your prompts under a new
label, scored by your own reward functions, on the tiny model so that it runs on a CPU in a few
minutes. The tiny starting policy is a short SFT on the tiny world, so the numbers mean nothing.
For a real model, keep the two `verifiers.*` entries and `data.*` in a config of your own whose
`base` is configs/custom.py (a pretrained model's learning rates), and give init=<your model dir>.

Paths in `verifiers.rewards` and `data.*` are relative to the directory you run from.
"""
overrides = {
    # name -> "path/to/file.py:function" or "module:function" (DESIGN §5)
    "verifiers.rewards": {"answer_match": "examples/my_rewards.py:answer_match",
                          "concise": "examples/my_rewards.py:concise"},
    # a recipe for a new label, and a term added to a built-in label's recipe (weights)
    "verifiers.recipes": {"arith": {"answer_match": 1.0, "concise": 0.25},
                          "normal": {"normal": 1.0, "concise": 0.25}},
    # a smaller tiny world and model, short answers: minutes, not hours
    "world.n_sft": 600, "world.n_rl": 60, "world.n_heldout_per_family": 2,
    "model.hidden_size": 64, "model.intermediate_size": 128, "model.num_layers": 2,
    "rollout.max_new_tokens": 64, "io.eval_samples": 2,
}
stages = {
    "sft": {"optim.steps": 30, "optim.batch_size": 16, "optim.micro_batch_size": 16},
    "m3b": {"data.train": "out/my_task/train.jsonl", "data.heldout": "out/my_task/heldout.jsonl",
            "optim.steps": 3, "rollout.prompts_per_step": 4, "rollout.group_size": 4},
}
