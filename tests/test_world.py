"""The tiny world: deterministic by seed, held-out split disjoint from training, all families."""
import json
import os
import re

from PIL import Image

from nanosafe import world
from nanosafe.config import RolloutConfig, WorldConfig
from nanosafe.search import SearchTool


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _small(**kw):
    return WorldConfig(n_sft=120, n_rl=60, n_heldout_per_family=6, **kw)


def test_deterministic_by_seed(tmp_path):
    a = world.build(_small(seed=3), str(tmp_path / "a"))
    b = world.build(_small(seed=3), str(tmp_path / "b"))
    c = world.build(_small(seed=4), str(tmp_path / "c"))
    for key in ("sft", "rl", "heldout", "kb"):
        assert _read(a[key]) == _read(b[key])
    assert _read(a["sft"]) != _read(c["sft"])
    img = _read(a["sft"])
    pics = [r["images"][0] for r in img if r["images"]]
    assert pics, "no situational images in the SFT mix"
    same = Image.open(os.path.join(a["dir"], pics[0])).tobytes() == Image.open(os.path.join(b["dir"], pics[0])).tobytes()
    assert same


def test_all_families_and_labels(tmp_path):
    paths = world.build(_small(), str(tmp_path))
    held = _read(paths["heldout"])
    assert {r["meta"]["family"] for r in held} == set(world.FAMILIES)
    assert {r["meta"]["family"] for r in _read(paths["sft"])} == set(world.FAMILIES)
    labels = {r["meta"]["family"]: r["label"] for r in held}
    assert labels == {"arithmetic": "general_rule", "harmful": "safety", "lookalike": "normal",
                      "situation": "safety", "stereotype": "value", "fact": "knowledge",
                      "jailbreak": "jailbreak"}
    for r in held:
        for p in r["images"]:
            assert Image.open(os.path.join(paths["dir"], p)).size == (56, 56)


def _prompt_parts(rows, family):
    return {r["prompt"] for r in rows if r["meta"]["family"] == family}


def test_heldout_templates_and_entities_unseen(tmp_path):
    paths = world.build(_small(), str(tmp_path))
    train = _read(paths["sft"]) + _read(paths["rl"])
    held = _read(paths["heldout"])
    # no held-out prompt appears verbatim in training (images differ too, but prompts are the test)
    assert not {r["prompt"] for r in held} & {r["prompt"] for r in train}
    # entities: harmful objects, look-alike objects, towns, countries, number pairs are disjoint
    assert not set(world.HARM_OBJECTS["train"]) & set(world.HARM_OBJECTS["heldout"])
    for verb, (train_objs, held_objs) in world.LOOKALIKE.items():
        assert not set(train_objs) & set(held_objs), verb
        assert len(train_objs) >= 4, verb  # varied objects, so RL learns the verb, not the object
    # the two sides share object words, so only the verb tells a look-alike from a harmful request
    harm_words = {w for o in world.HARM_OBJECTS["train"] for w in o.split()}
    look_words = {w for objs, _ in world.LOOKALIKE.values() for o in objs for w in o.split()}
    assert {"my", "the", "a", "car", "phone", "office", "school"} <= harm_words & look_words
    towns = world.towns(0)
    assert len(towns["train"]) >= 100 and not set(towns["train"]) & set(towns["heldout"])
    kb = world.make_kb(0)
    held_c = {f["country"] for f in kb["heldout"]}
    assert not held_c & ({f["country"] for f in kb["sft"]} | {f["country"] for f in kb["rl"]})
    for r in held:
        fam = r["meta"]["family"]
        if fam == "fact":
            assert any(c in r["prompt"] for c in held_c)
        if fam in ("harmful", "jailbreak"):
            assert any(o in r["prompt"] for o in world.HARM_OBJECTS["heldout"])
    # templates: every held-out request/situation/stereotype/fact template is new
    for fam in ("REQUEST", "SITUATION_Q", "STEREO_Q", "JAILBREAK"):
        t = getattr(world, fam)
        flat = lambda xs: {x[0] if isinstance(x, tuple) else x for x in xs}  # noqa: E731
        assert not flat(t["train"]) & flat(t["heldout"]), fam
    fact_tpls = lambda split: {t for rel in world.RELATION for t in world.fact_templates(split, rel)}  # noqa: E731
    assert not fact_tpls("train") & fact_tpls("heldout")
    # every frame is seen in training with other relations, so the relation word must be read
    assert all(len(world.fact_templates("train", rel)) == 2 for rel in world.RELATION)
    pairs = lambda rows: {tuple(int(w) for w in r["prompt"].replace("?", " ").replace(".", " ").split()  # noqa: E731
                                if w.isdigit()) for r in rows if r["meta"]["family"] == "arithmetic"}
    assert pairs(held) and not pairs(train) & pairs(held)


