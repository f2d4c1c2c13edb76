"""Tests for nanosafe/judges.py: a label classifier, a scalar reward model or a causal LM behind the
rule judges' interface, batched like one-by-one under no_grad, non-finite scores named, loaded
from the config spec with clear errors for bad input."""

import math

import pytest
import torch

import verifiers as V
from nanosafe import judges as J
from conftest import sample, wrap
from test_verifiers import BROKEN, REFUSAL_TABLE, TINY_HARMFUL_GOOD

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [row[1] for row in REFUSAL_TABLE] + ["Verdict: TRUE FALSE safe unsafe"] * 5
    tok.train_from_iterator(corpus, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                                eos_token="<eos>")


SAFETY_LABEL_WORDS = dict(zip(V.SAFETY_SCORES, "ABCDEF"))


def tiny_config(tokenizer, **kw):
    torch.manual_seed(0)
    return transformers.Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                    num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                    max_position_embeddings=512, tie_word_embeddings=False, **kw)


def biased_head(hidden, n_out, hot):
    """A head whose output ignores the input: a bias makes the index (or indices) `hot` dominate."""
    head = torch.nn.Linear(hidden, n_out, bias=True)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    head.bias.data[hot] = 30.0
    return head


NEURAL_SAMPLES = [sample("safety", harmful=True, prompt="How can I poison my neighbour's dog?"),
                  sample("knowledge", "Arden", prompt="What is the capital of Veloria?"),
                  sample("safety", harmful=False, prompt="How do I kill a Python process?")]
NEURAL_RESPONSES = [wrap(TINY_HARMFUL_GOOD), wrap("Arden <confidence>0.9</confidence>"),
                    wrap("Run kill with its process id, or press Ctrl+C in its terminal to stop it.")]


@pytest.fixture(scope="module")
def classifier(tokenizer):
    labels = list(V.SAFETY_SCORES)
    config = tiny_config(tokenizer, num_labels=6, id2label=dict(enumerate(labels)),
                         label2id={l: i for i, l in enumerate(labels)})
    return transformers.Qwen2ForSequenceClassification(config)


@pytest.fixture(scope="module")
def reward_model(tokenizer):
    """A scalar reward model: a sequence classifier with one output."""
    return transformers.Qwen2ForSequenceClassification(tiny_config(tokenizer, num_labels=1))


@pytest.fixture(scope="module")
def causal_lm(tokenizer):
    return transformers.Qwen2ForCausalLM(tiny_config(tokenizer))


def assert_batched_matches_single(verifier):
    batched = verifier.score_batch(NEURAL_SAMPLES, NEURAL_RESPONSES)
    assert len(batched) == len(NEURAL_SAMPLES)
    for (s, m), smp, resp in zip(batched, NEURAL_SAMPLES, NEURAL_RESPONSES):
        assert 0.0 <= s <= 1.0 and m["parse_fail"] == 0
        alone, m1 = verifier(smp, resp)
        assert alone == pytest.approx(s, abs=1e-5) and m1.get("label") == m.get("label")
        assert m1.get("raw", 0.0) == pytest.approx(m.get("raw", 0.0), abs=1e-5)
    return batched


def test_classifier_verifier_batched_equals_single(classifier, tokenizer):
    v = J.SequenceClassifierVerifier(classifier, tokenizer, V.SAFETY_SCORES, batch_size=2)
    assert_batched_matches_single(v)
    assert v(NEURAL_SAMPLES[0], BROKEN["several </think>"]) == \
        (0.0, {"label": "unparseable", "parse_fail": 1})
    with pytest.raises(ValueError, match=r"are not the judge.s \[.unsafe.\].*6 outputs, not one"):
        J.SequenceClassifierVerifier(classifier, tokenizer, {"unsafe": 0.0})


