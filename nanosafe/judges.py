"""Neural judges (DESIGN §5): a label classifier, a scalar reward model (a classifier with one
output) or a generative judge behind the rule verifiers' interface plus a batched `.score_batch`,
on their model's device, under no_grad, failing closed on an unparseable response."""
import math
import os
import string

import torch

from verifiers import SAFETY_SCORES, parse_response

def check_template(template, allowed=("prompt", "reference", "answer"), where="prompt template"):
    """A prompt template's placeholders must be known and include {answer}: ValueError otherwise."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise ValueError(f"{where} is malformed ({e}); write a literal brace as {{{{ or }}}}") from None
    unknown = sorted(fields - set(allowed))
    if unknown or "answer" not in fields:
        raise ValueError(f"{where} {template[:80]!r} has " + (f"unknown placeholder(s) {unknown}" if unknown
                         else "no {answer}") + f"; use {' '.join('{' + a + '}' for a in allowed)}")
    return template

class _NeuralVerifier:
    """Shared plumbing: parse (fail closed), build judge prompts, batch, no_grad, model device."""

    def __init__(self, model, tokenizer, template, batch_size):
        self.model, self.tokenizer = model.eval().requires_grad_(False), tokenizer
        self.template, self.batch_size = check_template(template), batch_size
        if tokenizer.pad_token is None:  # batching needs one; many causal LMs ship without
            tokenizer.pad_token = tokenizer.eos_token

    def _prompt(self, sample, answer):
        fields = {"prompt": sample["prompt"], "answer": answer, "reference": sample.get("answer") or ""}
        return self.template.format_map(fields)

    def score_batch(self, samples, responses):
        results, todo = [None] * len(responses), []
        for i, (sample, response) in enumerate(zip(samples, responses, strict=True)):
            p = parse_response(response)
            if p.ok:
                todo.append((i, self._prompt(sample, p.answer)))
            else:
                results[i] = (0.0, {"label": "unparseable", "parse_fail": 1})
        device = next(self.model.parameters()).device
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            with torch.no_grad():
                scores, metrics = self._score_texts([text for _, text in chunk], device)
            for (i, _), score, m in zip(chunk, scores.tolist(), metrics):
                results[i] = (min(max(score, 0.0), 1.0), {**m, "parse_fail": 0})
        return results

    def __call__(self, sample, response):
        return self.score_batch([sample], [response])[0]

class SequenceClassifierVerifier(_NeuralVerifier):
    """Any AutoModelForSequenceClassification. Labels: score = sum_label softmax(logits)[label] *
    label_scores[label]. One output (a reward model): score = sigmoid((r - centre) / scale)."""

    def __init__(self, model, tokenizer, label_scores=None, template="{prompt}\n\n{answer}",
                 batch_size=16, max_length=2048, centre=0.0, scale=1.0):
        super().__init__(model, tokenizer, template, batch_size)
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        self.scalar = len(self.labels) == 1
        self.chat = self.scalar and tokenizer.chat_template is not None
        missing = set(self.labels) - set(label_scores or {})
        if self.scalar and not (math.isfinite(centre) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"reward-model squashing needs a finite centre and scale > 0, got {centre}, {scale}")
        elif not self.scalar and missing:
            raise ValueError(f"its labels {self.labels} are not the judge's {sorted(label_scores or {})} (missing "
                             f"{sorted(missing)}), and it has {len(self.labels)} outputs, not one (a reward model)")
        elif not self.scalar:
            self.score_vec = torch.tensor([float(label_scores[l]) for l in self.labels])
        self.max_length, self.centre, self.scale = max_length, float(centre), float(scale)
        if model.config.pad_token_id is None:  # the classifier pools the last non-pad token
            model.config.pad_token_id = tokenizer.pad_token_id

    def _prompt(self, sample, answer):
        if not self.chat:
            return super()._prompt(sample, answer)
        return self.tokenizer.apply_chat_template([{"role": "user", "content": sample["prompt"]},
                                                   {"role": "assistant", "content": answer}], tokenize=False)

    def _score_texts(self, texts, device):
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt", add_special_tokens=not self.chat).to(device)
        logits = self.model(**enc).logits.float()  # [B, num_labels]
        if self.scalar:
            r = logits[:, 0]  # [B]
            return torch.sigmoid((r - self.centre) / self.scale), [{"raw": x} for x in r.tolist()]
        probs = logits.softmax(-1)  # [B, num_labels]
        return probs @ self.score_vec.to(device), [{"label": self.labels[j]} for j in probs.argmax(-1).tolist()]

class GenerativeJudgeVerifier(_NeuralVerifier):
    """Any causal LM read through the next-token logits of its label words after a judge prompt.
    Expected-score mode: softmax over the first tokens of the label words, score = E[label_scores].
    true_false mode (knowledge): label_words has TRUE and FALSE, P from the full-vocabulary
    softmax, score = (P(TRUE) + 1 - P(FALSE)) / 2. Give each word as it follows the prompt
    (e.g. with a leading space for byte-level BPE when the prompt ends without one)."""

    def __init__(self, model, tokenizer, label_words, label_scores=None,
                 prompt_template="Question: {prompt}\nAnswer: {answer}\nVerdict:",
                 true_false=False, chat=False, batch_size=16):
        super().__init__(model, tokenizer, prompt_template, batch_size)
        if true_false and set(label_words) != {"TRUE", "FALSE"}:
            raise ValueError("true_false mode needs label_words with exactly TRUE and FALSE")
        if not true_false and set(label_words) != set(label_scores or {}):
            raise ValueError("label_words and label_scores must name the same labels")
        self.labels = list(label_words)
        self.token_ids = [tokenizer(label_words[l], add_special_tokens=False).input_ids[0]
                          for l in self.labels]
        if len(set(self.token_ids)) != len(self.token_ids):
            raise ValueError(f"label words share a first token: {label_words}")
        if not true_false:
            self.score_vec = torch.tensor([float(label_scores[l]) for l in self.labels])
        self.true_false, self.chat = true_false, chat

    def _prompt(self, sample, answer):
        text = super()._prompt(sample, answer)
        if self.chat:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                      tokenize=False, add_generation_prompt=True)
        return text

    def _score_texts(self, texts, device):
        # Left padding puts every prompt's last token at -1; explicit positions make a padded
        # row compute exactly what it would alone.
        enc = self.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt",
                             add_special_tokens=not self.chat).to(device)
        positions = (enc.attention_mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]
        logits = self.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                            position_ids=positions, logits_to_keep=1).logits[:, -1].float()  # [B, V]
        ids = torch.tensor(self.token_ids, device=device)
        if self.true_false:
            p_true, p_false = logits.softmax(-1)[:, ids].unbind(-1)  # [B] each
            labels = ["TRUE" if t >= f else "FALSE" for t, f in zip(p_true.tolist(), p_false.tolist())]
            return (p_true + 1 - p_false) / 2, [{"label": l} for l in labels]
        probs = logits[:, ids].softmax(-1)  # [B, n_labels]
        return probs @ self.score_vec.to(device), [{"label": self.labels[j]} for j in probs.argmax(-1).tolist()]

def load_verifier(kind, path, device=None, dtype=None, **kwargs):
    """Load a neural verifier from a local HF directory (safetensors weights): kind 'classifier'
    (labels or one output) or 'generative'."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    kinds = {"classifier": (AutoModelForSequenceClassification, SequenceClassifierVerifier),
             "generative": (AutoModelForCausalLM, GenerativeJudgeVerifier)}
    if kind not in kinds:
        raise ValueError(f"unknown verifier kind {kind!r}; expected one of {sorted(kinds)}")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no such model directory: {path}")
    auto, wrapper = kinds[kind]
    extra = {"dtype": dtype} if dtype is not None else {}
    model = auto.from_pretrained(path, trust_remote_code=False, use_safetensors=True, **extra)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if device is not None:
        model.to(device)
    return wrapper(model, tokenizer, **kwargs)

