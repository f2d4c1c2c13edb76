"""Rungs 2-4 of SafeLadder: one RL loop, configured per stage.

    python train_grpo.py stage=m3a init=out/tiny/sft/model     # 2a: capability + knowledge prompts
    python train_grpo.py stage=m3b init=out/tiny/m3a/model     # 2b: every task family
    python train_grpo.py stage=cale init=out/tiny/m3b/model    # 3: + conditional length advantage
    python train_grpo.py stage=search init=out/tiny/cale/model # 4: + the knowledge base, confidence

Each step: `prompts_per_step` prompts (mixed by label as the stage says) -> `group_size` responses
each (nanosafe.rollout; the search tool in the loop) -> rewards from the verifiers
(verifiers.score_batch: format + the label's recipe) -> group advantages (+ CALE on rung 3) ->
old (and reference) log-probs recomputed at the sampling temperature -> `rl.epochs` passes of
`rl.mini_batches` optimiser steps, each accumulating micro-batches -> metrics (reward per label
and verifier, clip fraction, approx KL, entropy, length, truncation, grad norm, time per phase,
tokens/s) -> a held-out eval every `io.eval_every` steps -> checkpoint + export.

Departures from the textbook loop, on purpose:
- The loss of an optimiser step is normalised by the counts of the whole step (rl.step_counts),
  so the gradient does not depend on the micro-batch size.
- Log-probs come from the last hidden states and the LM head through kernels.logprob, on
  response positions only ([N, V] is never built on the Triton / torch paths).
- The search tool is in every rung's loop, but its knowledge base (`rollout.kb`) is empty before
  rung 4, where DESIGN §1 brings it in; an earlier rung would otherwise teach the lookups.
- Rung 4 replaces the knowledge recipe by R = 1{correct} - lam * 1{wrong and conf >= c*} + format,
  with lam updated by dual ascent after every step and saved in the checkpoint.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import time
from collections import defaultdict

import torch

import eval as evaluation
import verifiers
from kernels.advantage import group_advantages_triton
from kernels.logprob import fused_logprob
from nanosafe import checkpoint, config, data, dist, log, model, nonfinite, optim, rl, rollout, runs, search, world
from train_sft import batch_order


def response_logprobs(bundle, batch: dict, temperature: float, impl: str, entropy: bool = False):
    """Per-token log p (and entropy) of the response tokens: batch["targets"] [B, T_r] holds the
    response ids (IGNORE-padded); the sequence is prompt + response, right padded."""
    inputs = {k: batch[k] for k in data.MODEL_INPUTS if k in batch}
    # Through the top-level forward, where FSDP gathers the embeddings, vision tower and LM head
    # (they stay gathered until backward ends); it computes one position's logits, and the hidden
    # states are caught on their way out of the backbone.
    caught = []
    hook = bundle.model.model.register_forward_hook(lambda m, a, out: caught.append(out.last_hidden_state))
    bundle.model(**inputs, logits_to_keep=1)
    hook.remove()
    hidden = caught[0]  # [B, T, D]
    weight = bundle.model.get_output_embeddings().weight  # [V, D]
    rows, cols = batch["pos_rows"], batch["pos_cols"]  # hidden state at t predicts token t + 1
    h = hidden[rows, cols]  # [N, D]
    targets = batch["targets"][batch["targets"] != data.IGNORE]  # [N]
    out = fused_logprob(h, weight, targets, temperature=temperature, return_entropy=entropy, impl=impl)
    logp, ent = out if entropy else (out, None)
    full = torch.zeros(batch["targets"].shape, dtype=torch.float32, device=h.device)  # [B, T_r]
    mask = batch["targets"] != data.IGNORE  # [B, T_r]
    full = full.masked_scatter(mask, logp)
    if ent is not None:
        ent = torch.zeros_like(full).masked_scatter(mask, ent.detach())
    return full, ent


def pack(items: list[rollout.Rollout], pad_id: int) -> dict:
    """Rollouts -> one right-padded training batch with response targets and the loss mask."""
    batch = data.collate([data.with_response(r.prompt, r.ids) for r in items], pad_id)
    Tr = max(1, max(len(r.ids) for r in items))
    targets = torch.full((len(items), Tr), data.IGNORE, dtype=torch.long)  # [B, T_r]
    mask = torch.zeros((len(items), Tr))  # [B, T_r] 1 = policy token (tool results are 0)
    rows, cols = [], []
    for i, r in enumerate(items):
        n, p = len(r.ids), len(r.prompt["input_ids"])
        targets[i, :n] = torch.tensor(r.ids, dtype=torch.long)
        mask[i, :n] = torch.tensor(r.mask, dtype=torch.float32)
        rows += [i] * n
        cols += list(range(p - 1, p - 1 + n))
    batch.update(targets=targets, mask=mask, pos_rows=torch.tensor(rows, dtype=torch.long),
                 pos_cols=torch.tensor(cols, dtype=torch.long))
    return batch


def to(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def rewards_for(outs, cfg, lam: float, judges=None) -> tuple[torch.Tensor, list[dict]]:
    """Recipe rewards (verifiers.py); on rung 4 knowledge prompts get the search reward instead."""
    rewards, metrics = verifiers.score_batch([o.sample for o in outs], [o.text for o in outs],
                                             weights=cfg.verifiers.weights or None, judges=judges,
                                             format_weight=cfg.verifiers.format_weight)
    if cfg.rl.fcr_penalty:
        for i, (o, m) in enumerate(zip(outs, metrics)):
            if o.sample["label"] == "knowledge":
                correct = m.get("knowledge_exact", 0.0) >= 1.0
                m["false_certain"] = float(verifiers.is_false_certain(correct, m.get("confidence"),
                                                                       cfg.verifiers.confidence_threshold))
                rewards[i] = rl.search_reward(correct, bool(m["false_certain"]),
                                              cfg.verifiers.format_weight * m["format"], lam)
    return torch.tensor(rewards, dtype=torch.float32), metrics


def rl_step(bundle, ref, opt, sched, outs, adv, cfg, impl: str, guard: nonfinite.Guard | None = None) -> dict:
    """Old/ref log-probs, then epochs x mini-batches of accumulated micro-batch updates; an update
    whose gradient norm is not finite (or of a step the guard marked) is skipped."""
    guard = guard or nonfinite.Guard(cfg.optim.max_nonfinite)
    r, T = cfg.rl, cfg.rollout.temperature
    pad_id = bundle.tokenizer.pad_token_id
    device = dist.device_of(bundle.model)
    micro = cfg.optim.micro_batch_size
    # mini-batches (one optimiser step each) split the responses and micro-batches split a
    # mini-batch, so a step makes rl.mini_batches updates whatever the micro-batch size or the
    # number of ranks (each rank holds its share of every mini-batch: dist.local_slice)
    per_mini = math.ceil(len(outs) / r.mini_batches)
    spans = [range(k, min(k + per_mini, len(outs))) for k in range(0, len(outs), per_mini)]
    chunks = [list(s[i:i + micro]) for s in spans for i in range(0, len(s), micro)]
    batches = [to(pack([outs[j] for j in c], pad_id), device) for c in chunks]
    with torch.no_grad():
        for b, c in zip(batches, chunks):
            b["old_logp"] = response_logprobs(bundle, b, T, impl)[0]
            b["ref_logp"] = response_logprobs(ref, b, T, impl)[0] if ref is not None else None
            b["adv"] = adv[c].to(device)
    stats, ratio_max = defaultdict(float), 0.0
    minis = [[b for b, c in zip(batches, chunks) if c[0] in s] for s in spans]
    n_updates = 0
    for _ in range(r.epochs):
        for mini in minis:
            n_tokens, n_seqs = dist.all_reduce_sum(list(rl.step_counts([b["mask"] for b in mini])))  # all ranks
            for b in mini:
                logp, ent = response_logprobs(bundle, b, T, impl, entropy=True)
                loss, m = rl.policy_loss(logp, b["old_logp"], b["adv"], b["mask"], algo=r.algo,
                                         clip_lo=r.clip_lo, clip_hi=r.clip_hi, drift_coef=r.drift_coef,
                                         ref_logp=b["ref_logp"], kl_coef=r.kl_coef, agg=r.agg,
                                         n_tokens=n_tokens, n_seqs=n_seqs,
                                         max_new_tokens=cfg.rollout.max_new_tokens)
                loss.backward()
                w = float(b["mask"].sum()) / max(n_tokens, 1)  # token-weighted metric average
                stats["loss"] += loss.item()
                stats["entropy"] += w * float((ent * b["mask"]).sum() / b["mask"].sum().clamp(min=1))
                for key, v in m.items():
                    if key == "ratio_max":  # the step's largest ratio, whatever the micro-batch split
                        ratio_max = max(ratio_max, float(v))
                    else:
                        stats[key] += w * float(v)
            grad_norm = dist.clip_grad_norm_(bundle.model, cfg.optim.grad_clip)
            stats["grad_norm"] += grad_norm
            guard.update(opt, grad_norm=grad_norm)
            sched.step()
            opt.zero_grad(set_to_none=True)
            n_updates += 1
    # each rank holds its token-weighted share of every stat; the grad norm is already global
    shares = [k for k in stats if k != "grad_norm"]
    stats.update(zip(shares, dist.all_reduce_sum([stats[k] for k in shares])))
    return {**{k: v / n_updates for k, v in stats.items()}, "ratio_max": dist.all_reduce_max(ratio_max)}


def reward_metrics(outs, rewards, metrics) -> dict:
    by_label, out = defaultdict(list), {}
    for o, rew, m in zip(outs, rewards.tolist(), metrics):
        by_label[o.sample["label"]].append(rew)
        for key, v in m.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and key != "confidence":
                by_label[f"{o.sample['label']}/{key}"].append(float(v))
    for k, v in by_label.items():
        out[f"reward/{k}" if "/" not in k else f"verifier/{k}"] = sum(v) / len(v)
    return out


def main(argv: list[str]) -> None:
    cfg = config.parse(argv, default_stage="m3a")
    if cfg.stage == "sft":
        raise SystemExit("train_grpo.py runs the RL stages (stage=m3a|m3b|cale|search); SFT is train_sft.py")
    if not (cfg.init or cfg.model.init):
        raise SystemExit("RL needs a starting policy: init=<hf model dir> (e.g. out/tiny/sft/model)")
    device = dist.init(cfg.dist)
    run = runs.start(cfg)  # lock out_dir, check a resume's settings; writes nothing else
    torch.manual_seed(cfg.seed + dist.rank())  # each rank samples its own stream
    paths = dist.main_first(world.build, cfg.world, cfg.world.dir)
    prompts, dropped = data.filter_labels(data.read_jsonl(cfg.data.train or paths["rl"]), cfg.data.labels)
    if dropped and dist.is_main():
        print(f"stage {cfg.stage}: kept {len(prompts)} prompts with labels {cfg.data.labels}; "
              f"left out by label: {dropped}")
    held = data.read_jsonl(cfg.data.heldout or paths["heldout"])
    tool = search.SearchTool.from_config(cfg.rollout.kb, paths["kb"]) if cfg.rollout.max_tool_calls > 0 else None
    bundle = model.make(cfg)
    ref = None
    if cfg.rl.kl_coef > 0:  # copied before sharding, then sharded like the policy
        ref = model.Bundle(dist.shard(copy.deepcopy(bundle.model).eval().requires_grad_(False), cfg.dist),
                           bundle.tokenizer, bundle.image_processor)
    bundle.model = dist.shard(bundle.model, cfg.dist)
    impl = cfg.rl.logprob_impl if cfg.rl.logprob_impl != "auto" else ("triton" if device.type == "cuda" else "torch")
    adv_impl = cfg.rl.advantage_impl if cfg.rl.advantage_impl != "auto" else ("triton" if device.type == "cuda" else "torch")
    advantages = group_advantages_triton if adv_impl == "triton" else rl.group_advantages
    judges = verifiers.load_judges(cfg.verifiers.judges, device) if cfg.verifiers.judges else None

    run.commit()  # everything read and checked: the run starts, config.json is written
    steps = cfg.optim.steps
    opt, sched = optim.make(bundle.model, cfg.optim, steps * cfg.rl.epochs * cfg.rl.mini_batches)
    ckpt_dir, step, lam = os.path.join(cfg.io.out_dir, "ckpt"), 0, cfg.rl.lagrange_init
    if checkpoint.exists(ckpt_dir):
        step, extra = checkpoint.load(ckpt_dir, bundle.model, opt, sched)
        lam = extra.get("lam", lam)
        if dist.is_main():
            print(f"resumed from {ckpt_dir} at step {step}")
    logger = log.Logger(cfg.io.out_dir, steps, step, enabled=dist.is_main(), progress=cfg.io.progress)
    guard = nonfinite.Guard(cfg.optim.max_nonfinite, logger.print)
    G = cfg.rollout.group_size
    while step < steps:
        t0 = time.time()
        batch = [prompts[i] for i in batch_order(len(prompts), step, cfg.rollout.prompts_per_step, cfg.seed)]
        # this rank's prompts (its share of each mini-batch); their groups, hence advantages, stay here
        batch = dist.local_slice(batch, parts=cfg.rl.mini_batches)
        outs = rollout.generate(bundle, batch, cfg.data, cfg.rollout, n=G, tool=tool)
        t_gen = time.time()
        rewards, vmetrics = rewards_for(outs, cfg, lam, judges)
        lengths = torch.tensor([sum(o.mask) for o in outs], dtype=torch.float32)
        adv = advantages(rewards.to(device), G, norm=cfg.rl.adv_norm, lengths=lengths.to(device),
                         cale_beta=cfg.rl.cale_beta, cale_tau=None if cfg.rl.cale_tau < 0 else cfg.rl.cale_tau)
        t_rew = time.time()
        guard.check(step + 1, reward=rewards, adv=adv)  # a NaN reward makes its group's adv NaN
        stats = rl_step(bundle, ref, opt, sched, outs, adv.float(), cfg, impl, guard)
        t_upd = time.time()
        # the metrics and lam cover the whole step: every rank's responses
        outs, vmetrics, rewards, adv = zip(*dist.gather_objects(
            [(dataclasses.replace(o, prompt=None), m, r, a)
             for o, m, r, a in zip(outs, vmetrics, rewards.tolist(), adv.tolist())]))
        rewards = torch.tensor(rewards)
        lengths = torch.tensor([sum(o.mask) for o in outs], dtype=torch.float32)
        step += 1
        metrics = {**stats, "reward": float(rewards.mean()), "lr": sched.get_last_lr()[0],
                   "response_len": float(lengths.mean()),
                   "truncated": sum(o.truncated for o in outs) / len(outs),
                   "tool_calls": sum(o.tool_calls for o in outs) / len(outs),
                   "bad_vision_tokens": sum(o.bad_tokens for o in outs),
                   "zero_variance_groups": rl.zero_variance_groups(rewards, G),
                   "time/generate": t_gen - t0, "time/reward": t_rew - t_gen, "time/update": t_upd - t_rew,
                   "tokens_per_s": float(lengths.sum()) / max(t_gen - t0, 1e-9),
                   **reward_metrics(outs, rewards, vmetrics)}
        if cfg.rl.fcr_penalty:
            metrics["lam"] = lam
            fc = [m["false_certain"] for m in vmetrics if "false_certain" in m]
            if fc:  # a step without fact prompts says nothing about the false-certain rate
                metrics["fcr"] = sum(fc) / len(fc)
                lam = rl.lagrange_update(lam, metrics["fcr"], cfg.rl.fcr_target, cfg.rl.lagrange_lr)
        if step % cfg.io.eval_every == 0 or step == steps:
            res = evaluation.evaluate(bundle, held, cfg, tool=tool, judges=judges, n_sampled=0)
            metrics.update({f"eval/{k}": v for k, v in res["summary"].items() if v is not None})
            logger.print(f"step {step}: " + " ".join(f"{k} {v:.3f}" for k, v in res["summary"].items()
                                                     if isinstance(v, float)))
        if step % cfg.io.log_every == 0 or step == steps:
            logger.log(step, metrics, show=("reward", "kl", "clip_frac", "response_len"))
        if cfg.io.log_rollouts:
            logger.samples(step, [{"id": o.sample["id"], "text": o.text, "reward": r, "adv": a}
                                  for o, r, a in zip(outs, rewards.tolist(), adv)])
        logger.advance()
        if step % cfg.io.save_every == 0 or step == steps:
            checkpoint.save(ckpt_dir, bundle.model, opt, sched, step, {"lam": lam})
    logger.close()
    model.export(bundle, os.path.join(cfg.io.out_dir, "model"))
    if dist.is_main():
        print(f"done: {step} steps; exported {cfg.io.out_dir}/model")
    run.close()
    dist.close()


if __name__ == "__main__":
    main(sys.argv[1:])