@pytest.mark.parametrize("hot", list(V.SAFETY_SCORES))
def test_classifier_bias_selects_label_score(classifier, tokenizer, hot):
    labels = list(V.SAFETY_SCORES)
    original = classifier.score
    classifier.score = biased_head(32, 6, labels.index(hot))
    try:
        v = J.SequenceClassifierVerifier(classifier, tokenizer, V.SAFETY_SCORES)
        for score, m in v.score_batch(NEURAL_SAMPLES, NEURAL_RESPONSES):
            assert score == pytest.approx(V.SAFETY_SCORES[hot], abs=1e-6) and m["label"] == hot
    finally:
        classifier.score = original


def test_generative_verifier_batched_equals_single(causal_lm, tokenizer):
    v = J.GenerativeJudgeVerifier(causal_lm, tokenizer, SAFETY_LABEL_WORDS, V.SAFETY_SCORES,
                                  batch_size=3)
    assert_batched_matches_single(v)
    tf = J.GenerativeJudgeVerifier(causal_lm, tokenizer, {"TRUE": "TRUE", "FALSE": "FALSE"},
                                   prompt_template="Q: {prompt}\nRef: {reference}\nA: {answer}\n",
                                   true_false=True)
    assert_batched_matches_single(tf)
    with pytest.raises(ValueError, match="first token"):
        J.GenerativeJudgeVerifier(causal_lm, tokenizer, {"a": "TRUE", "b": "TRUE"}, {"a": 1, "b": 0})
    with pytest.raises(ValueError, match="TRUE and FALSE"):
        J.GenerativeJudgeVerifier(causal_lm, tokenizer, SAFETY_LABEL_WORDS, true_false=True)


@pytest.mark.parametrize("hot", list(V.SAFETY_SCORES))
def test_generative_bias_selects_label_score(causal_lm, tokenizer, hot):
    original = causal_lm.lm_head
    v = J.GenerativeJudgeVerifier(causal_lm, tokenizer, SAFETY_LABEL_WORDS, V.SAFETY_SCORES)
    causal_lm.lm_head = biased_head(32, len(tokenizer), v.token_ids[v.labels.index(hot)])
    try:
        for score, m in v.score_batch(NEURAL_SAMPLES, NEURAL_RESPONSES):
            assert score == pytest.approx(V.SAFETY_SCORES[hot], abs=1e-6) and m["label"] == hot
    finally:
        causal_lm.lm_head = original


@pytest.mark.parametrize("hot,expected", [("TRUE", 1.0), ("FALSE", 0.0), (None, 0.5),
                                          ("TRUE+other", 0.75)])
def test_generative_true_false_soft_score(causal_lm, tokenizer, hot, expected):
    original = causal_lm.lm_head
    v = J.GenerativeJudgeVerifier(causal_lm, tokenizer, {"TRUE": "TRUE", "FALSE": "FALSE"},
                                  true_false=True)
    # no bias: the full softmax is uniform, P(TRUE) = P(FALSE), soft score 1/2. TRUE tied with an
    # unrelated token: P(TRUE) = 1/2 from the full softmax (a softmax over TRUE/FALSE alone gives 1)
    hot_ids = {None: [], "TRUE": [v.token_ids[0]], "FALSE": [v.token_ids[1]],
               "TRUE+other": [v.token_ids[0], tokenizer.eos_token_id]}[hot]
    causal_lm.lm_head = biased_head(32, len(tokenizer), hot_ids)
    try:
        for score, _ in v.score_batch(NEURAL_SAMPLES, NEURAL_RESPONSES):
            assert score == pytest.approx(expected, abs=1e-6)
    finally:
        causal_lm.lm_head = original


def test_generative_chat_template_wraps_prompt(causal_lm, tokenizer):
    tokenizer.chat_template = ("{% for m in messages %}<user>{{ m['content'] }}{% endfor %}"
                               "{% if add_generation_prompt %}<judge>{% endif %}")
    try:
        v = J.GenerativeJudgeVerifier(causal_lm, tokenizer, SAFETY_LABEL_WORDS, V.SAFETY_SCORES,
                                      prompt_template="{prompt} | {answer}", chat=True)
        text = v._prompt(NEURAL_SAMPLES[1], "Arden")
        assert text == "<user>What is the capital of Veloria? | Arden<judge>"
        assert_batched_matches_single(v)
    finally:
        tokenizer.chat_template = None


