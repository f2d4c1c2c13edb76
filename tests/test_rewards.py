"""Your own rewards and labels from config (DESIGN §5): loading `module:fn` / `file.py:fn`, every
bad-input path, label-required fields at read time, and the README's worked example end to end."""
import json
import math
import os

import pytest

import verifiers
from conftest import TINY_ARGS, sample, wrap
from nanosafe import config, data, model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REWARDS = '''
import math
def good(sample, response):
    return (1.0 if sample["answer"] in response else 0.0), {"chars": len(response), "note": "x"}
def plain(sample, response):
    return 0.5
def one_arg(sample):
    return 1.0
def over(sample, response):
    return 1.5
def nan(sample, response):
    return math.nan
def text(sample, response):
    return "1"
def not_dict(sample, response):
    return 0.5, [1]
def boom(sample, response):
    return sample["no_such_field"]
CONST = 3
'''


@pytest.fixture
def rewards_file(tmp_path, monkeypatch):
    """my_rewards.py in a fresh working directory, which relative specs are read from."""
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    monkeypatch.chdir(tmp_path)
    return "my_rewards.py"


def _vcfg(**kw):
    return config.VerifierConfig(**kw)


def test_load_by_file_and_by_module(rewards_file, monkeypatch, tmp_path):
    s = sample("general", answer="Arden")
    fn = verifiers.load_reward("good", f"{rewards_file}:good")
    assert fn(s, wrap("It is Arden.")) == (1.0, {"chars": len(wrap("It is Arden.")), "note": "x"})
    assert verifiers.load_reward("p", f"{rewards_file}:plain")(s, "x") == (0.5, {})
    (tmp_path / "pkg_rewards_mod.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert verifiers.load_reward("m", "pkg_rewards_mod:good")(s, "no") == (0.0, {"chars": 2, "note": "x"})


@pytest.mark.parametrize("spec, match", [
    ("no_such_module_xyz:fn", r"\['r'\] = 'no_such_module_xyz:fn': no module named 'no_such_module_xyz'"),
    ("missing.py:good", r"file not found: .*missing\.py"),
    ("my_rewards.py:nope", r"my_rewards\.py has no attribute 'nope'"),
    ("my_rewards.py:CONST", r"'my_rewards\.py:CONST': not a function \(int 3\)"),
    ("my_rewards.py:one_arg", r"\(sample\) cannot be called as fn\(sample, response\)"),
    ("my_rewards.py", r"expected 'module:function' or 'path/to/file\.py:function'"),
])
def test_bad_reward_spec_is_a_clear_error_at_load(rewards_file, spec, match):
    with pytest.raises(ValueError, match=match):
        verifiers.load_reward("r", spec)
    with pytest.raises(ValueError, match=match):  # the config path: before any data or model
        verifiers.label_fields(_vcfg(rewards={"r": spec}))


def test_a_missing_import_inside_a_module_is_not_reported_as_the_module(tmp_path, monkeypatch):
    (tmp_path / "needs_missing_dep.py").write_text("import no_such_dep_abc\ndef f(s, r):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dep_abc"):
        verifiers.load_reward("r", "needs_missing_dep:f")


@pytest.mark.parametrize("fn, match", [
    ("over", r"returned 1\.5; expected a score in \[0, 1\]"),
    ("nan", r"returned nan"),
    ("text", r"returned '1'"),
    ("not_dict", r"returned \(0\.5, \[1\]\)"),
    ("boom", r"raised KeyError: 'no_such_field'"),
])
def test_bad_score_names_the_function_and_the_sample(rewards_file, fn, match):
    s = {**sample("normal"), "_where": "f.jsonl:7"}
    with pytest.raises(ValueError, match=rf"'{fn}'.*on sample 'normal-1' \(f\.jsonl:7\).*{match}"):
        verifiers.score_batch([s], [wrap("Sure, here it is.")], rewards={fn: f"{rewards_file}:{fn}"},
                              recipes={"normal": {fn: 1.0}})


def test_reward_names_and_recipes_checked(rewards_file):
    with pytest.raises(ValueError, match=r"verifiers.rewards\['safety'\].*'safety' is a built-in verifier"):
        verifiers.label_fields(_vcfg(rewards={"safety": f"{rewards_file}:good"}))
    with pytest.raises(ValueError, match=r"verifiers.rewards\['x'\] = \['a'\]: expected 'module:function'"):
        verifiers.label_fields(_vcfg(rewards={"x": ["a"]}))
    with pytest.raises(ValueError, match=r"verifiers.recipes\['mine'\] = \{'goood': 1\.0\}.*'good'"):
        verifiers.label_fields(_vcfg(rewards={"good": f"{rewards_file}:good"}, recipes={"mine": {"goood": 1.0}}))
    with pytest.raises(ValueError, match=r"verifiers.recipes\['mine'\] = \{'boxed': nan\}"):
        verifiers.label_fields(_vcfg(recipes={"mine": {"boxed": math.nan}}))
    with pytest.raises(ValueError, match=r"verifiers.recipes\['mine'\] = 1\.0"):
        verifiers.label_fields(_vcfg(recipes={"mine": 1.0}))


def test_custom_reward_in_a_recipe_scores_and_reports(rewards_file):
    v = _vcfg(rewards={"good": f"{rewards_file}:good"},
              recipes={"mine": {"good": 2.0}, "normal": {"normal": 1.0, "good": 0.5}},
              weights={"mine.boxed": 1.0})
    fields = verifiers.label_fields(v)
    assert fields["mine"] == {"answer": str} and fields["safety"] == {"meta.harmful": bool}
    samples = [sample("mine", answer="42"), sample("normal", answer="menu")]
    texts = [wrap("\\boxed{42}"), wrap("Open the File menu, then pick Save As and choose a folder.")]
    rewards, metrics = verifiers.score_batch(samples, texts, weights=v.weights, rewards=v.rewards, recipes=v.recipes)
    # mine: format 1 + good 2 x 1 + boxed 1 x 1; normal: format 1 + normal 1 + good 0.5 x 1
    assert rewards == [4.0, 2.5] and metrics[1]["normal"] == 1.0
    assert metrics[0]["good"] == 1.0 and metrics[0]["good_chars"] == len(texts[0]) and metrics[0]["good_note"] == "x"
    with pytest.raises(ValueError, match="unknown label 'other'"):
        verifiers.score_batch([sample("other")], [texts[0]], rewards=v.rewards, recipes=v.recipes)


def _jsonl(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"id": f"r{i}", "prompt": "q?", **r}) + "\n" for i, r in enumerate(rows)))
    return str(path)


