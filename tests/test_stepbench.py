"""nanosafe/stepbench.py runs end to end at a very tiny shape (a smoke test: no timing asserts)."""
import json

from nanosafe import stepbench


def test_stepbench_runs_and_prints_a_table(tmp_path, capsys):
    out = tmp_path / "bench.json"
    stepbench.main(["--out", str(out), "--reps", "1", "--no-trl", "--hidden", "16", "model.num_layers=1",
                    "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=4"])
    printed = capsys.readouterr().out
    for row in ("generate", "old log-probs", "update", "step (s)", "tokens/s, generate"):
        assert row in printed
    res = json.loads(out.read_text())
    assert len(res["ours"]) == 2 and res["trl"] is None  # the warm-up and the rep
    assert set(res["medians"]["ours"]) >= {"generate", "reward", "logprobs", "update", "step", "tokens"}
    assert 0 < res["medians"]["ours"]["tokens"] <= 2 * 2 * 4