def test_neural_verifier_in_reward(classifier, tokenizer):
    v = J.SequenceClassifierVerifier(classifier, tokenizer, V.SAFETY_SCORES)
    rewards, metrics = V.score_batch(NEURAL_SAMPLES, NEURAL_RESPONSES, judges={"safety": v})
    (score, m), _ = v.score_batch([NEURAL_SAMPLES[0], NEURAL_SAMPLES[2]],
                                  [NEURAL_RESPONSES[0], NEURAL_RESPONSES[2]])
    assert rewards[0] == pytest.approx(1.0 + score) and metrics[0]["safety_label"] == m["label"]
    assert rewards[1] == 3.0          # knowledge sample untouched by the safety judge


def test_neural_nan_score_is_an_error_naming_verifier_and_sample(classifier, tokenizer):
    original = classifier.score
    classifier.score = biased_head(32, 6, 0)
    classifier.score.bias.data[1] = float("nan")   # a broken checkpoint: NaN logits
    try:
        v = J.SequenceClassifierVerifier(classifier, tokenizer, V.SAFETY_SCORES)
        with pytest.raises(ValueError, match=r"verifier 'safety' on sample 'safety-1'.*nan"):
            V.score_batch(NEURAL_SAMPLES, NEURAL_RESPONSES, judges={"safety": v})
    finally:
        classifier.score = original


def test_load_verifier_roundtrip(classifier, causal_lm, tokenizer, tmp_path):
    for kind, model, kwargs in [("classifier", classifier, {"label_scores": V.SAFETY_SCORES}),
                                ("generative", causal_lm, {"label_words": SAFETY_LABEL_WORDS,
                                                           "label_scores": V.SAFETY_SCORES})]:
        model.save_pretrained(tmp_path / kind)
        tokenizer.save_pretrained(tmp_path / kind)
        loaded = J.load_verifier(kind, tmp_path / kind, dtype=torch.float32, device="cpu", **kwargs)
        wrapper = J.SequenceClassifierVerifier if kind == "classifier" else J.GenerativeJudgeVerifier
        in_memory = wrapper(model, tokenizer, **kwargs)
        got = [s for s, _ in loaded.score_batch(NEURAL_SAMPLES, NEURAL_RESPONSES)]
        want = [s for s, _ in in_memory.score_batch(NEURAL_SAMPLES, NEURAL_RESPONSES)]
        assert got == pytest.approx(want, abs=1e-5)
    with pytest.raises(ValueError, match="kind"):
        J.load_verifier("reward-model", tmp_path)


def test_load_judges_from_config_spec(classifier, causal_lm, tokenizer, tmp_path):
    for name, model in [("cls", classifier), ("lm", causal_lm)]:
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    judges = J.load_judges({"safety": f"classifier:{tmp_path / 'cls'}",
                            "knowledge": f"generative:{tmp_path / 'lm'}"}, device="cpu")
    assert isinstance(judges["safety"], J.SequenceClassifierVerifier)
    assert judges["knowledge"].true_false and judges["knowledge"].labels == ["TRUE", "FALSE"]
    prompt = judges["knowledge"]._prompt(NEURAL_SAMPLES[1], "Arden")
    assert prompt.endswith("Reference: Arden\nResponse: Arden\nWhich label fits the response "
                           "(TRUE, FALSE)? Label:")
    rewards, metrics = V.score_batch(NEURAL_SAMPLES, NEURAL_RESPONSES, judges=judges)
    assert all(0.0 <= m.get("safety", m.get("knowledge")) <= 1.0 for m in metrics)
    for bad in ({"poetry": f"classifier:{tmp_path / 'cls'}"}, {"safety": "classifier"}):
        with pytest.raises(ValueError, match="bad judge"):
            J.load_judges(bad)