def test_unknown_label_needs_a_recipe(tmp_path):
    path = _jsonl(tmp_path, [{"label": "normal"}, {"label": "mytask", "answer": "7"}])
    with pytest.raises(data.DataError, match=r"d\.jsonl:2: field 'label': unknown label 'mytask'.*verifiers\.recipes"):
        data.read_jsonl(path)
    labels = verifiers.label_fields(_vcfg(recipes={"mytask": {"boxed": 1.0}}))
    assert [r["label"] for r in data.read_jsonl(path, labels=labels)] == ["normal", "mytask"]
    kept, dropped = data.filter_labels(data.read_jsonl(path, labels=labels), "mytask", labels)
    assert [r["id"] for r in kept] == ["r1"] and dropped == {"normal": 1}
    with pytest.raises(data.DataError, match="unknown label"):
        data.filter_labels(data.read_jsonl(path, labels=labels), "mytask")  # the built-in labels only


@pytest.mark.parametrize("row, recipes, match", [
    ({"label": "safety"}, {}, r"d\.jsonl:2: field 'meta\.harmful': label 'safety' needs a bool"),
    ({"label": "jailbreak", "meta": {"harmful": "yes"}}, {}, r"d\.jsonl:2: field 'meta\.harmful'.*got 'yes'"),
    ({"label": "general_rule"}, {}, r"d\.jsonl:2: field 'answer': label 'general_rule' needs a str"),
    ({"label": "knowledge"}, {}, r"d\.jsonl:2: field 'answer'"),
    ({"label": "mytask"}, {"mytask": {"general": 1.0}}, r"d\.jsonl:2: field 'answer': label 'mytask'"),
    ({"label": "normal"}, {"normal": {"normal": 1.0, "boxed": 0.5}}, r"d\.jsonl:2: field 'answer'"),
])
def test_label_required_fields_checked_at_read_time(tmp_path, row, recipes, match):
    path = _jsonl(tmp_path, [{"label": "value"}, row])
    with pytest.raises(data.DataError, match=match):
        data.read_jsonl(path, labels=verifiers.label_fields(_vcfg(recipes=recipes)))


