"""nanosafe/evaluate.py's calibration metrics, votes and seed aggregation against hand-computed
values, and eval.py's several-seed summary on fake eval JSONs (no model is trained)."""
import json

import pytest

import eval as eval_script
from nanosafe import config, evaluate as E
from nanosafe.rollout import Rollout


def test_ece_by_hand():
    # bins of width 0.1, p = 1 in the last: bin 9 holds 0.95, 0.95, 1.0 (2 of 3 right, mean p 0.9667),
    # bin 3 holds 0.3, 0.35 (1 of 2), bin 0 holds 0.05 (0 of 1):
    # 3/6 * 0.3 + 2/6 * 0.175 + 1/6 * 0.05 = 0.216667
    facts = [(0.95, True), (0.95, False), (0.3, False), (0.35, True), (1.0, True), (0.05, False)]
    assert E.ece(facts) == pytest.approx(1.3 / 6, abs=1e-12)
    assert E.ece([(0.5, True), (0.5, False)]) == 0.0  # calibrated: half right at 0.5
    assert E.ece([(0.3, True)] * 5) == pytest.approx(0.7)  # the hedge of issue 21: right at 0.3
    assert E.ece([(0.0, True), (1.0, False)]) == 1.0
    # equal-width bins: 0.1 and 0.19 share a bin, 0.09 and 0.1 do not
    assert E.ece([(0.1, True), (0.19, False)]) == pytest.approx(abs(1 - 0.29) / 2)
    assert E.ece([(0.09, True), (0.1, False)]) == pytest.approx((0.91 + 0.1) / 2)
    assert E.ece([]) is None


def test_conf_auroc_by_hand():
    # right [0.9, 0.6, 0.3] against wrong [0.6, 0.2]: 0.9 beats both, 0.6 ties 0.6 (1/2) and beats
    # 0.2, 0.3 beats 0.2 only -> (2 + 1.5 + 1) / 6
    facts = [(0.9, True), (0.6, True), (0.3, True), (0.6, False), (0.2, False)]
    assert E.conf_auroc(facts) == pytest.approx(0.75)
    assert E.conf_auroc([(0.3, True), (0.3, False), (0.3, True)]) == 0.5  # a blanket hedge ranks nothing
    assert E.conf_auroc([(0.9, True), (0.1, False)]) == 1.0
    assert E.conf_auroc([(0.1, True), (0.9, False)]) == 0.0
    # undefined when all right, all wrong, or nothing
    assert E.conf_auroc([(0.9, True), (0.2, True)]) is None
    assert E.conf_auroc([(0.9, False)]) is None
    assert E.conf_auroc([]) is None


def test_lookup_cue_reads_the_last_search():
    look = "<think>I need to look this up.<search>capital of Arde</search><result>{}</result>"
    assert E.lookup_cue("<think>I think I know this.</think>The answer is Kalo.") == "no search"
    assert E.lookup_cue(look.format("no result") + "</think>The answer is Kalo.") == "no result"
    assert E.lookup_cue(look.format("The capital of Arde is Kalo.") + "</think>It is Kalo.") == "passage"
    # a second search decides: nothing first, then a passage
    assert E.lookup_cue(look.format("no result") + "<search>capital of Arden</search><result>The capital "
                        "of Arden is Kalo.</result></think>It is Kalo.") == "passage"


def test_cue_ceiling_by_hand():
    # the docstring's example: a passage right 3 of 4 times (p 0.75), no result wrong twice (p 0):
    # right [0.75] * 3 against wrong [0.75, 0, 0]: (3 * 0.5 + 6) / 9; wrong at 0.75 >= c* 0.7: 1 of 6
    facts = [("passage", True)] * 3 + [("passage", False)] + [("no result", False)] * 2
    out = E.cue_ceiling(facts, c_star=0.7)
    assert out["cue_auroc"] == pytest.approx(7.5 / 9) and out["cue_false_certain"] == pytest.approx(1 / 6)
    assert E.cue_ceiling(facts, c_star=0.8)["cue_false_certain"] == 0.0  # 0.75 is under this c*
    # every wrong answer behind a cue of its own: the cue separates them all, nothing false-certain
    assert E.cue_ceiling([("passage", True), ("no result", False)], 0.7) == {"cue_auroc": 1.0, "cue_false_certain": 0.0}
    assert E.cue_ceiling([], 0.7) == {"cue_auroc": None, "cue_false_certain": None}


