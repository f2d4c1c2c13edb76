"""The RL step timed phase by phase, beside TRL's GRPOTrainer on the same work (a benchmark, not a test).

    python -m nanosafe.stepbench --out out/bench/h128.json                 # hidden 128, ffn 384
    python -m nanosafe.stepbench --out out/bench/h256.json --hidden 256    # hidden 256, ffn 768
    python -m nanosafe.stepbench --out x.json --reps 1 --no-trl model.num_layers=1   # any config key

The work: a random-init text Qwen2 (4 layers, 4 heads / 2 kv, vocab 512; its BPE tokenizer trained
on a small tiny world), 8 prompts "What is A + B?" x 8 samples, <= 64 new tokens, T = 1, top-p 1,
fp32, no KL, the m3a rung's reward (format + the arithmetic verifier), one optimiser step of one
micro-batch, no search tool. Ours is train_grpo.py's step through the same library calls
(rollout.generate, rlstep.score, rlstep.update): on this text model rollouts go through
nanosafe/decode.py's lean loop and the update through rlbatch.pack_shared's layout (a prompt
once per 8 samples), the defaults; `rl.old_logp=auto` skips the old log-prob pass. With `trl`
installed (pip install .[bench]), TRL's GRPOTrainer runs on a copy of the same weights,
tokenizer, prompts, reward and sampling (num_generations=8, max_completion_length=64, beta=0,
fp32, no gradient checkpointing, one step per measurement). The two alternate (which goes first flips every rep), every rep starts both from
the same weights, a first rep warms up uncounted, and the table gives medians and ours / TRL."""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import statistics
import tempfile
import time

import torch

from nanosafe import config, model, optim, rlstep, rollout, world

SHAPE = ["model.vision=false", "model.vocab_size=512", "model.num_layers=4", "model.num_heads=4",
         "model.num_kv_heads=2", "rollout.prompts_per_step=8", "rollout.group_size=8", "rollout.max_new_tokens=64",
         "rollout.temperature=1.0", "rollout.top_p=1.0", "rollout.max_tool_calls=0", "rl.kl_coef=0",
         "rl.mini_batches=1", "rl.epochs=1", "optim.micro_batch_size=64", "optim.batch_size=64"]


def setup(args):
    """(cfg, policy bundle, the prompts as samples) for the benchmark's shape."""
    cfg = config.parse(["stage=m3a", *SHAPE, f"model.hidden_size={args.hidden}",
                        f"model.intermediate_size={3 * args.hidden}", *args.overrides])
    wcfg = config.WorldConfig(n_sft=1000, n_rl=8, n_heldout_per_family=1)  # text for the tokenizer only
    cfg.seed = args.seed
    bundle = model.make(cfg, lambda: world.corpus(world.build(wcfg, tempfile.mkdtemp(prefix="stepbench-"))))
    rng = random.Random(args.seed)
    prompts = [dict(id=f"bench-{i}", prompt=f"What is {a} + {b}?", label="general_rule", answer=str(a + b),
                    images=[], meta={}, _where=f"stepbench:{i}")
               for i, (a, b) in enumerate((rng.randint(10, 99), rng.randint(10, 99))
                                          for _ in range(cfg.rollout.prompts_per_step))]
    return cfg, bundle, prompts


def our_step(run, cfg, prompts) -> dict:
    """One RL step as train_grpo.py runs it -> seconds per phase and the tokens generated."""
    clock = [time.time()]
    outs = rollout.generate(run.policy, prompts, cfg.data, cfg.rollout, n=cfg.rollout.group_size)
    clock.append(time.time())
    _, _, lengths, adv, _ = rlstep.score(run, outs, cfg.rollout.group_size)
    clock.append(time.time())
    rlstep.update(run, outs, adv.float(), cfg, clock)
    clock.append(time.time())
    phases = dict(zip(("generate", "reward", "logprobs", "update"), (b - a for a, b in zip(clock, clock[1:]))))
    return {**phases, "step": clock[-1] - clock[0], "tokens": float(lengths.sum())}


def trl_trainer(cfg, bundle, prompts, steps: int, hooks):
    """TRL's GRPOTrainer on a copy of the policy, its steps timed (generate and whole step) through
    a callback that also runs `hooks.before(i)` / `hooks.after(i)` outside the timed span."""
    try:
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as e:
        raise SystemExit(f"the TRL comparison needs trl (pip install .[bench]): {e}; --no-trl runs ours alone")
    import verifiers
    r = cfg.rollout
    trl_model, times = copy.deepcopy(bundle.model), []
    trl_model.set_attn_implementation("sdpa")  # Hugging Face's own, not nanosafe/attention.py's stand-in
    generate = trl_model.generate

    def timed_generate(*a, **kw):
        t = time.time()
        out = generate(*a, **kw)
        times[-1]["generate"] = time.time() - t
        return out
    trl_model.generate = timed_generate

    def reward(completions, completion_ids, idx, **kw):  # our scorer, on TRL's completions
        times[-1]["tokens"] = float(sum(len(c) for c in completion_ids))
        return verifiers.score_batch([samples[i] for i in idx], [c[0]["content"] for c in completions])[0]

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            hooks.before(state.global_step, trl_model)
            times.append({"start": time.time()})

        def on_step_end(self, a, state, control, **kw):
            times[-1]["step"] = time.time() - times[-1].pop("start")
            hooks.after(state.global_step - 1, trl_model)

    samples = prompts  # `prompts` is TRL's name for the reward function's first argument
    system = [{"role": "system", "content": cfg.data.system_prompt}] if cfg.data.system_prompt else []
    data = Dataset.from_list([{"prompt": system + [{"role": "user", "content": s["prompt"]}], "idx": i}
                              for i, s in enumerate(prompts)])
    o = cfg.optim
    args = GRPOConfig(output_dir=tempfile.mkdtemp(prefix="stepbench-trl-"),
                      per_device_train_batch_size=len(prompts) * r.group_size, gradient_accumulation_steps=1,
                      num_generations=r.group_size, max_completion_length=r.max_new_tokens,
                      temperature=r.temperature, top_p=r.top_p, top_k=0, beta=0.0, learning_rate=o.lr,
                      lr_scheduler_type="constant", weight_decay=o.weight_decay, adam_beta1=o.beta1,
                      adam_beta2=o.beta2, max_grad_norm=o.grad_clip, max_steps=steps, bf16=False,
                      gradient_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no",
                      logging_steps=10 ** 6, disable_tqdm=True, seed=cfg.seed)
    trainer = GRPOTrainer(model=trl_model, reward_funcs=[reward], args=args, train_dataset=data,
                          processing_class=bundle.tokenizer, callbacks=[Clock()])
    return trainer, times