def test_a_recipe_that_switches_a_verifier_off_drops_its_field(tmp_path):
    path = _jsonl(tmp_path, [{"label": "knowledge"}])
    labels = verifiers.label_fields(_vcfg(weights={"knowledge.knowledge": 0.0}))
    assert data.read_jsonl(path, labels=labels)[0]["label"] == "knowledge"


def test_recipes_and_rewards_from_the_command_line():
    cfg = config.parse(['verifiers.recipes={"mytask": {"boxed": 1}}', 'verifiers.rewards={"c": "m:f"}'])
    assert cfg.verifiers.recipes == {"mytask": {"boxed": 1}} and cfg.verifiers.rewards == {"c": "m:f"}


def test_sft_on_given_data_builds_no_world(tmp_path):
    import train_sft
    rows = [{"label": "normal", "response": "<think>ok</think> Fine.", "prompt": f"q{i}?"} for i in range(4)]
    train, held = _jsonl(tmp_path, rows, "train.jsonl"), _jsonl(tmp_path, rows[:2], "held.jsonl")
    train_sft.main(TINY_ARGS + [f"data.train={train}", f"data.heldout={held}", "optim.steps=1",
                                "optim.batch_size=4", f"out_dir={tmp_path}/run/sft"])
    assert os.path.exists(tmp_path / "run" / "sft" / "model" / "config.json")
    assert not os.path.exists(tmp_path / "run" / "worlds")


def test_worked_example_through_train_grpo_and_eval(tiny, tmp_path, monkeypatch):
    """The README's worked example as a user runs it, from the repository root, with no library
    patching: convert the CSVs, RL with examples/my_task.py's reward functions and new label, eval."""
    import eval as eval_script
    import train_grpo
    from nanosafe import convert
    cfg, _, bundle = tiny
    init = str(tmp_path / "start" / "model")
    model.export(bundle, init)  # the tiny model as a starting policy (the README uses a short SFT)
    monkeypatch.chdir(ROOT)  # the example's paths are relative to the repository root
    for split in ("train", "heldout"):
        convert.main([f"examples/arith_{split}.csv", str(tmp_path / f"{split}.jsonl"), "--map", "prompt=question",
                      "--label", "arith"])
    small = [a for a in TINY_ARGS if not a.startswith(("world.", "model.", "optim.steps"))]
    args = ["--config", "examples/my_task.py", *small, f"data.train={tmp_path}/train.jsonl",
            f"data.heldout={tmp_path}/heldout.jsonl"]
    out = tmp_path / "run" / "m3b"
    train_grpo.main(args + ["stage=m3b", f"init={init}", "optim.steps=2", f"out_dir={out}"])
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward/arith", "verifier/arith/answer_match", "verifier/arith/answer_match_has_number",
                "verifier/arith/concise", "verifier/arith/concise_words", "eval/reward"):
        assert key in rows[-1], key
    assert 0.0 <= rows[-1]["verifier/arith/concise"] <= 1.0 and rows[-1]["verifier/arith/concise_words"] > 0
    assert not os.path.exists(tmp_path / "run" / "worlds")  # data given: no tiny world built
    result = eval_script.main(args + ["--model", str(out / "model"), "--data", f"{tmp_path}/heldout.jsonl"])
    assert result["families"]["arith"]["n"] == 4 and result["summary"]["reward"] is not None
    assert "concise_words" in result["examples"][0]
