"""The rung table: what each stage of the ladder changes (DESIGN §1). A stage is data + reward
recipe + switches; every script applies this table before the --config file, so a preset
(configs/qwen2_5_*.py) refines a rung with its own `stages` dict and never has to restate it.

Resolution order (nanosafe/config.py): dataclass defaults -> stages[stage] here -> the config
file's `overrides` -> its `stages[stage]` -> key=value arguments. Each rung below is a diff from
`_RL`, the settings every RL rung shares; why each value is what it is, is said beside it (the
experiments behind them: docs/LOG.md).
"""

# Every RL rung. A small constant learning rate: at SFT's 3e-3 a single policy-gradient step
# wrecks the tiny model, and even 3e-4 erases arithmetic within 40 steps (DESIGN §6).
# The knowledge base stays empty ("none") until rung 4 brings it in (DESIGN §1): with it from 2a
# on, the early rungs teach the lookups and rung 4 has nothing left to fix. The tool itself stays:
# without it a search runs on into a result the policy writes itself, which fails to parse.
_RL = {"optim.lr": 1e-4, "optim.warmup_frac": 0.0, "optim.min_lr_frac": 1.0, "optim.steps": 40,
       "optim.micro_batch_size": 32, "rl.mini_batches": 2, "io.eval_every": 1000, "io.save_every": 10,
       "io.log_every": 1, "rollout.kb": "none"}

# Fact lookups wait for rung 4's knowledge base: without it every RL-split lookup is unanswerable
# (its countries are new), so the earlier rungs could only learn how to be wrong on them, and
# did: 2a trained searching away on one seed (docs/LOG.md). "-knowledge" = every label but that.
stages = {
    # rung 1: the dataclass defaults are the tiny world's SFT
    "sft": {},
    # rung 2a: capability prompts only
    "m3a": {**_RL, "data.labels": "general_rule", "optim.steps": 20},
    # rung 2b: every task family, from 2a's checkpoint. 16 prompts a step (~3 look-alikes): with 8,
    # two of three seeds never learned to help them (KL anchors did not help either: docs/LOG.md)
    "m3b": {**_RL, "data.labels": "-knowledge", "optim.steps": 150, "rollout.prompts_per_step": 16},
    # rung 3: + the conditional length advantage (CALE, DESIGN §4). beta 0.3: at 0.2 two draws of
    # four shortened by only 24-30 % and one lost 0.03 safety; the KL anchor keeps the carried
    # digits (without it one draw's capability fell 0.95 -> 0.83 in 50 steps; at 0.05 one seed of
    # three lost 3 held-out sums, at 0.1 none lost more than one, answers as short: docs/LOG.md)
    "cale": {**_RL, "data.labels": "-knowledge", "rl.cale_beta": 0.3, "optim.steps": 50, "rl.kl_coef": 0.1},
    # rung 4: + the knowledge base, two searches per response and the false-certain constraint.
    # Every family stays in the mix (fact prompts alone let safety drift); 32 prompts a step give
    # ~5 fact prompts; the KL anchor keeps situational safety from drifting; lambda's step of 0.2
    # lets the policy find searching before it learns to hedge. rl.confidence_adv stays off: it makes
    # the confidence read the search result on two seeds of three, but cost knowledge or format on
    # one of them in every form tried (docs/LOG.md).
    "search": {**_RL, "data.labels": "", "rollout.kb": "", "optim.steps": 80,
               "rollout.prompts_per_step": 32, "rollout.max_tool_calls": 2, "rl.fcr_penalty": True,
               "rl.fcr_target": 0.02, "rl.lagrange_lr": 0.2, "rl.kl_coef": 0.05},
}
