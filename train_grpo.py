"""Rungs 2-4 of SafeLadder: one RL loop, configured per stage.

    python train_grpo.py stage=m3a init=out/tiny/sft/model     # 2a: capability + knowledge prompts
    python train_grpo.py stage=m3b init=out/tiny/m3a/model     # 2b: every task family
    python train_grpo.py stage=cale init=out/tiny/m3b/model    # 3: + conditional length advantage
    python train_grpo.py stage=search init=out/tiny/cale/model # 4: + the knowledge base, confidence

One step, one line each in `main`:
  1. generate    `prompts_per_step` prompts (mixed by label as the stage says) -> `group_size`
                 responses each, the search tool in the loop (nanosafe/rollout.py)
  2. score       format + the label's verifier recipe (verifiers.score_batch); on rung 4 fact
                 lookups get R = y - lam * 1{wrong and p >= c*} - mu * (p - y)^2 + format instead
  3. advantages  per prompt group, (+ CALE among the correct / safe on rung 3) (nanosafe/rl.py, DESIGN §4);
                 with rl.confidence_adv the tokens that write a stated confidence get their own, from the
                 reward's confidence part among the step's answers with the same outcome, and the
                 other tokens that of the rest of the reward (rl.confidence_advantages)
  4. update      old (and reference) log-probs at the sampling temperature, then `rl.epochs`
                 passes of `rl.mini_batches` optimiser steps of rl.policy_loss (CPGD by default)
  5. lambda      rung 4: dual ascent on lam against the batch's false-certain rate
  6. log         reward per label and verifier, clip fraction, KL, entropy, length, truncation,
                 grad norm, time per phase; a held-out eval every `io.eval_every` steps; checkpoint

Departures from the textbook loop, on purpose:
- The loss of an optimiser step is normalised by the counts of the whole step (rl.step_counts),
  so the gradient does not depend on the micro-batch size (nanosafe/rlbatch.py splits the step).
- Log-probs come from the last hidden states and the LM head through kernels.logprob, on
  response positions only ([N, V] is never built on the Triton / torch paths).
- The search tool is in every rung's loop, but its knowledge base (`rollout.kb`) is empty before
  rung 4, where DESIGN §1 brings it in; an earlier rung would otherwise teach the lookups.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import sys
import time
from collections import defaultdict

import torch

import verifiers
from nanosafe import checkpoint, config, data, dist, log, model, nonfinite, optim, rl, rollout, rlstep, runs, search, world
from nanosafe.rlstep import Run
from nanosafe.evaluate import evaluate
from nanosafe.judges import load_judges


def main(argv: list[str]) -> None:
    cfg = config.parse(argv, default_stage="m3a")
    run, G = setup(cfg), cfg.rollout.group_size
    step, lam = run.step, run.lam
    while step < cfg.optim.steps:
        clock = [time.time()]  # phase boundaries, for time/* metrics
        order = data.batch_order(len(run.prompts), step, cfg.rollout.prompts_per_step, cfg.seed)
        # this rank's prompts (its share of each mini-batch); their groups, hence advantages, stay here
        prompts = dist.local_slice([run.prompts[i] for i in order], parts=cfg.rl.mini_batches)
        outs = rollout.generate(run.policy, prompts, cfg.data, cfg.rollout, n=G, tool=run.tool)  # 1. generate
        clock.append(time.time())
        # 2. score, 3. advantages: rewards, verifier metrics, lengths, advantages [B * G] each
        rewards, vmetrics, lengths, adv, spans = rlstep.score(
            run, outs, G, lam=lam if cfg.rl.fcr_penalty else None, mu=cfg.rl.brier_coef if cfg.rl.confidence_adv else None)
        clock.append(time.time())
        run.guard.check(step + 1, reward=rewards, adv=adv)  # a NaN reward makes its group's adv NaN
        stats = rlstep.update(run, outs, adv.float(), cfg, clock, spans)  # 4. update (skipped if the guard marked the step)
        clock.append(time.time())
        step += 1
        metrics, rows = step_metrics(outs, vmetrics, rewards, adv, lengths, G, clock)
        metrics.update(stats, lr=run.sched.get_last_lr()[0])
        if cfg.rl.fcr_penalty:  # 5. lambda
            metrics["lam"] = lam
            if "fcr" in metrics:  # a step without fact prompts says nothing about the false-certain rate
                lam = rl.lagrange_update(lam, metrics["fcr"], cfg.rl.fcr_target, cfg.rl.lagrange_lr)
        report(run, cfg, step, metrics, rows, lam)  # 6. log (+ eval, checkpoint)
    run.logger.close()
    model.export(run.policy, os.path.join(cfg.io.out_dir, "model"))
    if dist.is_main():
        print(f"done: {step} steps; exported {cfg.io.out_dir}/model")
    run.out.close()
    dist.close()


def step_metrics(outs, vmetrics, rewards, adv, lengths, G: int, clock: list[float]) -> tuple[dict, list[dict]]:
    """Every rank's responses -> the step's metrics (so they and lam cover the whole step, not
    this rank's share) and one row per response for samples.jsonl."""
    outs, vmetrics, rewards, adv, lengths = zip(*dist.gather_objects(
        [(dataclasses.replace(o, prompt=None), *rest)  # the encoded prompt (images) stays home
         for o, *rest in zip(outs, vmetrics, rewards.tolist(), adv.tolist(), lengths.tolist())]))
    rewards, lengths = torch.tensor(rewards), torch.tensor(lengths)  # [N] each, N = all responses
    t0, t_gen, t_score, t_logp, t_update = clock
    metrics = {"reward": float(rewards.mean()), "response_len": float(lengths.mean()),
               "truncated": sum(o.truncated for o in outs) / len(outs),
               "tool_calls": sum(o.tool_calls for o in outs) / len(outs),
               "bad_vision_tokens": sum(o.bad_tokens for o in outs),
               "zero_variance_groups": rl.zero_variance_groups(rewards, G),
               "time/generate": t_gen - t0, "time/reward": t_score - t_gen, "time/logprobs": t_logp - t_score,
               "time/update": t_update - t_logp,
               "tokens_per_s": float(lengths.sum()) / max(t_gen - t0, 1e-9)}
    by_key = defaultdict(list)  # reward/<label> and verifier/<label>/<metric>
    for o, r, m in zip(outs, rewards.tolist(), vmetrics):
        by_key[f"reward/{o.sample['label']}"].append(r)
        for key, v in m.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and key != "confidence":
                by_key[f"verifier/{o.sample['label']}/{key}"].append(float(v))
    metrics.update({k: sum(v) / len(v) for k, v in by_key.items()})
    fc = [m["false_certain"] for m in vmetrics if "false_certain" in m]
    if fc:
        metrics["fcr"] = sum(fc) / len(fc)
    rows = [{"id": o.sample["id"], "prompt": o.sample["prompt"], "text": o.text, "reward": r, "adv": a}
            for o, r, a in zip(outs, rewards.tolist(), adv)]
    return metrics, rows


def report(run: Run, cfg, step: int, metrics: dict, rows: list[dict], lam: float) -> None:
    """Held-out eval, metrics.jsonl and the progress bar, samples.jsonl, checkpoint: each when due."""
    last = step == cfg.optim.steps
    if step % cfg.io.eval_every == 0 or last:
        res = evaluate(run.policy, run.held, cfg, tool=run.tool, judges=run.judges, n_sampled=0)
        metrics.update({f"eval/{k}": v for k, v in res["summary"].items() if v is not None})
        run.logger.print(f"step {step}: " + " ".join(f"{k} {v:.3f}" for k, v in res["summary"].items()
                                                     if isinstance(v, float)))
    if step % cfg.io.log_every == 0 or last:
        run.logger.log(step, metrics, show=("reward", "approx_kl", "kl_ref", "clip_frac", "response_len"))
    if cfg.io.log_rollouts:
        run.logger.samples(step, rows)
    run.logger.advance()
    if step % cfg.io.save_every == 0 or last:
        checkpoint.save(run.ckpt_dir, run.policy.model, run.opt, run.sched, step, {"lam": lam},
                        keep_last=cfg.io.keep_last)


def setup(cfg) -> Run:
    """Data, policy (+ reference), tool, judges, optimiser, and the resumed step and lam."""
    if cfg.stage == "sft":
        raise SystemExit("train_grpo.py runs the RL stages (stage=m3a|m3b|cale|search); SFT is train_sft.py")
    if not (cfg.init or cfg.model.init):
        raise SystemExit("RL needs a starting policy: init=<hf model dir> (e.g. out/tiny/sft/model)")
    device = dist.init(cfg.dist)
    out = runs.start(cfg)  # lock out_dir, check a resume's settings; writes nothing else
    torch.manual_seed(cfg.seed + dist.rank())  # each rank samples its own stream
    labels = verifiers.label_fields(cfg.verifiers)  # loads and checks the config's reward functions
    use_tool = cfg.rollout.max_tool_calls > 0
    # the tiny world only when something reads it: its prompts, or its passages for the search tool
    world_needed = not (cfg.data.train and cfg.data.heldout) or (use_tool and not cfg.rollout.kb)
    paths = dist.main_first(world.build, cfg.world, cfg.world.dir) if world_needed else {}
    prompts, dropped = data.filter_labels(data.read_jsonl(cfg.data.train or paths["rl"], labels=labels),
                                          cfg.data.labels, labels)
    if dropped and dist.is_main():
        print(f"stage {cfg.stage}: kept {len(prompts)} prompts with labels {cfg.data.labels}; "
              f"left out by label: {dropped}")
    held = data.read_jsonl(cfg.data.heldout or paths["heldout"], labels=labels)
    tool = search.SearchTool.from_config(cfg.rollout, paths.get("kb")) if use_tool else None
    policy = model.make(cfg)
    ref = None
    if cfg.rl.kl_coef > 0:  # copied before sharding, then sharded like the policy
        ref = model.Bundle(dist.shard(copy.deepcopy(policy.model).eval().requires_grad_(False), cfg.dist),
                           policy.tokenizer, policy.image_processor)
    policy.model = dist.shard(policy.model, cfg.dist)
    v = cfg.verifiers  # neural judges on the policy's device (colocated)
    judges = load_judges(v.judges, device, v.judge_prompt, v.rm_centre, v.rm_scale) if v.judges else None
    out.commit()  # everything read and checked: the run starts, config.json is written (io.overwrite clears here)
    opt, sched = optim.make(policy.model, cfg.optim, cfg.optim.steps * cfg.rl.epochs * cfg.rl.mini_batches)
    ckpt_dir, step, lam = os.path.join(cfg.io.out_dir, "ckpt"), 0, cfg.rl.lagrange_init
    if checkpoint.exists(ckpt_dir):
        step, extra = checkpoint.load(ckpt_dir, policy.model, opt, sched)
        lam = extra.get("lam", lam)
        if dist.is_main():
            print(f"resumed from {ckpt_dir} at step {step}")
    logger = log.Logger(cfg.io.out_dir, cfg.optim.steps, step, enabled=dist.is_main(), progress=cfg.io.progress,
                        report_to=cfg.io.report_to, run_config=dataclasses.asdict(cfg))
    return Run(policy, ref, opt, sched, **rlstep.recipe(cfg, judges, device), prompts=prompts, held=held, tool=tool,
               judges=judges, logger=logger, ckpt_dir=ckpt_dir, step=step, lam=lam, out=out,
               guard=nonfinite.Guard(cfg.optim.max_nonfinite, logger.print))


if __name__ == "__main__":
    main(sys.argv[1:])