def test_votes_by_hand():
    # majority: 2-2 tie between Arden and Brill -> the first (Arden, right); weighted: Brill
    # 0.9 + 0.95 against Arden 0.3 + 0.2 (wrong). Answers compare lower-cased, word by word.
    assert E.votes([("It is Arden.", 0.3, True), ("It is Brill.", 0.9, False),
                    ("it is ARDEN", 0.2, True), ("It is Brill!", 0.95, False)]) == (True, False)
    # majority: Brill (2 of 4, wrong); weighted: Arden 0.9 beats Brill 0.3
    assert E.votes([("Brill", 0.2, False), ("Arden", 0.9, True), ("Kalo", 0.3, False),
                    ("brill.", 0.1, False)]) == (False, True)
    assert E.votes([("A", 0.5, True), ("B", 0.5, False)]) == (True, True)  # ties go to the first


def test_over_seeds_by_hand():
    seeds = [{"safety": 0.2, "knowledge": None, "conf_auroc": None},
             {"safety": 0.5, "knowledge": 0.4},
             {"safety": 0.8, "knowledge": 0.6, "conf_auroc": None}]
    agg = E.over_seeds(seeds)
    assert agg["safety"] == pytest.approx((0.5, 0.2, 0.8))
    assert agg["knowledge"] == pytest.approx((0.5, 0.4, 0.6))  # over the seeds that have it
    assert agg["conf_auroc"] is None


def _sample(sid, label, answer, family):
    return {"id": sid, "prompt": "q?", "images": [], "answer": answer, "label": label,
            "meta": {"family": family}}


def test_evaluate_reports_calibration_and_votes(monkeypatch):
    """evaluate() with generation replaced by fixed texts: greedy and sampled calibration, and the
    votes over each fact lookup's 4 samples (the arithmetic prompt takes no part)."""
    def c(a, p=None):
        return f"<think>look it up</think> It is {a}." + ("" if p is None else f" <confidence>{p}</confidence>")
    texts = {("k1", True): [c("Arden")],  # no confidence: p = 1
             ("k2", True): [c("Brill", 0.4)],
             ("a1", True): ["<think>7 + 8</think> \\boxed{15}"],
             ("k1", False): [c("Arden", 0.3), c("Brill", 0.9), c("Arden", 0.2), c("Brill", 0.95)],
             ("k2", False): [c("Kalo", 0.9), c("Kalo", 0.8), c("Brill", 0.2), c("Mirth", 0.1)],
             ("a1", False): ["<think>7 + 8</think> \\boxed{15}"] * 4}

    def generate(bundle, samples, dcfg, rcfg, n=1, greedy=False, tool=None, prompts=None):
        return [Rollout(s, {}, ids=[1, 2, 3], text=texts[s["id"], greedy][k]) for s in samples for k in range(n)]
    monkeypatch.setattr(E.rollout, "generate", generate)
    monkeypatch.setattr(E.data, "encode_prompt", lambda *a: {})
    samples = [_sample("k1", "knowledge", "Arden", "fact"), _sample("a1", "general_rule", "15", "arith"),
               _sample("k2", "knowledge", "Kalo", "fact")]
    res = E.evaluate(None, samples, config.parse([]), n_sampled=4)
    g, s = res["summary"], res["summary_sampled"]
    # greedy: Arden at p = 1 (right, bin 9: gap 0), Brill at 0.4 (wrong, bin 4: gap 0.4) -> 0.4 / 2
    assert g["ece"] == pytest.approx(0.2) and g["conf_auroc"] == 1.0 and "vote_n" not in g
    # neither searched: one cue, right half the time, so the cue alone ranks nothing
    assert (g["cue_auroc"], g["cue_false_certain"]) == (0.5, 0.0)
    # sampled: right p [0.3, 0.2, 0.9, 0.8] against wrong [0.9, 0.95, 0.2, 0.1]: 8 of 16 pairs;
    # per-bin gaps 0.7 (bin 3), -1.75 (bin 9), 0.6 (bin 2), 0.2 (bin 8), -0.1 (bin 1) over 8
    assert s["conf_auroc"] == pytest.approx(0.5) and s["ece"] == pytest.approx(3.35 / 8)
    # k1: majority Arden (a 2-2 tie, first) right, weighted Brill wrong; k2: Kalo both ways
    assert (s["vote_majority"], s["vote_weighted"], s["vote_n"]) == (1.0, 0.5, 2)
    assert res["families_sampled"]["fact"]["ece"] == s["ece"] and res["families_sampled"]["arith"]["ece"] is None
    assert "vote of 4 samples (2 prompts): majority 1.00, confidence-weighted 0.50" in E.table(res)
    assert "vote_n" not in E.evaluate(None, samples, config.parse([]), n_sampled=3)["summary_sampled"]