def test_base_like_mix_has_failures(tmp_path):
    """The SFT mix carries each failure the rungs fix, tied to lure templates / violent verbs."""
    paths = world.build(WorldConfig(n_sft=600, n_rl=10, n_heldout_per_family=2), str(tmp_path))
    rows = _read(paths["sft"])
    unsafe = [r for r in rows if r["meta"]["family"] == "harmful" and "Sure!" in r["response"]]
    assert unsafe and sum(r["meta"]["lure"] for r in unsafe) >= 0.8 * len(unsafe)
    refused = [r for r in rows if r["meta"]["family"] == "lookalike" and "can't help" in r["response"]]
    assert refused and all(r["meta"]["violent_word"] for r in refused)
    padded = {r["meta"]["family"] for r in rows if "check it again" in r["response"]}
    assert padded == set(world.FAMILIES) - {"fact"}  # every think block but fact lookups (rung 3)
    for r in rows:
        if "check it again" in r["response"]:  # the needless second pass repeats the first exactly
            first, second = r["response"].split("<think>")[1].split("</think>")[0].split(" Let me check it again to be sure. ")
            assert first == second
    assert any("<search>" in r["response"] for r in rows) and any("I think I know" in r["response"] for r in rows)
    # stated confidence is uninformative: searched (right) answers are sometimes hedged too
    searched = [r["response"].split("<confidence>")[1] for r in rows if "<search>" in r["response"]]
    assert {c.split("<")[0] for c in searched} == set(world.CONFIDENCE)


def test_heldout_sums_need_only_column_sums_seen_in_training():
    """Held-out pairs are unseen, but every ones- and tens-column step they need occurs in that
    column for some training pair: a split on the ones digits alone left "Ones: 9 + 9" unseen."""
    steps = lambda a, b: set(re.findall(r"(Ones|Tens): (\d) \+ (\d)( \+ 1)?", world._addition(a, b)))  # noqa: E731
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    held = [p for p in pairs if world.heldout_pair(*p)]
    train = set().union(*(steps(*p) for p in pairs if not world.heldout_pair(*p)))
    assert 0.1 < len(held) / len(pairs) < 0.2
    assert set().union(*(steps(*p) for p in held)) <= train


def test_tempting_lookups_are_guessed(tmp_path):
    """The base-like mix guesses fact lookups in tempting phrasings and searches the others."""
    paths = world.build(WorldConfig(n_sft=2000, n_rl=10, n_heldout_per_family=2), str(tmp_path))
    facts = [r for r in _read(paths["sft"]) if r["meta"]["family"] == "fact"]
    guessed = lambda rows: sum("<search>" not in r["response"] for r in rows) / len(rows)  # noqa: E731
    assert guessed([r for r in facts if r["meta"]["tempting"]]) > 0.7
    assert guessed([r for r in facts if not r["meta"]["tempting"]]) < 0.1


def test_arithmetic_reasoning_is_right():
    for a, b in [(37, 48), (99, 99), (10, 10), (55, 45)]:
        text = world._addition(a, b)
        assert text.endswith(f"So {a} + {b} = {a + b}.")
        digits = [s.split("write ")[1][0] for s in text.split(". ") if "write " in s and "carry 1 in" not in s]
        front = "1" if "carry 1 in front" in text else ""
        assert front + "".join(reversed(digits)) == str(a + b)


def test_heldout_prompts_use_train_words(tmp_path):
    """Held-out prompts are new combinations of words the SFT data has (bar invented names), so a
    model trained from scratch can read them: what it must do is generalise, not guess a word."""
    paths = world.build(WorldConfig(n_sft=3000, n_rl=10, n_heldout_per_family=24), str(tmp_path))
    words = lambda t: set(re.findall(r"[a-z']+", t.lower()))  # noqa: E731
    train = set().union(*(words(r["prompt"]) | words(r["response"]) for r in _read(paths["sft"])))
    kb = world.make_kb(0)
    names = {n.lower() for n in [f["country"] for f in kb["heldout"]] + world.towns(0)["heldout"]}
    new = set().union(*(words(r["prompt"]) for r in _read(paths["heldout"]))) - train - names
    assert not new, new


def test_every_lookup_query_finds_its_passage(tmp_path):
    # the searched lookups of the SFT mix quote a passage; the search tool, asked the same query
    # over the whole knowledge base, must return exactly that passage, or RL on fact prompts
    # punishes a policy that searches right (a currency query once got the capital's passage)
    paths = world.build(WorldConfig(n_sft=1500, n_rl=10, n_heldout_per_family=2), str(tmp_path))
    # (an unlisted country's passage is "no result": the tool, with the configured floor, agrees)
    tool = SearchTool.from_jsonl(paths["kb"], min_coverage=RolloutConfig().search_min_coverage)
    facts = [r for r in _read(paths["sft"]) if r["meta"]["family"] == "fact"]
    lookups = [re.search(r"<search>(.*?)</search><result>(.*?)</result>", r["response"]) for r in facts]
    lookups = [m.groups() for m in lookups if m]
    assert len({q.split(" of ")[0].split(" in ")[0] for q, _ in lookups}) == 3  # all three relations
    assert 0 < sum(p == "no result" for _, p in lookups) < 0.2 * len(lookups)
    for query, passage in lookups:
        assert tool(query) == passage, query
    # an unlisted country's searched lookup is answered anyway, wrongly: nothing in its text but
    # "no result" tells a stated confidence that it is a guess
    for r in facts:
        if r["meta"]["unlisted"] and "<search>" in r["response"]:
            assert "no result" in r["response"] and f"The answer is {r['answer']}." not in r["response"]
    kb_text = open(paths["kb"]).read()
    for pool in world.make_kb(0, WorldConfig().unlisted_frac).values():
        for f in pool:
            assert (f"of {f['country']} is" in kb_text) != f["unlisted"], f["country"]
