"""FSDP on the CPU: `torchrun --nproc_per_node 2` (gloo) against one plain process.

Each test launches the real scripts in fresh processes, through this file's `__main__` driver
(`python tests/test_dist.py sft|grpo|check [--fixed-rollouts] [--crash-at N] key=value ...`), and
compares what they wrote: metrics.jsonl per step and the exported weights.

- SFT: the same global batch split over two ranks gives the single process's losses and weights.
- RL: sampling draws a different random stream on each rank, so to compare 2 ranks with 1 the
  rollouts are fixed: `--fixed-rollouts` replaces generation by responses drawn from a seed per
  (prompt id, sample index), the same whichever rank the prompt lands on. Everything after
  generation is real: rewards, group advantages, the all-reduced step counts, the sharded update,
  the metrics gathered over ranks, the held-out eval, checkpoints, export; the two ranks also keep
  their shards in host memory (`dist.cpu_offload`, a no-op move on the CPU, but the same code).
- Sharded checkpoints: a 2-rank rung-4 run (real sampling, lambda, a sharded frozen reference for
  the KL term, activation checkpointing) that crashes after a checkpoint and is resumed ends where
  an uninterrupted one does. The resumed run also generates with the layers sharded
  (`dist.rollout_unshard=false`, ranks in lockstep) while the uninterrupted one gathers the policy
  first, so the match also shows that the two generation modes sample the same tokens.
- Uneven ranks (`check_uneven_ranks`): images on one rank only, and different numbers of
  generate calls per rank.
- Presets: they resolve, and the memory estimate's model shapes give the published sizes.
"""
import json
import os
import random
import subprocess
import sys

import pytest
import torch

from conftest import TINY_ARGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5


def length_reward(sample, response):
    """A reward that varies on a barely trained policy's output, whose built-in scores are all 0."""
    return min(1.0, len(response) / 64)


def fixed_generate(bundle, samples, dcfg, rcfg, n=1, greedy=False, tool=None, prompts=None):
    """Stands in for rollout.generate: n responses per sample from a seed per (sample id, index)."""
    from nanosafe import data, rollout
    prompts = prompts or [data.encode_prompt(bundle, s, dcfg) for s in samples]
    outs = []
    for s, p in zip(samples, prompts):
        for g in range(n):
            rng = random.Random(f"{s['id']}/{g}")
            answer = s.get("answer") or "yes"
            text = rng.choice([f"<think>{'so ' * rng.randint(1, 6)}</think> \\boxed{{{answer}}}",
                               f"<think>hmm</think> {answer}", "<think></think> I cannot help.", "no"])
            ids, mask = data.encode_response(bundle.tokenizer, text)
            outs.append(rollout.Rollout(s, p, ids[:rcfg.max_new_tokens], mask[:rcfg.max_new_tokens],
                                        text, ended=len(ids) <= rcfg.max_new_tokens))
    return outs


def check_uneven_ranks(args):
    """Rank 0 gets only prompts with images, rank 1 only prompts without, so the vision tower runs
    on one rank only: (1) the sharded gradient of a training step equals a plain model's gradient
    over both ranks' samples (the trainable tower of a from-scratch model included); (2) each rank
    then generates for a different number of prompts, one row per generate call, so the ranks make
    different numbers of calls, and generation with the layers sharded (lockstep) samples exactly
    what the gathered policy samples."""
    import copy
    import train_sft
    from nanosafe import config, data, dist, model, rollout, world
    cfg = config.parse(args)
    dist.init(cfg.dist)
    paths = dist.main_first(world.build, cfg.world, cfg.world.dir)
    bundle = model.make(cfg, lambda: world.corpus(paths))
    plain = copy.deepcopy(bundle.model)
    bundle.model = dist.shard(bundle.model, cfg.dist)
    rows = data.read_jsonl(paths["sft"], need_response=True)
    shares = [[r for r in rows if r["images"]][:2], [r for r in rows if not r["images"]][:3]]
    batches = [data.collate([data.encode_sft(bundle, r, cfg.data) for r in share], bundle.tokenizer.pad_token_id)
               for share in shares]
    n_tokens = sum(int((b["labels"][:, 1:] != data.IGNORE).sum()) for b in batches)
    (train_sft.token_loss_sum(bundle, batches[dist.rank()])[0] / n_tokens).backward()
    sum(train_sft.token_loss_sum(model.Bundle(plain, None), b)[0] / n_tokens for b in batches).backward()
    sharded = dict(bundle.model.named_parameters())
    for name, p in plain.named_parameters():
        torch.testing.assert_close(sharded[name].grad.full_tensor(), p.grad, rtol=1e-5, atol=1e-7, msg=name)
    cfg.rollout.gen_batch_size = 1
    samples = shares[dist.rank()][:2 - dist.rank()]
    ids = {}
    for unshard in (True, False):
        bundle.model._rollout_unshard = unshard
        torch.manual_seed(dist.rank())
        ids[unshard] = [o.ids for o in rollout.generate(bundle, samples, cfg.data, cfg.rollout, n=2)]
    assert ids[True] == ids[False]
    dist.close()  # as the scripts end: the interpreter's teardown of a gloo worker can abort


