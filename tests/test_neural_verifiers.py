"""Tests for verifiers.py's neural verifiers: a sequence classifier or a causal LM behind the rule
judges' interface, batched like one-by-one, non-finite scores named, loaded from the config spec."""

import pytest
import torch

import verifiers as V
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
def causal_lm(tokenizer):
    return transformers.Qwen2ForCausalLM(tiny_config(tokenizer))


def assert_batched_matches_single(verifier):
    batched = verifier.score_batch(NEURAL_SAMPLES, NEURAL_RESPONSES)
    assert len(batched) == len(NEURAL_SAMPLES)
    for (s, m), smp, resp in zip(batched, NEURAL_SAMPLES, NEURAL_RESPONSES):
        assert 0.0 <= s <= 1.0 and m["parse_fail"] == 0
        alone, m1 = verifier(smp, resp)
        assert alone == pytest.approx(s, abs=1e-5) and m1["label"] == m["label"]


def test_classifier_verifier_batched_equals_single(classifier, tokenizer):
    v = V.SequenceClassifierVerifier(classifier, tokenizer, V.SAFETY_SCORES, batch_size=2)
    assert_batched_matches_single(v)
    assert v(NEURAL_SAMPLES[0], BROKEN["several </think>"]) == \
        (0.0, {"label": "unparseable", "parse_fail": 1})
    with pytest.raises(ValueError, match="lacks"):
        V.SequenceClassifierVerifier(classifier, tokenizer, {"unsafe": 0.0})


@pytest.mark.parametrize("hot", list(V.SAFETY_SCORES))
def test_classifier_bias_selects_label_score(classifier, tokenizer, hot):
    labels = list(V.SAFETY_SCORES)
    original = classifier.score
    classifier.score = biased_head(32, 6, labels.index(hot))
    try:
        v = V.SequenceClassifierVerifier(classifier, tokenizer, V.SAFETY_SCORES)
        for score, m in v.score_batch(NEURAL_SAMPLES, NEURAL_RESPONSES):
            assert score == pytest.approx(V.SAFETY_SCORES[hot], abs=1e-6) and m["label"] == hot
    finally:
        classifier.score = original


def test_generative_verifier_batched_equals_single(causal_lm, tokenizer):
    v = V.GenerativeJudgeVerifier(causal_lm, tokenizer, SAFETY_LABEL_WORDS, V.SAFETY_SCORES,
                                  batch_size=3)
    assert_batched_matches_single(v)
    tf = V.GenerativeJudgeVerifier(causal_lm, tokenizer, {"TRUE": "TRUE", "FALSE": "FALSE"},
                                   prompt_template="Q: {prompt}\nRef: {reference}\nA: {answer}\n",
                                   true_false=True)
    assert_batched_matches_single(tf)
    with pytest.raises(ValueError, match="first token"):
        V.GenerativeJudgeVerifier(causal_lm, tokenizer, {"a": "TRUE", "b": "TRUE"}, {"a": 1, "b": 0})
    with pytest.raises(ValueError, match="TRUE and FALSE"):
        V.GenerativeJudgeVerifier(causal_lm, tokenizer, SAFETY_LABEL_WORDS, true_false=True)


@pytest.mark.parametrize("hot", list(V.SAFETY_SCORES))
def test_generative_bias_selects_label_score(causal_lm, tokenizer, hot):
    original = causal_lm.lm_head
    v = V.GenerativeJudgeVerifier(causal_lm, tokenizer, SAFETY_LABEL_WORDS, V.SAFETY_SCORES)
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
    v = V.GenerativeJudgeVerifier(causal_lm, tokenizer, {"TRUE": "TRUE", "FALSE": "FALSE"},
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
        v = V.GenerativeJudgeVerifier(causal_lm, tokenizer, SAFETY_LABEL_WORDS, V.SAFETY_SCORES,
                                      prompt_template="{prompt} | {answer}", chat=True)
        text = v._prompt(NEURAL_SAMPLES[1], "Arden")
        assert text == "<user>What is the capital of Veloria? | Arden<judge>"
        assert_batched_matches_single(v)
    finally:
        tokenizer.chat_template = None


def test_neural_verifier_in_reward(classifier, tokenizer):
    v = V.SequenceClassifierVerifier(classifier, tokenizer, V.SAFETY_SCORES)
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
        v = V.SequenceClassifierVerifier(classifier, tokenizer, V.SAFETY_SCORES)
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
        loaded = V.load_verifier(kind, tmp_path / kind, dtype=torch.float32, device="cpu", **kwargs)
        wrapper = V.SequenceClassifierVerifier if kind == "classifier" else V.GenerativeJudgeVerifier
        in_memory = wrapper(model, tokenizer, **kwargs)
        got = [s for s, _ in loaded.score_batch(NEURAL_SAMPLES, NEURAL_RESPONSES)]
        want = [s for s, _ in in_memory.score_batch(NEURAL_SAMPLES, NEURAL_RESPONSES)]
        assert got == pytest.approx(want, abs=1e-5)
    with pytest.raises(ValueError, match="kind"):
        V.load_verifier("reward-model", tmp_path)


def test_load_judges_from_config_spec(classifier, causal_lm, tokenizer, tmp_path):
    for name, model in [("cls", classifier), ("lm", causal_lm)]:
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    judges = V.load_judges({"safety": f"classifier:{tmp_path / 'cls'}",
                            "knowledge": f"generative:{tmp_path / 'lm'}"}, device="cpu")
    assert isinstance(judges["safety"], V.SequenceClassifierVerifier)
    assert judges["knowledge"].true_false and judges["knowledge"].labels == ["TRUE", "FALSE"]
    prompt = judges["knowledge"]._prompt(NEURAL_SAMPLES[1], "Arden")
    assert prompt.endswith("Reference: Arden\nResponse: Arden\nWhich label fits the response "
                           "(TRUE, FALSE)? Label:")
    rewards, metrics = V.score_batch(NEURAL_SAMPLES, NEURAL_RESPONSES, judges=judges)
    assert all(0.0 <= m.get("safety", m.get("knowledge")) <= 1.0 for m in metrics)
    for bad in ({"poetry": f"classifier:{tmp_path / 'cls'}"}, {"safety": "classifier"}):
        with pytest.raises(ValueError, match="bad judge"):
            V.load_judges(bad)
