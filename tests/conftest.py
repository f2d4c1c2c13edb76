import os
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton: run kernels on the CPU
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402

# A few-second version of the tiny default: small world, small model. Tests that train use
# these as key=value overrides so they go through the same config parsing as a user.
TINY_ARGS = ["world.n_sft=48", "world.n_rl=24", "world.n_heldout_per_family=2", "model.hidden_size=32",
             "model.intermediate_size=64", "model.num_layers=1", "model.num_heads=2", "model.num_kv_heads=1",
             "model.vision_depth=1", "model.vision_hidden=32", "model.vocab_size=400",
             "optim.batch_size=8", "optim.micro_batch_size=4", "optim.steps=4", "io.progress=false",
             "io.eval_every=2", "io.save_every=2", "io.log_every=1", "rollout.max_new_tokens=24",
             "rollout.group_size=2", "rollout.prompts_per_step=4", "io.eval_samples=1"]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(cfg, world paths, bundle) for a tiny VL model and world, built once per test session."""
    import torch

    from nanosafe import config, model, world
    torch.manual_seed(0)  # the same random weights every session, whatever ran before
    out = tmp_path_factory.mktemp("tiny")
    cfg = config.parse(TINY_ARGS + [f"out_dir={out}/sft"])
    paths = world.build(cfg.world, cfg.world.dir)
    bundle = model.make(cfg, lambda: world.corpus(paths))
    return cfg, paths, bundle


def crash_then_resume(script, args, crash_step, monkeypatch):
    """Run script.main(args) until the checkpoint of `crash_step` is written, crash there, then run
    it again so it resumes: the test of "stop at step k and resume = uninterrupted"."""
    from nanosafe import checkpoint
    real_save = checkpoint.save

    def save_then_crash(ckpt_dir, m, opt, sched, step, *args, **kwargs):
        real_save(ckpt_dir, m, opt, sched, step, *args, **kwargs)
        if step == crash_step:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(script.checkpoint, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        script.main(args)
    monkeypatch.setattr(script.checkpoint, "save", real_save)
    script.main(args)


# ----------------------------------------------------------------------------- verifier test helpers

def wrap(answer, think="The user asks something; I consider it."):
    """A well-formed response with `answer` after the think block."""
    return f"<think>{think}</think> {answer}"


def sample(label, answer=None, harmful=None, prompt="q?"):
    meta = {} if harmful is None else {"harmful": harmful}
    return {"id": f"{label}-1", "prompt": prompt, "images": [], "answer": answer, "label": label,
            "meta": meta}


def reward(sample, response, **kwargs):
    """(reward, metrics) of one response through verifiers.score_batch."""
    import verifiers
    rewards, metrics = verifiers.score_batch([sample], [response], **kwargs)
    return rewards[0], metrics[0]