class Interleave:
    """Ours before TRL's step on odd reps and after it on even ones, both from the same weights."""
    def __init__(self, run, cfg, prompts):
        self.run, self.cfg, self.prompts, self.ours = run, cfg, prompts, []
        self.init = copy.deepcopy(run.policy.model.state_dict())

    def ours_step(self):
        self.run.policy.model.load_state_dict(self.init)
        self.ours.append(our_step(self.run, self.cfg, self.prompts))

    def before(self, i, trl_model):
        trl_model.load_state_dict(self.init)
        if i % 2:
            self.ours_step()

    def after(self, i, trl_model):
        if not i % 2:
            self.ours_step()


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def table(ours: list[dict], trl: list[dict] | None) -> tuple[str, dict]:
    """The printed table and the medians (rows: phases, tokens, tokens/s; columns: ours, TRL)."""
    def stats(rows):
        m = {k: median(rows, k) for k in rows[0]}
        m["tokens_per_s_generate"] = statistics.median(r["tokens"] / r["generate"] for r in rows)
        m["tokens_per_s_step"] = statistics.median(r["tokens"] / r["step"] for r in rows)
        return m
    med = {"ours": stats(ours), **({"trl": stats(trl)} if trl else {})}
    if trl:
        med["trl"]["rest"] = median([{"r": t["step"] - t["generate"]} for t in trl], "r")
        med["ratio_step"] = med["ours"]["step"] / med["trl"]["step"]
        med["ratio_per_token"] = med["trl"]["tokens_per_s_step"] / med["ours"]["tokens_per_s_step"]
    rows = [("generate", "generate"), ("reward + advantages", "reward"), ("old log-probs", "logprobs"),
            ("update", "update"), ("TRL: all after generate", "rest"), ("step (s)", "step"),
            ("tokens per step", "tokens"), ("tokens/s, generate", "tokens_per_s_generate"),
            ("tokens/s, step", "tokens_per_s_step")]
    lines = [f"{'median over ' + str(len(ours)) + ' reps':<26}{'ours':>10}{'TRL' if trl else '':>10}"]
    for name, key in rows:
        cells = [f"{m[key]:10.3f}" if key in m else f"{'-':>10}" for m in (med["ours"], med.get("trl"))[:1 + bool(trl)]]
        if any(c.strip() != "-" for c in cells):
            lines.append(f"{name:<26}" + "".join(cells))
    if trl:
        lines.append(f"ours / TRL: step time {med['ratio_step']:.2f}, "
                     f"time per generated token {med['ratio_per_token']:.2f}")
    return "\n".join(lines), med


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON of every rep's times and the medians")
    p.add_argument("--hidden", type=int, default=128, help="hidden size; the ffn is 3x (128 -> 384, 256 -> 768)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-trl", action="store_true", help="ours alone, even when trl is installed")
    p.add_argument("overrides", nargs="*", help="config key=value, after the benchmark's shape")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, bundle, prompts = setup(args)
    opt, sched = optim.make(bundle.model, cfg.optim, 10 ** 6)
    run = rlstep.Run(bundle, None, opt, sched, **rlstep.recipe(cfg, None, torch.device("cpu")))
    bench, trl = Interleave(run, cfg, prompts), None
    if not args.no_trl:
        trainer, trl = trl_trainer(cfg, bundle, prompts, args.reps + 1, bench)
        trainer.train()
        trl = trl[1:]
    else:
        for _ in range(args.reps + 1):
            bench.ours_step()
    text, med = table(bench.ours[1:], trl)
    head = (f"hidden {args.hidden}, ffn {3 * args.hidden}, {cfg.model.num_layers} layers, "
            f"vocab {len(bundle.tokenizer)}; {len(prompts)} prompts x {cfg.rollout.group_size}, "
            f"<= {cfg.rollout.max_new_tokens} new tokens; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(head + "\n" + text)
    versions = {"torch": torch.__version__}
    for name in ("transformers", "trl"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"shape": head, "args": vars(args), "versions": versions, "machine": platform.platform(),
                   "cpus": os.cpu_count(), "ours": bench.ours, "trl": trl, "medians": med}, f, indent=2)


if __name__ == "__main__":
    main()