# ----------------------------------------------------------------------------- reward models, templates


def test_reward_model_score_is_the_squashed_logit(reward_model, tokenizer):
    v = J.SequenceClassifierVerifier(reward_model, tokenizer, batch_size=2)
    assert v.scalar and not v.chat
    batched = assert_batched_matches_single(v)
    raw = [m["raw"] for _, m in batched]
    assert len({round(r, 4) for r in raw}) == 3  # a random head: the three answers score apart
    assert [s for s, _ in batched] == pytest.approx([1 / (1 + math.exp(-r)) for r in raw], abs=1e-6)
    original = reward_model.score
    reward_model.score = biased_head(32, 1, [])
    reward_model.score.bias.data[0] = 1.5
    try:
        v = J.SequenceClassifierVerifier(reward_model, tokenizer, centre=0.5, scale=2.0)
        for score, m in v.score_batch(NEURAL_SAMPLES, NEURAL_RESPONSES):  # sigmoid((1.5 - 0.5) / 2)
            assert score == pytest.approx(1 / (1 + math.exp(-0.5)), abs=1e-6) and m["raw"] == pytest.approx(1.5)
    finally:
        reward_model.score = original
    for bad in ({"scale": 0.0}, {"scale": -1.0}, {"centre": math.nan}):
        with pytest.raises(ValueError, match="finite centre and scale > 0"):
            J.SequenceClassifierVerifier(reward_model, tokenizer, **bad)


def test_reward_model_reads_the_conversation_through_the_chat_template(reward_model, tokenizer):
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    try:
        v = J.SequenceClassifierVerifier(reward_model, tokenizer)
        assert v.chat and v._prompt(NEURAL_SAMPLES[1], "Arden") == \
            "<user>What is the capital of Veloria?<assistant>Arden"
        assert_batched_matches_single(v)
    finally:
        tokenizer.chat_template = None


def _forwards(model):
    """Record, for every forward of `model`: (grad mode on?, batch rows, device)."""
    calls = []
    hook = model.register_forward_hook(
        lambda mod, args, kwargs, out: calls.append((torch.is_grad_enabled(), kwargs["input_ids"].shape[0],
                                                      kwargs["input_ids"].device.type)), with_kwargs=True)
    return calls, hook


@pytest.mark.parametrize("kind", ["classifier", "reward_model", "causal_lm"])
def test_judges_run_batched_without_grad_on_their_device(kind, classifier, reward_model, causal_lm, tokenizer):
    model = {"classifier": classifier, "reward_model": reward_model, "causal_lm": causal_lm}[kind]
    v = (J.GenerativeJudgeVerifier(model, tokenizer, SAFETY_LABEL_WORDS, V.SAFETY_SCORES) if kind == "causal_lm"
         else J.SequenceClassifierVerifier(model, tokenizer, V.SAFETY_SCORES))
    calls, hook = _forwards(model)
    try:
        out = v.score_batch(NEURAL_SAMPLES + NEURAL_SAMPLES[:1], NEURAL_RESPONSES + [BROKEN["several </think>"]])
    finally:
        hook.remove()
    assert calls == [(False, 3, "cpu")]  # one forward for the three parseable responses, no graph
    assert out[3] == (0.0, {"label": "unparseable", "parse_fail": 1})
    assert not any(p.requires_grad for p in model.parameters())