# What a neural judge standing in for each verifier predicts, and what each label scores.
JUDGE_LABELS = {"safety": SAFETY_SCORES, "value": {"good": 1.0, "bad": 0.0},
                "normal": {"helpful": 1.0, "unhelpful": 0.0}, "knowledge": {"TRUE": 1.0, "FALSE": 0.0},
                "general": {"correct": 1.0, "partial": 0.5, "wrong": 0.0},
                "boxed": {"correct": 1.0, "wrong": 0.0}}
JUDGE_PROMPT = ("Question: {prompt}\nReference: {reference}\nResponse: {answer}\n"
                "Which label fits the response ({labels})? Label:")

def load_judges(spec, device=None, prompt="", centre=0.0, scale=1.0):
    """Config `verifiers.judges` {verifier: "classifier:DIR" | "generative:DIR"} -> the `judges`
    of score_batch. A classifier's id2label must be JUDGE_LABELS[verifier], or it has one output
    (a reward model, squashed with `centre` and `scale`); a generative judge answers " label"
    after `prompt` (verifiers.judge_prompt: a template, or a file holding one; "" = JUDGE_PROMPT;
    the knowledge judge " TRUE"/" FALSE", read softly). Any error names the judge and its DIR."""
    where = "verifiers.judge_prompt"
    if prompt and os.path.isfile(prompt):
        where += f" file {prompt}"
        with open(prompt) as f:
            prompt = f.read()
    judges = {}
    for name, target in spec.items():
        kind, _, path = str(target).partition(":")
        if name not in JUDGE_LABELS or kind not in ("classifier", "generative") or not path:
            raise ValueError(f"bad judge {name}={target!r}: use {sorted(JUDGE_LABELS)} = "
                             "'classifier:DIR' or 'generative:DIR'")
        scores = JUDGE_LABELS[name]
        try:
            if kind == "classifier":
                judges[name] = load_verifier(kind, path, device, label_scores=scores, centre=centre, scale=scale)
                continue
            template = check_template(prompt or JUDGE_PROMPT, ("prompt", "reference", "answer", "labels"), where)
            judges[name] = load_verifier(kind, path, device, label_words={l: " " + l for l in scores},
                                         label_scores=scores, true_false=name == "knowledge",
                                         prompt_template=template.replace("{labels}", ", ".join(scores)))
        except (OSError, ValueError) as e:
            raise ValueError(f"judge {name}={target}: {e}") from None
    return judges
