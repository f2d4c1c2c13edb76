"""Rung 1 of SafeLadder: chain-of-thought SFT.

    python train_sft.py                                  # tiny world, from scratch, CPU
    python train_sft.py optim.steps=200 out_dir=...      # any config key=value
    python train_sft.py --config configs/qwen2_5_0_5b.py data.train=my_sft.jsonl

Next-token cross-entropy on the response tokens only: prompt, image and tool-result tokens are
masked (nanosafe.data). The loss of an optimiser step is the sum over all its response tokens
divided by their count across every micro-batch, so gradient accumulation does not change it.
AdamW with warmup + cosine, gradient clipping, a held-out loss every `io.eval_every` steps,
`metrics.jsonl`, a resumable checkpoint (model, optimiser, scheduler, RNG, step; the data
position follows from the step because the order is a seeded permutation per epoch), and a
final `save_pretrained` export in `<out_dir>/model` that `from_pretrained` loads.

With no `init`, the tiny world is generated first (nanosafe.world) and a tokenizer and a
~1.2M-parameter Qwen2.5-VL are built from scratch; its SFT mix is deliberately base-model-like,
so the RL rungs have unsafe answers, needless refusals, padding and guesses to fix.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

import torch
import torch.nn.functional as F

import verifiers
from nanosafe import checkpoint, config, data, dist, log, model, nonfinite, optim, runs, world

def token_loss_sum(bundle, batch: dict) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over unmasked labels, and their count."""
    device = dist.device_of(bundle.model)
    labels = batch["labels"].to(device)  # [B, T]
    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    logits = bundle.model(**inputs).logits[:, :-1].float()  # [B, T-1, V]
    target = labels[:, 1:]  # [B, T-1]
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                           ignore_index=data.IGNORE, reduction="sum")
    return loss, int((target != data.IGNORE).sum())

@torch.no_grad()
def heldout_loss(bundle, encoded: list[dict], pad_id: int, micro: int) -> float:
    bundle.model.eval()
    total, count = 0.0, 0
    for i in range(0, len(encoded), micro):
        s, n = token_loss_sum(bundle, data.collate(encoded[i:i + micro], pad_id))
        total, count = total + float(s), count + n
    bundle.model.train()
    return total / max(count, 1)

def main(argv: list[str]) -> None:
    cfg = config.parse(argv, default_stage="sft")
    if cfg.stage != "sft":
        raise SystemExit(f"train_sft.py runs stage=sft; stage={cfg.stage} is train_grpo.py's")
    dist.init(cfg.dist)
    run = runs.start(cfg)  # lock out_dir, check a resume's settings; writes nothing else
    torch.manual_seed(cfg.seed)
    labels = verifiers.label_fields(cfg.verifiers)  # the labels there are (a new one needs its recipe)
    # the tiny world only when its files are read; a tiny tokenizer then learns the given data
    world_needed = not (cfg.data.train and cfg.data.heldout)
    paths = dist.main_first(world.build, cfg.world, cfg.world.dir) if world_needed else {}
    train = data.read_jsonl(cfg.data.train or paths["sft"], need_response=True, labels=labels)
    held = data.read_jsonl(cfg.data.heldout or paths["heldout"], need_response=True, labels=labels)
    given = [t for s in train for t in (s["prompt"], s["response"])]
    bundle = model.make(cfg, lambda: world.corpus(paths) if paths else given)
    bundle.model = dist.shard(bundle.model, cfg.dist)
    pad_id = bundle.tokenizer.pad_token_id
    t0 = time.time()
    enc_train = [data.encode_sft(bundle, s, cfg.data) for s in train]
    enc_held = [data.encode_sft(bundle, s, cfg.data) for s in held]
    if dist.is_main():
        print(f"params {model.n_params(bundle.model) / 1e6:.2f}M | train {len(enc_train)} | heldout "
              f"{len(enc_held)} | encoded in {time.time() - t0:.1f}s | ranks {dist.world_size()}")

    run.commit()  # everything read and checked: the run starts, config.json is written
    o = cfg.optim
    opt, sched = optim.make(bundle.model, o, o.steps)
    ckpt_dir, step = os.path.join(cfg.io.out_dir, "ckpt"), 0
    if checkpoint.exists(ckpt_dir):
        step, _ = checkpoint.load(ckpt_dir, bundle.model, opt, sched)
        if dist.is_main():
            print(f"resumed from {ckpt_dir} at step {step}")
    logger = log.Logger(cfg.io.out_dir, o.steps, step, enabled=dist.is_main(), progress=cfg.io.progress,
                        report_to=cfg.io.report_to, run_config=dataclasses.asdict(cfg))
    guard = nonfinite.Guard(o.max_nonfinite, logger.print)
    bundle.model.train()
    t_start = time.time()
    while step < o.steps:
        t_step = time.time()
        idx = dist.local_slice(data.batch_order(len(enc_train), step, o.batch_size, cfg.seed))
        micro = [idx[i:i + o.micro_batch_size] for i in range(0, len(idx), o.micro_batch_size)]
        batches = [data.collate([enc_train[j] for j in m], pad_id) for m in micro]
        # the global batch's token count: each rank's loss is then its share of the global loss
        n_tokens = dist.all_reduce_sum(sum(int((b["labels"][:, 1:] != data.IGNORE).sum()) for b in batches))
        loss_total = 0.0
        for b in batches:
            s, _ = token_loss_sum(bundle, b)
            (s / n_tokens).backward()
            loss_total += s.item() / n_tokens
        loss_total = dist.all_reduce_sum(loss_total)
        grad_norm = dist.clip_grad_norm_(bundle.model, o.grad_clip)
        guard.update(opt, step + 1, loss=loss_total, grad_norm=grad_norm)  # opt.step() if all finite
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        metrics = {"loss": loss_total, "grad_norm": grad_norm, "lr": sched.get_last_lr()[0],
                   "tokens": n_tokens, "step_time": time.time() - t_step}
        if step % cfg.io.eval_every == 0 or step == o.steps:
            metrics["heldout_loss"] = heldout_loss(bundle, enc_held, pad_id, o.micro_batch_size)
            logger.print(f"step {step}: loss {loss_total:.4f} heldout {metrics['heldout_loss']:.4f}")
        if step % cfg.io.log_every == 0 or "heldout_loss" in metrics:
            logger.log(step, metrics, show=("loss", "heldout_loss", "grad_norm"))
        logger.advance()
        if step % cfg.io.save_every == 0 or step == o.steps:
            checkpoint.save(ckpt_dir, bundle.model, opt, sched, step, keep_last=cfg.io.keep_last)
    logger.close()
    model.export(bundle, os.path.join(cfg.io.out_dir, "model"))
    if dist.is_main():
        print(f"done: {step} steps in {time.time() - t_start:.0f}s; exported {cfg.io.out_dir}/model")
    run.close()
    dist.close()


if __name__ == "__main__":
    main(sys.argv[1:])