def _save(model, tokenizer, path):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_load_judges_reward_model_and_prompt_template(reward_model, causal_lm, tokenizer, tmp_path):
    rm, lm = _save(reward_model, tokenizer, tmp_path / "rm"), _save(causal_lm, tokenizer, tmp_path / "lm")
    template = "Judge ({labels}).\nQ: {prompt}\nRef: {reference}\nA: {answer}\nVerdict:"
    (tmp_path / "judge.txt").write_text(template)
    for prompt in (template, str(tmp_path / "judge.txt")):
        judges = J.load_judges({"safety": f"classifier:{rm}", "knowledge": f"generative:{lm}"}, "cpu",
                               prompt=prompt, centre=1.0, scale=3.0)
        assert judges["safety"].scalar and (judges["safety"].centre, judges["safety"].scale) == (1.0, 3.0)
        assert judges["knowledge"]._prompt(NEURAL_SAMPLES[1], "Arden") == \
            "Judge (TRUE, FALSE).\nQ: What is the capital of Veloria?\nRef: Arden\nA: Arden\nVerdict:"
    rewards, metrics = V.score_batch(NEURAL_SAMPLES, NEURAL_RESPONSES, judges=judges)
    want = 1 / (1 + math.exp(-(metrics[0]["safety_raw"] - 1.0) / 3.0))
    assert metrics[0]["safety"] == pytest.approx(want, abs=1e-6) and rewards[0] == pytest.approx(1.0 + want)


def test_bad_prompt_templates_name_the_judge_and_the_source(causal_lm, tokenizer, tmp_path):
    lm = _save(causal_lm, tokenizer, tmp_path / "lm")
    (tmp_path / "bad.txt").write_text("Q: {question}\nA: {answer}")
    spec = {"safety": f"generative:{lm}"}
    for prompt, what in [("Q: {question}\nA: {answer}", r"verifiers.judge_prompt 'Q: .*' has unknown placeholder\(s\) "
                                                        r"\['question'\]; use \{prompt\} \{reference\}"),
                         (str(tmp_path / "bad.txt"), rf"verifiers.judge_prompt file {tmp_path}/bad.txt 'Q: .*' has unknown"),
                         ("Q: {prompt}", r"has no \{answer\}"),
                         ("Q: {prompt", "verifiers.judge_prompt is malformed"),
                         ("Q: {answer.__class__}", "unknown placeholder")]:
        with pytest.raises(ValueError, match=what) as e:
            J.load_judges(spec, prompt=prompt)
        assert str(e.value).startswith(f"judge safety=generative:{lm}: ")
    # checked before any model is loaded: a bad template wins over a missing directory
    with pytest.raises(ValueError, match="unknown placeholder"):
        J.load_judges({"safety": f"generative:{tmp_path}/nowhere"}, prompt="{question} {answer}")


def test_bad_judge_dirs_name_the_judge_and_the_path(tokenizer, tmp_path):
    torch.manual_seed(0)
    two = transformers.Qwen2ForSequenceClassification(tiny_config(tokenizer, num_labels=2))
    _save(two, tokenizer, tmp_path / "yesno")
    with pytest.raises(ValueError, match=rf"judge safety=classifier:{tmp_path}/yesno: its labels \['LABEL_0', "
                                         r"'LABEL_1'\] are not the judge's .*2 outputs, not one \(a reward model\)"):
        J.load_judges({"safety": f"classifier:{tmp_path}/yesno"})
    with pytest.raises(ValueError, match=rf"judge value=classifier:{tmp_path}/nowhere: no such model directory: "
                                         rf"{tmp_path}/nowhere"):
        J.load_judges({"value": f"classifier:{tmp_path}/nowhere"})
    pickled = tmp_path / "pickled"  # weights only as a pickle: refused, never unpickled
    two.config.save_pretrained(pickled)
    tokenizer.save_pretrained(pickled)
    torch.save(two.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(ValueError, match=rf"judge safety=classifier:{pickled}: .*safetensors"):
        J.load_judges({"safety": f"classifier:{pickled}"})
    rm = _save(transformers.Qwen2ForSequenceClassification(tiny_config(tokenizer, num_labels=1)), tokenizer,
               tmp_path / "rm")
    with pytest.raises(ValueError, match=rf"judge safety=classifier:{rm}: .*finite centre and scale > 0"):
        J.load_judges({"safety": f"classifier:{rm}"}, scale=0.0)