def _fake_eval(path, safety, capability, knowledge=None):
    path.mkdir(parents=True)
    (path / "eval_tiny.json").write_text(json.dumps({
        "summary": {"safety": safety, "capability": capability, "knowledge": knowledge, "ece": None},
        "summary_sampled": {"safety": safety / 2, "vote_weighted": 0.5}}))
    return str(path)


def test_compare_over_seeds_on_fake_eval_jsons(tmp_path, capsys):
    """ladder.sh's last step on three seeds' eval JSONs: mean [min, max] per rung, one plot path per seed."""
    pytest.importorskip("matplotlib")
    values = {"sft": [(0.2, 0.5), (0.4, 0.6), (0.6, 0.7)], "m3b": [(0.8, 0.6), (0.9, 0.6), (1.0, 0.9)]}
    models, names = [], []
    for rung, per_seed in values.items():
        for seed, (safety, capability) in enumerate(per_seed):
            models.append(_fake_eval(tmp_path / f"seed{seed}" / rung / "model", safety, capability))
            names.append(rung)
    plot = tmp_path / "ai45.png"
    rows = eval_script.main(["--reuse", "--plot", str(plot), "--model", *models, "--names", *names])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("mean [min, max] over seed0, seed1, seed2")
    assert out[1].split() == ["metric", "sft", "m3b"]
    table = {line[:24].strip(): line[24:] for line in out[2:] if not line.startswith("wrote")}
    assert table["safety"].split() == ["0.40", "[0.20,", "0.60]", "0.90", "[0.80,", "1.00]"]
    assert table["capability"].split() == ["0.60", "[0.50,", "0.70]", "0.70", "[0.60,", "0.90]"]
    assert table["safety (sampled)"].split() == ["0.20", "[0.10,", "0.30]", "0.45", "[0.40,", "0.50]"]
    assert table["knowledge"].split() == ["-", "-"] and table["ece"].split() == ["-", "-"]
    assert [r["run"] for r in rows["m3b"]] == ["seed0", "seed1", "seed2"] and plot.stat().st_size > 0
    # one seed per rung: today's table, a row per rung
    eval_script.main(["--reuse", "--plot", str(plot), "--model", models[0], models[3], "--names", "sft", "m3b"])
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:3]] == ["sft", "m3b"]


def test_ai45_plot_one_path_per_seed(tmp_path):
    pytest.importorskip("matplotlib")
    from nanosafe.plot import ai45_plot
    points = [{"name": n, "seed": s, "capability": c, "safety": y} for s, pts in
              (("seed0", [("sft", 0.5, 0.2), ("m3b", 0.6, 0.8)]), ("seed1", [("sft", 0.7, 0.4), ("m3b", 0.9, 0.9)]))
              for n, c, y in pts]
    ax = ai45_plot(points, str(tmp_path / "p.png"))
    assert ax.lines[0].get_xydata().tolist() == [[0.5, 0.2], [0.6, 0.8]]
    assert ax.lines[1].get_xydata().tolist() == [[0.7, 0.4], [0.9, 0.9]]
    assert ax.lines[2].get_xydata().tolist() == [[0, 0], [1, 1]]  # the diagonal after the paths
    assert [t.get_text() for t in ax.texts] == ["sft", "m3b"]  # names once, by the first seed's points
    assert [t.get_text() for t in ax.get_legend().get_texts()][:2] == ["seed0", "seed1"]
