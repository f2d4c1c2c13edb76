"""Runs that never hurt the user's work (issue 19): nothing written before a run can start, no
silent resume with other settings, one run per out dir, no NaN in an update or a checkpoint,
worlds that never overwrite each other, torn logs, and clear errors for impossible input."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch

import train_grpo
import verifiers
import train_sft
from conftest import TINY_ARGS
from kernels.logprob import fused_logprob
from nanosafe import checkpoint, config, data, log, nonfinite, runs, world
from nanosafe.config import WorldConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SFT_ARGS = TINY_ARGS + ["optim.steps=2"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-step SFT run; tests copy it before changing it."""
    out = tmp_path_factory.mktemp("runs") / "sft"
    train_sft.main(SFT_ARGS + [f"out_dir={out}"])
    return out


def _copy(src, dst):
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _bad_jsonl(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "prompt": "hi", "label": "evil", "response": "x"}\n')
    return path


# --- 1. validate before writing; config.json only once the run starts ----------------------------

def test_failed_run_keeps_the_good_runs_config(finished, tmp_path):
    out = _copy(finished, tmp_path / "sft")
    before = (out / "config.json").read_text()
    bad = SFT_ARGS + ["data.system_prompt=You are evil.", f"data.train={_bad_jsonl(tmp_path)}", f"out_dir={out}"]
    with pytest.raises(runs.RunError, match="data.system_prompt"):  # the repro: other settings
        train_sft.main(bad)
    with pytest.raises(data.DataError, match="bad.jsonl:1: field 'label'"):  # even when told to overwrite
        train_sft.main(bad + ["io.overwrite=true"])
    assert (out / "config.json").read_text() == before
    assert checkpoint.exists(str(out / "ckpt")) and (out / "model" / "model.safetensors").exists()
    cfg = config.parse([f"init={out}/model", "stage=m3a", f"out_dir={tmp_path}/m3a"])
    assert cfg.data.system_prompt == config.DataConfig.system_prompt


