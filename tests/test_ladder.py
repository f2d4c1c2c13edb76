"""ladder.sh end to end on a few-step config: every rung trained and evaluated, the summary table
and the AI-45 plot written; a second run redoes nothing."""
import os
import subprocess

from PIL import Image

from conftest import TINY_ARGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNGS = ("sft", "m3a", "m3b", "cale", "search")


def _ladder(out):
    env = dict(os.environ, OUT=str(out), ARGS=" ".join(TINY_ARGS + ["optim.steps=2", "rollout.max_new_tokens=16"]))
    return subprocess.run(["bash", os.path.join(ROOT, "ladder.sh")], env=env, capture_output=True, text=True,
                          timeout=900)


def test_ladder_runs_every_rung_once(tmp_path):
    first = _ladder(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    for rung in RUNGS:
        assert os.path.exists(tmp_path / rung / "model" / "model.safetensors"), rung
        assert os.path.exists(tmp_path / rung / "model" / "eval_tiny.json"), rung
    table = (tmp_path / "summary.txt").read_text().splitlines()
    assert [line.split()[0] for line in table[1:1 + len(RUNGS)]] == list(RUNGS)
    assert Image.open(tmp_path / "ai45.png").size[0] > 100
    stamps = {r: os.path.getmtime(tmp_path / r / "model" / "model.safetensors") for r in RUNGS}
    second = _ladder(tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("done, skipped") == len(RUNGS)
    assert stamps == {r: os.path.getmtime(tmp_path / r / "model" / "model.safetensors") for r in RUNGS}