def driver(argv):
    """Runs in every launched process: one script, optionally with fixed rollouts or a crash."""
    script, args = argv[0], argv[1:]
    fixed, crash_at = "--fixed-rollouts" in args, None
    if "--crash-at" in args:
        crash_at = int(args[args.index("--crash-at") + 1])
    args = [a for a in args if "=" in a]
    import train_grpo
    import train_sft
    from nanosafe import checkpoint, rollout
    if fixed:
        rollout.generate = fixed_generate
    if crash_at is not None:
        real_save = checkpoint.save

        def save_then_crash(ckpt_dir, m, opt, sched, step, *args, **kwargs):
            real_save(ckpt_dir, m, opt, sched, step, *args, **kwargs)
            if step == crash_at:
                os._exit(17)  # a hard crash: no cleanup, no export

        checkpoint.save = save_then_crash
    if script == "check":
        return check_uneven_ranks(args)
    {"sft": train_sft, "grpo": train_grpo}[script].main(args)


def launch(nproc, script, *args, ok=True):
    """nproc 0: one plain process (no torchrun, no process group); else torchrun with gloo."""
    prefix = ([sys.executable] if nproc == 0 else
              [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    p = subprocess.run(prefix + [os.path.abspath(__file__), script, *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert (p.returncode == 0) == ok, p.stdout[-3000:] + p.stderr[-6000:]


def metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def weights(out_dir):
    from safetensors.torch import load_file
    return load_file(os.path.join(out_dir, "model", "model.safetensors"))


def assert_same_run(a, b, tol=TOL):
    """Same metrics at every step (timings aside) and the same exported weights."""
    ma, mb = metrics(a), metrics(b)
    assert [r["step"] for r in ma] == [r["step"] for r in mb]
    for ra, rb in zip(ma, mb):
        keys = {k for k in ra if not k.startswith("time/") and k not in ("step_time", "tokens_per_s")}
        assert keys == {k for k in rb if not k.startswith("time/") and k not in ("step_time", "tokens_per_s")}
        for k in keys:
            assert ra[k] == pytest.approx(rb[k], abs=tol, rel=tol), (ra["step"], k)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=tol, atol=tol, msg=k)


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory):
    """Tiny SFT (a trainable vision tower, built from scratch) as one process and as two ranks."""
    out = tmp_path_factory.mktemp("dist")
    args = TINY_ARGS + [f"world.dir={out}/world"]
    launch(0, "sft", *args, f"out_dir={out}/one/sft")
    launch(2, "sft", *args, f"out_dir={out}/two/sft")
    return out


def test_sft_two_ranks_match_one(sft_runs):
    one, two = sft_runs / "one" / "sft", sft_runs / "two" / "sft"
    assert_same_run(one, two)
    assert len(metrics(two)) == 4 and "heldout_loss" in metrics(two)[-1]
    assert os.path.exists(two / "ckpt" / "latest") and not os.path.exists(two / "ckpt" / "state.pt")


def test_rl_two_ranks_match_one_on_fixed_rollouts(sft_runs, tmp_path):
    init = sft_runs / "one" / "sft" / "model"  # RL loads it: rank 0 reads, rank 1 gets a broadcast
    # two mini-batches: each rank holds its share of both (dist.local_slice), two updates per step
    args = TINY_ARGS + ["stage=m3b", f"init={init}", "optim.steps=3", "rl.mini_batches=2", "--fixed-rollouts"]
    launch(0, "grpo", *args, f"out_dir={tmp_path}/one/m3b")
    launch(2, "grpo", *args, "dist.cpu_offload=true", f"out_dir={tmp_path}/two/m3b")
    assert_same_run(tmp_path / "one" / "m3b", tmp_path / "two" / "m3b")
    last = metrics(tmp_path / "two" / "m3b")[-1]
    assert last["grad_norm"] > 0 and any(k.startswith("reward/") for k in last)


def test_sharded_resume_matches_uninterrupted(sft_runs, tmp_path):
    init = sft_runs / "two" / "sft" / "model"
    # the barely trained policy earns equal built-in rewards and is never correct, so CALE adds
    # nothing: look-alikes scored by length_reward move it. Fact and look-alike prompts only, both
    # text (mixed image/text batches under gradient checkpointing: tests/test_real_models.py)
    args = TINY_ARGS + ["stage=search", f"init={init}", "optim.steps=4", "rollout.max_new_tokens=16",
                        "rl.mini_batches=1", "rl.cale_beta=0.5", "rl.kl_coef=0.01", "data.labels=knowledge,normal",
                        'verifiers.rewards={"length": "tests/test_dist.py:length_reward"}',
                        'verifiers.recipes={"normal": {"length": 1.0}}', "model.gradient_checkpointing=true"]
    launch(2, "grpo", *args, f"out_dir={tmp_path}/full/search")
    cut = [*args, "dist.rollout_unshard=false", "io.keep_last=2", f"out_dir={tmp_path}/cut/search"]
    launch(2, "grpo", *cut, "--crash-at", "2", ok=False)
    assert not os.path.exists(tmp_path / "cut" / "search" / "model")
    launch(2, "grpo", *cut)
    assert_same_run(tmp_path / "full" / "search", tmp_path / "cut" / "search", tol=1e-6)
    rows = metrics(tmp_path / "cut" / "search")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert any(r["grad_norm"] > 0 for r in rows) and rows[-1]["lam"] > 0 and "kl_ref" in rows[-1]
    # saved at steps 2 and 4: io.keep_last=2 keeps both step directories, the default only the last
    full, cut = (sorted(n for n in os.listdir(tmp_path / run / "search" / "ckpt") if n.startswith("step-"))
                 for run in ("full", "cut"))
    assert cut == ["step-00000002", "step-00000004"] and full == ["step-00000004"]


def test_uneven_ranks(tmp_path):
    launch(2, "check", *TINY_ARGS, f"out_dir={tmp_path}/check")


def test_presets_and_memory_table(monkeypatch):
    """The presets resolve, and the hard-coded shapes give the models' published sizes."""
    from nanosafe import config, memory
    monkeypatch.chdir(ROOT)  # a preset names its base relative to the repository
    sizes = {"qwen2_5_0_5b": 0.49e9, "qwen2_5_vl_3b": 3.75e9, "qwen2_5_vl_7b": 8.29e9, "qwen2_5_vl_72b": 73.4e9}
    for name, size in sizes.items():
        cfg = config.parse(["--config", f"{ROOT}/configs/{name}.py", "stage=m3b"])
        assert memory.shape_of(cfg).total() == pytest.approx(size, rel=0.01)
        assert cfg.rollout.group_size == 8 and cfg.optim.lr == 1e-6 and cfg.model.gradient_checkpointing
        assert cfg.rollout.prompts_per_step % 8 == 0
    rows = memory.table([f"{ROOT}/configs/{name}.py" for name in sizes]).splitlines()
    assert len(rows) == 2 + 2 * len(sizes) and all(r.split("|")[-3].strip() in ("yes", "no") for r in rows[2:])


if __name__ == "__main__":
    driver(sys.argv[1:])
