"""Rungs 2-4 loop: a multimodal RL step, log-prob implementations agree, exact resume, rung-4 λ."""
import copy
import dataclasses
import json
import os

import pytest
import torch

import train_grpo
from conftest import TINY_ARGS, crash_then_resume
from nanosafe import checkpoint, config, data, rl, rlbatch, rlstep, rollout, world


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory):
    """A tiny SFT export to start RL from (4 SFT steps: enough for the plumbing)."""
    import train_sft
    out = tmp_path_factory.mktemp("rl")
    train_sft.main(TINY_ARGS + [f"out_dir={out}/sft"])
    return str(out / "sft" / "model")


def _rollouts(cfg, bundle, paths, n_prompts=3):
    rows = data.read_jsonl(paths["rl"])
    rows = [r for r in rows if r["images"]][:1] + [r for r in rows if not r["images"]][:n_prompts - 1]
    torch.manual_seed(0)
    return rollout.generate(bundle, rows, cfg.data, cfg.rollout, n=cfg.rollout.group_size)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_update_with_images_matches_naive_logprob(tiny, impl):
    cfg, paths, bundle = tiny
    cfg = copy.deepcopy(cfg)
    cfg.rollout.max_new_tokens = 10
    cfg.optim.micro_batch_size = 4
    outs = _rollouts(cfg, bundle, paths)
    assert any(o.prompt["pixel_values"] is not None for o in outs)
    adv = torch.linspace(-1, 1, len(outs))
    params = {}
    for which in ("naive", impl):
        b = copy.deepcopy(bundle)
        # plain SGD: the parameter change is lr * gradient, so it compares the gradients themselves
        # (Adam's first step is ~lr * sign(g), which magnifies round-off on near-zero gradients)
        opt = torch.optim.SGD([p for p in b.model.parameters() if p.requires_grad], lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        cfg.rl.logprob_impl = which
        run = rlstep.Run(b, None, opt, sched, **rlstep.recipe(cfg, None, torch.device("cpu")))
        stats = rlstep.update(run, outs, adv, cfg)
        assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
        params[which] = {k: p.detach().clone() for k, p in b.model.named_parameters() if p.requires_grad}
    moved = [k for k, p in bundle.model.named_parameters() if p.requires_grad
             and not torch.equal(p, params["naive"][k])]
    assert moved, "the RL step changed no parameter"
    for k in params["naive"]:
        torch.testing.assert_close(params[impl][k], params["naive"][k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mini_batches, epochs", [(1, 1), (2, 1), (1, 2)])
def test_old_logp_auto_gives_the_recomputed_update(tiny, mini_batches, epochs):
    """rl.old_logp=auto takes the on-policy mini-batch's old log-probs from the update's own
    forward; the update (loss, metrics, parameters after SGD) is that of the separate pass, and
    every mini-batch after an optimiser step still gets its old log-probs recomputed."""
    cfg, paths, bundle = tiny
    cfg = copy.deepcopy(cfg)
    cfg.rollout.max_new_tokens, cfg.optim.micro_batch_size = 10, 2
    cfg.rl.mini_batches, cfg.rl.epochs = mini_batches, epochs
    outs = _rollouts(cfg, bundle, paths)
    adv = torch.linspace(-1, 1, len(outs))
    n_micro = [len(m) for m in rlbatch.split(len(outs), mini_batches, 2)]
    params, stats, passes = {}, {}, {}
    for mode in ("recompute", "auto"):
        b = copy.deepcopy(bundle)
        opt = torch.optim.SGD([p for p in b.model.parameters() if p.requires_grad], lr=1.0)  # moves = grads
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        cfg.rl.old_logp = mode
        run = rlstep.Run(b, None, opt, sched, **rlstep.recipe(cfg, None, torch.device("cpu")))
        logprobs, passes[mode] = run.logprobs, []
        run.logprobs = lambda bundle, batch, entropy=False: (passes[mode].append(entropy), logprobs(bundle, batch, entropy=entropy))[1]
        stats[mode] = rlstep.update(run, outs, adv, cfg)
        params[mode] = {k: p.detach().clone() for k, p in b.model.named_parameters() if p.requires_grad}
    # the no-grad old log-prob passes: every micro-batch, or all but the first mini-batch's
    assert passes["recompute"].count(False) == sum(n_micro)
    assert passes["auto"].count(False) == sum(n_micro[1:])
    assert passes["auto"].count(True) == passes["recompute"].count(True) == sum(n_micro) * epochs
    if mini_batches * epochs > 1:  # the later updates are off-policy: a ratio stuck at 1 would show here
        assert stats["recompute"]["ratio_max"] > 1.01
    for key in stats["recompute"]:
        assert stats["auto"][key] == pytest.approx(stats["recompute"][key], rel=1e-6, abs=1e-6), key
    for k in params["recompute"]:
        torch.testing.assert_close(params["auto"][k], params["recompute"][k], rtol=1e-6, atol=1e-6)


def test_response_logprobs_match_full_forward(tiny):
    cfg, paths, bundle = tiny
    cfg = copy.deepcopy(cfg)
    cfg.rollout.max_new_tokens = 8
    outs = _rollouts(cfg, bundle, paths, n_prompts=2)
    batch = rlbatch.pack(outs, torch.zeros(len(outs)), bundle.tokenizer.pad_token_id)
    with torch.no_grad():
        logp, _ = rlbatch.response_logprobs(bundle, batch, 0.7, "torch")
        full = torch.log_softmax(bundle.model(**batch.inputs).logits.float() / 0.7, -1)  # [B, T, V]
    for i, o in enumerate(outs):
        p = len(o.prompt["input_ids"])
        ref = full[i, p - 1:p - 1 + len(o.ids)].gather(1, torch.tensor(o.ids)[:, None])[:, 0]
        torch.testing.assert_close(logp[i, :len(o.ids)], ref, rtol=1e-5, atol=1e-5)
        assert (logp[i, len(o.ids):] == 0).all()


def test_resume_equals_uninterrupted(sft_model, tmp_path, monkeypatch):
    args = TINY_ARGS + ["stage=m3b", f"init={sft_model}", "optim.steps=4", "io.save_every=1",
                        "rollout.max_new_tokens=12", "io.log_rollouts=true", "io.keep_last=2"]
    train_grpo.main(args + [f"out_dir={tmp_path}/full/m3b"])
    crash_then_resume(train_grpo, args + [f"out_dir={tmp_path}/cut/m3b"], 2, monkeypatch)
    load = lambda d: torch.load(os.path.join(d, "ckpt", checkpoint.FILE), weights_only=True)["model"]  # noqa: E731
    full, cut = load(tmp_path / "full" / "m3b"), load(tmp_path / "cut" / "m3b")
    for k in full:
        assert torch.equal(full[k], cut[k]), k
    rows = [json.loads(line) for line in open(tmp_path / "cut" / "m3b" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {"reward", "clip_frac", "approx_kl", "entropy", "grad_norm", "response_len", "truncated",
            "time/generate", "tokens_per_s", "zero_variance_groups"} <= set(rows[-1])
    # every rollout of every step, once: the resumed run dropped the steps it replayed
    samples = [[json.loads(line) for line in open(tmp_path / run / "m3b" / "samples.jsonl")] for run in ("full", "cut")]
    assert samples[0] == samples[1]
    rcfg = config.parse(args).rollout
    per_step = rcfg.prompts_per_step * rcfg.group_size
    assert [r["step"] for r in samples[1]] == [s for s in (1, 2, 3, 4) for _ in range(per_step)]
    assert {"id", "prompt", "text", "reward", "adv"} == set(samples[1][0]) - {"step"}
    cfg = config.parse(args + [f"out_dir={tmp_path}/cut/m3b"])
    prompts = {s["id"]: s["prompt"] for s in data.read_jsonl(world.build(cfg.world, cfg.world.dir)["rl"])}
    assert all(r["prompt"] == prompts[r["id"]] for r in samples[1])
    # io.keep_last=2: the two newest of the four states stay; state.pt is the last of them
    ckpt = tmp_path / "cut" / "m3b" / "ckpt"
    assert sorted(os.listdir(ckpt)) == ["state-00000003.pt", "state-00000004.pt", "state.pt"]
    assert os.path.samefile(ckpt / "state.pt", ckpt / "state-00000004.pt")


def test_lagrange_multiplier_rises_then_falls_to_zero():
    lam = 0.0
    for _ in range(5):
        lam = rl.lagrange_update(lam, fcr=0.6, target=0.1, lr=0.5)
    assert lam == pytest.approx(5 * 0.5 * 0.5)
    for _ in range(24):  # falls by lr * target = 0.05 a step
        lam = rl.lagrange_update(lam, fcr=0.0, target=0.1, lr=0.5)
    assert 0 < lam < 0.1
    lam = rl.lagrange_update(lam, fcr=0.0, target=0.1, lr=0.5)
    assert lam == 0.0
    # R = y - lam * fc - mu * (p - y)^2 + format (args: correct, false_certain, p, format, lam, mu)
    assert rl.search_reward(True, False, 1.0, 1.0, lam=2.0, mu=0.5) == 2.0
    assert rl.search_reward(False, True, 1.0, 1.0, lam=2.0, mu=0.5) == -1.5  # 0 - 2 - 0.5 + 1
    assert rl.search_reward(False, False, 0.0, 1.0, lam=2.0, mu=0.5) == 1.0  # "not sure" and wrong: no cost
    assert rl.search_reward(True, False, 0.3, 1.0, lam=2.0, mu=0.5) == pytest.approx(1.755)  # a hedge costs 0.245
    assert rl.search_reward(False, False, 0.3, 1.0, lam=2.0, mu=0.0) == 1.0  # mu = 0: the old reward


def test_cale_tau_and_brier_coef_are_checked():
    assert (config.parse([]).rl.cale_tau, config.parse([]).rl.brier_coef) == (1.0, 0.5)  # DESIGN §4
    with pytest.raises(ValueError, match=r"config key rl.cale_tau: must be in \[0, 1\], got 1.5"):
        config.parse(["rl.cale_tau=1.5"])
    with pytest.raises(ValueError, match="config key rl.brier_coef: must be >= 0, got -0.5"):
        config.parse(["rl.brier_coef=-0.5"])


def test_search_stage_saves_lambda(sft_model, tmp_path):
    # rl.confidence_adv on: its split of the reward runs through the whole loop (tests/test_rlbatch.py checks it)
    train_grpo.main(TINY_ARGS + ["stage=search", f"init={sft_model}", "optim.steps=2", "rl.lagrange_init=0.3",
                                 "rl.confidence_adv=true",
                                 "rollout.max_new_tokens=16", "data.labels=knowledge", f"out_dir={tmp_path}/search"])
    state = torch.load(tmp_path / "search" / "ckpt" / checkpoint.FILE, weights_only=True)
    rows = [json.loads(line) for line in open(tmp_path / "search" / "metrics.jsonl")]
    assert "lam" in rows[0] and "fcr" in rows[0] and rows[0]["lam"] == 0.3
    cfg = config.parse(["stage=search"])
    expect = rl.lagrange_update(rows[-1]["lam"], rows[-1]["fcr"], cfg.rl.fcr_target, cfg.rl.lagrange_lr)
    assert state["extra"]["lam"] == pytest.approx(expect)
    assert cfg.rl.fcr_penalty and cfg.data.labels == ""  # every family stays in the mix
    # the knowledge base joins at rung 4; the rungs before it search an empty one
    assert cfg.rollout.kb == "" and {config.parse([f"stage={s}"]).rollout.kb for s in ("m3a", "m3b", "cale")} == {"none"}


def test_lambda_holds_in_steps_without_fact_prompts(sft_model, tmp_path):
    train_grpo.main(TINY_ARGS + ["stage=search", f"init={sft_model}", "optim.steps=2", "rl.lagrange_init=0.3",
                                 "rollout.max_new_tokens=16", "data.labels=general_rule", f"out_dir={tmp_path}/s"])
    rows = [json.loads(line) for line in open(tmp_path / "s" / "metrics.jsonl")]
    assert [r["lam"] for r in rows] == [0.3, 0.3] and not any("fcr" in r for r in rows)


def test_reward_model_judge_through_train_grpo(sft_model, tmp_path, monkeypatch):
    """verifiers.judges with a scalar reward model (one output): loaded from the config, its
    squashed score in the safety reward, its raw logit per label in metrics.jsonl. The 4-step
    policy's texts are replaced by well-formed ones (judges never see an unparseable response)."""
    real = rollout.generate
    monkeypatch.setattr(rollout, "generate", lambda *a, **k: [
        dataclasses.replace(o, text=f"<think>Consider it.</think> Answer number {i}.")
        for i, o in enumerate(real(*a, **k))])
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForSequenceClassification
    tok = AutoTokenizer.from_pretrained(sft_model)
    torch.manual_seed(0)
    rm = Qwen2ForSequenceClassification(Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id))
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    out = tmp_path / "m3b"
    train_grpo.main(TINY_ARGS + ["stage=m3b", f"init={sft_model}", "optim.steps=1", "rollout.max_new_tokens=12",
                                 "data.labels=safety", "verifiers.rm_scale=2.0", f"out_dir={out}",
                                 f'verifiers.judges={{"safety": "classifier:{tmp_path / "rm"}"}}'])
    row = json.loads(open(out / "metrics.jsonl").readline())
    assert row["verifier/safety/format"] == 1.0 and 0.0 < row["verifier/safety/safety"] < 1.0
    assert "verifier/safety/safety_raw" in row
    assert "verifier/safety/safety_label" not in row  # the six-label rule judge did not run