def test_failed_run_leaves_no_out_dir(tmp_path):
    """As a user runs it: the process exits 1 and the out_dir it would have made is not there."""
    out = tmp_path / "new" / "sft"
    res = subprocess.run([sys.executable, "train_sft.py", *SFT_ARGS, f"data.train={_bad_jsonl(tmp_path)}",
                          f"out_dir={out}"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert res.returncode == 1 and "field 'label'" in res.stderr
    assert not out.exists()


def test_init_dir_without_tokenizer_is_an_error_before_writing(finished, tmp_path):
    init = tmp_path / "model"
    init.mkdir()
    shutil.copy(finished / "model" / "config.json", init / "config.json")
    with pytest.raises(runs.RunError, match=r"init=.*no tokenizer files"):
        train_grpo.main(TINY_ARGS + [f"init={init}", f"out_dir={tmp_path}/m3a"])
    assert not (tmp_path / "m3a").exists()
    with pytest.raises(runs.RunError, match="no such model directory"):
        train_grpo.main(TINY_ARGS + [f"init={tmp_path}/nowhere", f"out_dir={tmp_path}/m3a"])


def test_unreadable_inherited_config_names_the_file(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "config.json").write_text('{"world": ')  # cut short
    with pytest.raises(ValueError, match=r"config.json: not valid JSON .*the run that wrote"):
        config.parse([f"init={tmp_path}/model", "stage=m3a"])


def test_config_json_written_atomically(tmp_path):
    cfg = config.parse([f"out_dir={tmp_path}/x"])
    config.save(cfg, verbose=False)
    assert json.load(open(tmp_path / "x" / "config.json"))["io"]["out_dir"] == f"{tmp_path}/x"
    assert os.listdir(tmp_path / "x") == ["config.json"]  # no temporary file left


# --- 2. resume checks the saved settings ----------------------------------------------------------

def test_resume_with_changed_settings_is_an_error(finished, tmp_path):
    out = _copy(finished, tmp_path / "sft")
    before = (out / "config.json").read_text()
    with pytest.raises(runs.RunError) as e:
        train_sft.main(SFT_ARGS + ["optim.steps=4", "optim.lr=0.5", f"out_dir={out}"])
    msg = str(e.value)
    assert "optim.lr: 0.003 -> 0.5" in msg and "optim.steps: 2 -> 4" in msg
    assert "new out_dir" in msg and "io.overwrite=true" in msg
    assert (out / "config.json").read_text() == before
    assert not (out / runs.LOCK).exists()  # a refused run leaves no lock behind


def test_resume_allows_harmless_changes(finished, tmp_path):
    out = _copy(finished, tmp_path / "sft")
    train_sft.main(SFT_ARGS + ["io.log_every=5", "io.eval_every=7", f"out_dir={out}"])
    assert json.load(open(out / "config.json"))["io"]["log_every"] == 5


def test_overwrite_starts_afresh(finished, tmp_path):
    out = _copy(finished, tmp_path / "sft")
    (out / "notes.txt").write_text("mine")
    train_sft.main(TINY_ARGS + ["optim.steps=3", "io.overwrite=true", f"out_dir={out}"])
    assert json.load(open(out / "config.json"))["optim"]["steps"] == 3
    assert [json.loads(r)["step"] for r in open(out / "metrics.jsonl")] == [1, 2, 3]
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files are replaced


def test_differences_ignore_bookkeeping():
    a = json.loads(json.dumps(config.dataclasses.asdict(config.Config())))
    b = json.loads(json.dumps(a))
    b["io"]["log_every"], b["optim"]["max_nonfinite"], b["world"]["dir"] = 99, 0, "elsewhere"
    assert runs.differences(a, b) == []
    b["verifiers"]["weights"] = {"boxed": 2.0}
    b["world"]["n_sft"] = 60
    assert runs.differences(a, b) == [("verifiers.weights", {}, {"boxed": 2.0}), ("world.n_sft", 12000, 60)]


# --- 3. non-finite guards ------------------------------------------------------------------------

def test_guard_skips_then_stops_naming_the_step():
    said = []
    g = nonfinite.Guard(1, said.append)
    assert g.check(1, loss=1.0, grad_norm=torch.tensor(2.0))
    assert not g.check(2, reward=torch.tensor([0.0, float("nan")]))
    assert not g.check(grad_norm=float("inf"))  # the same step: counted once
    assert g.skipped == 1 and "step 2: non-finite reward" in said[0]
    with pytest.raises(FloatingPointError, match="step 3: non-finite loss.*max_nonfinite=1"):
        g.check(3, loss=float("nan"))


def test_guard_update_leaves_the_weights_alone():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1)
    before = [p.detach().clone() for p in lin.parameters()]
    (lin(torch.ones(1, 3)).sum() * float("nan")).backward()
    g = nonfinite.Guard(5, lambda s: None)
    assert not g.update(opt, 1, grad_norm=torch.nn.utils.clip_grad_norm_(lin.parameters(), 1.0))
    assert all(torch.equal(a, p) for a, p in zip(before, lin.parameters()))
    assert all(p.grad is None for p in lin.parameters()) and not opt.state


def test_checkpoint_refuses_a_non_finite_state(tmp_path):
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(lin.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    checkpoint.save(str(tmp_path), lin, opt, sched, 1)
    good = (tmp_path / checkpoint.FILE).read_bytes()
    with torch.no_grad():
        lin.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="step 2: not writing a checkpoint.*weight"):
        checkpoint.save(str(tmp_path), lin, opt, sched, 2)
    assert (tmp_path / checkpoint.FILE).read_bytes() == good


def test_keep_last_checkpoints(tmp_path):
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(lin.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    names = lambda: sorted(os.listdir(tmp_path))  # noqa: E731
    for step in (1, 2, 3):
        checkpoint.save(str(tmp_path), lin, opt, sched, step, keep_last=2)
    assert names() == ["state-00000002.pt", "state-00000003.pt", checkpoint.FILE]
    # resumed from step 2's state and saved step 2 again: step 3's is from the abandoned branch
    checkpoint.save(str(tmp_path), lin, opt, sched, 2, keep_last=2)
    assert names() == ["state-00000002.pt", checkpoint.FILE]
    assert torch.load(tmp_path / checkpoint.FILE, weights_only=True)["step"] == 2
    checkpoint.save(str(tmp_path), lin, opt, sched, 3)  # keep_last=1: state.pt alone, as before
    assert names() == [checkpoint.FILE]
    # FSDP's step directories: the current one always stays, later ones go
    for step in (1, 2, 3):
        os.makedirs(tmp_path / f"step-{step:08d}")
    checkpoint._prune(str(tmp_path), 2, 1)
    assert names() == [checkpoint.FILE, "step-00000002"]


def test_sft_nan_loss_skips_updates_then_stops(tmp_path, monkeypatch):
    real = train_sft.token_loss_sum
    monkeypatch.setattr(train_sft, "token_loss_sum", lambda b, batch: (real(b, batch)[0] * float("nan"),
                                                                       real(b, batch)[1]))
    out = tmp_path / "sft"
    with pytest.raises(FloatingPointError, match="step 2: non-finite loss, grad_norm.*max_nonfinite=1"):
        train_sft.main(SFT_ARGS + ["optim.steps=3", "io.save_every=1", "optim.max_nonfinite=1", f"out_dir={out}"])
    state = torch.load(out / "ckpt" / checkpoint.FILE, weights_only=True)
    assert state["step"] == 1 and all(torch.isfinite(t).all() for t in state["model"].values())


@pytest.fixture(scope="module")
def sft_model(finished):
    return str(finished / "model")


def _nan_reward(monkeypatch):
    real = verifiers.score_batch

    def score_batch(*args, **kwargs):  # a reward that went NaN after the verifiers' own checks
        rewards, metrics = real(*args, **kwargs)
        rewards[0] = float("nan")
        return rewards, metrics
    monkeypatch.setattr(verifiers, "score_batch", score_batch)


def test_grpo_nan_reward_never_reaches_weights_or_checkpoint(sft_model, tmp_path, monkeypatch):
    _nan_reward(monkeypatch)
    out = tmp_path / "m3b"
    args = TINY_ARGS + [f"init={sft_model}", "stage=m3b", "io.save_every=1", "io.eval_every=100",
                        "optim.steps=2", f"out_dir={out}"]
    train_grpo.main(args + ["optim.max_nonfinite=2"])  # both steps skipped, the run finishes
    state = torch.load(out / "ckpt" / checkpoint.FILE, weights_only=True)
    assert not state["optimizer"]["state"]  # no optimiser step ever ran
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    rows = [json.loads(r) for r in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2]
    out2 = tmp_path / "m3b_stop"
    with pytest.raises(FloatingPointError, match="step 1: non-finite reward, adv"):
        train_grpo.main(args[:-1] + ["optim.max_nonfinite=0", f"out_dir={out2}"])
    assert not checkpoint.exists(str(out2 / "ckpt"))


# --- 4. one run per out dir ----------------------------------------------------------------------

def test_second_run_in_the_same_out_dir_is_refused(tmp_path):
    out = tmp_path / "sft"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / runs.LOCK).write_text(json.dumps({"pid": other.pid, "host": socket.gethostname()}))
        with pytest.raises(runs.RunError, match=f"in use by another run \\(pid {other.pid}"):
            train_sft.main(SFT_ARGS + [f"out_dir={out}"])
        assert sorted(os.listdir(out)) == [runs.LOCK]  # nothing written
    finally:
        other.kill()
        other.wait()


def test_stale_lock_is_taken_over(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / runs.LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    path = runs.acquire(str(tmp_path))
    assert f"taking over the stale lock {path}" in capsys.readouterr().out
    assert json.load(open(path)) == {"pid": os.getpid(), "host": socket.gethostname()}
    assert runs.acquire(str(tmp_path)) == path  # this process again: reused
    runs.release(path)
    assert not os.path.exists(path)


def test_lock_of_a_killed_unreaped_run_is_stale(tmp_path):
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        for _ in range(100):  # until it has exited (not reaped: no wait() yet)
            with open(f"/proc/{zombie.pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.05)
        assert not runs._alive(zombie.pid) and runs._alive(os.getpid())
    finally:
        zombie.wait()


def test_lock_of_another_host_is_never_taken_over(tmp_path):
    (tmp_path / runs.LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(runs.RunError, match="pid 1 on host elsewhere.*delete the lock"):
        runs.acquire(str(tmp_path))


# --- 5. worlds never overwrite each other --------------------------------------------------------

def _tiny_world(**kw):
    return WorldConfig(**{"n_sft": 30, "n_rl": 10, "n_heldout_per_family": 1, **kw})


def test_world_cache_never_touches_a_users_world_dir(tmp_path):
    user = tmp_path / "world"
    user.mkdir()
    (user / "sft.jsonl").write_text("mine\n")
    cfg = config.parse(["world.n_sft=30", "world.n_rl=10", "world.n_heldout_per_family=1",
                        f"out_dir={tmp_path}/sft"])
    paths = world.build(cfg.world, cfg.world.dir)
    assert os.path.dirname(paths["dir"]) == str(tmp_path / "worlds")
    assert (user / "sft.jsonl").read_text() == "mine\n"


def test_other_settings_get_their_own_world(tmp_path):
    a = world.build(_tiny_world(), str(tmp_path))
    snapshot = {k: open(a[k]).read() for k in ("sft", "rl", "heldout", "kb")}
    b = world.build(_tiny_world(n_sft=60), str(tmp_path))
    assert a["dir"] != b["dir"]
    assert {k: open(a[k]).read() for k in snapshot} == snapshot
    assert world.build(_tiny_world(), str(tmp_path)) == a  # reused
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p["dir"]) for p in (a, b))  # no temp dirs


def test_world_mismatch_is_an_error_never_an_overwrite(tmp_path):
    a = world.build(_tiny_world(), str(tmp_path))
    stamp = os.path.join(a["dir"], "world.json")
    with open(stamp, "w") as f:
        f.write("{}")
    sft = open(a["sft"]).read()
    with pytest.raises(RuntimeError, match="does not hold the world asked for"):
        world.build(_tiny_world(), str(tmp_path))
    assert open(a["sft"]).read() == sft


def test_world_files_never_written_through_a_symlink(tmp_path):
    outside = tmp_path / "precious.png"
    outside.write_bytes(b"user data")
    link = tmp_path / "sft-00004.png"
    link.symlink_to(outside)
    world._create(str(link), lambda f: f.write(b"new"))
    assert outside.read_bytes() == b"user data"
    assert not link.is_symlink() and link.read_bytes() == b"new"


# --- 6. torn metrics line -------------------------------------------------------------------------

def test_torn_last_metrics_line_is_dropped_with_a_warning(finished, tmp_path):
    out = _copy(finished, tmp_path / "sft")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 1.2')  # a kill mid-write
    with pytest.warns(UserWarning, match=r"metrics.jsonl:3: dropped a torn last line"):
        train_sft.main(SFT_ARGS + [f"out_dir={out}"])  # resumes at the last step: nothing to train
    assert [json.loads(r)["step"] for r in open(out / "metrics.jsonl")] == [1, 2]


def test_bad_metrics_line_before_the_last_names_file_and_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not valid JSON"):
        log.Logger(str(tmp_path), 5, start=3, progress=False)


@pytest.mark.parametrize("kind, module", [("tensorboard", "torch.utils.tensorboard"), ("wandb", "wandb")])
def test_report_to_without_its_package_says_what_to_install(tmp_path, monkeypatch, kind, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import` of it now raises ImportError
    with pytest.raises(ImportError, match=rf"io.report_to={kind} needs the {kind} package: pip install {kind}"):
        log.Logger(str(tmp_path), 5, progress=False, report_to=kind)
    log.Logger(str(tmp_path), 5, enabled=False, report_to=kind).close()  # other ranks never import it


def test_report_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    logger = log.Logger(str(tmp_path), 3, progress=False, report_to="tensorboard")
    for step in (1, 2):
        logger.log(step, {"loss": 1.0 / step, "eval/safety": 0.5, "label": "text is not a scalar"})
    logger.close()
    resumed = log.Logger(str(tmp_path), 3, start=1, progress=False, report_to="tensorboard")  # step 2 again
    resumed.log(2, {"loss": 0.25})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["eval/safety", "loss"]
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 1.0), (2, 0.25)]
    assert [json.loads(r)["loss"] for r in open(tmp_path / "metrics.jsonl")] == [1.0, 0.25]  # still the record


def test_report_to_wandb_run_gets_every_numeric_metric(tmp_path, monkeypatch):
    calls = []

    class Run:
        log = lambda self, metrics, step: calls.append((step, metrics))  # noqa: E731
        finish = lambda self: calls.append("finish")  # noqa: E731

    fake = type(sys)("wandb")
    fake.init = lambda **kw: calls.append(kw) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    logger = log.Logger(str(tmp_path), 3, progress=False, report_to="wandb", run_config={"seed": 1})
    logger.log(1, {"reward": 0.25, "fcr": 0, "note": "x"})
    logger.close()
    assert calls == [{"project": "nanosafe", "name": str(tmp_path), "dir": str(tmp_path), "config": {"seed": 1}},
                     (1, {"reward": 0.25, "fcr": 0}), "finish"]


# --- 7. smaller items: clear errors naming the key or file:line:field ----------------------------

@pytest.mark.parametrize("row, field, what", [
    ({"images": [123]}, "images", "expected a path string, got int 123"),
    ({"response": "  "}, "response", "empty"),
    ({}, "id", "duplicate id 'a' (first at"),
])
def test_bad_sft_rows(tmp_path, row, field, what):
    good = {"id": "a", "prompt": "What is 2 + 3?", "label": "general_rule", "answer": "5", "response": "5"}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, **row}) + "\n")
    with pytest.raises(data.DataError) as e:
        data.read_jsonl(str(path), need_response=True)
    assert f"{path}:2: field '{field}'" in str(e.value) and what in str(e.value)


def test_labels_filter_keeping_nothing_is_an_error(tmp_path):
    path = tmp_path / "rl.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt": "hi", "label": "safety", "meta": {"harmful": True}}) + "\n")
    with pytest.raises(data.DataError, match=r"data.labels='knowledge' keeps 0 of the 1 prompts in .*rl.jsonl"):
        data.filter_labels(data.read_jsonl(str(path)), "knowledge")


@pytest.mark.parametrize("arg, key", [
    ("optim.micro_batch_size=0", "optim.micro_batch_size"), ("rollout.group_size=0", "rollout.group_size"),
    ("io.save_every=0", "io.save_every"), ("optim.lr=nan", "optim.lr"), ("rollout.temperature=inf", "rollout.temperature"),
    ('verifiers.weights={"boxed": NaN}', "verifiers.weights['boxed']"), ("optim.batch_size=6", "optim.batch_size"),
    ("rl.algo=ppo", "rl.algo"), ("world.unsafe_frac=1.5", "world.unsafe_frac"),
])
def test_impossible_values_name_the_key(arg, key):
    with pytest.raises(ValueError, match=f"config key.*{key.replace('[', '.').replace(']', '.')}"):
        config.parse([arg, "optim.micro_batch_size=4"] if "micro" not in arg else [arg])


def test_base_resolves_beside_the_config_file(tmp_path, monkeypatch):
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "base.py").write_text('overrides = {"optim.lr": 0.25}\n')
    (presets / "child.py").write_text('base = "base.py"\noverrides = {"optim.steps": 5}\n')
    monkeypatch.chdir(tmp_path)  # the base is found from any working directory
    cfg = config.parse(["--config", str(presets / "child.py")])
    assert (cfg.optim.lr, cfg.optim.steps) == (0.25, 5)


def test_base_loop_and_unknown_stage_are_errors(tmp_path):
    (tmp_path / "a.py").write_text('base = "b.py"\noverrides = {}\n')
    (tmp_path / "b.py").write_text('base = "a.py"\noverrides = {}\n')
    with pytest.raises(ValueError, match=r"config base loop: .*a.py -> .*b.py -> .*a.py"):
        config.parse(["--config", str(tmp_path / "a.py")])
    (tmp_path / "d.py").write_text('base = "gone.py"\n')
    with pytest.raises(FileNotFoundError, match=r"gone.py \(the base of .*d.py\)"):
        config.parse(["--config", str(tmp_path / "d.py")])
    (tmp_path / "c.py").write_text('stages = {"m3": {"optim.lr": 1.0}}\n')
    with pytest.raises(KeyError, match=r"c.py: stages has unknown stage\(s\) \['m3'\]"):
        config.parse(["--config", str(tmp_path / "c.py")])


def test_train_sft_refuses_an_rl_stage(tmp_path):
    with pytest.raises(SystemExit, match="train_sft.py runs stage=sft"):
        train_sft.main(TINY_ARGS + ["stage=m3a", f"out_dir={tmp_path}/x"])
    assert not (tmp_path / "x").exists()


def test_torch_logprob_rejects_target_ids_outside_the_vocabulary():
    h, w = torch.randn(3, 8), torch.randn(5, 8)
    assert torch.isfinite(fused_logprob(h, w, torch.tensor([0, 4, -100]), impl="torch")).all()
    for bad in (5, -2):
        with pytest.raises(IndexError, match=r"target ids must lie in \[0, 5\)"):
            fused_logprob(h, w, torch.tensor([0, bad, 1]), impl="torch")
