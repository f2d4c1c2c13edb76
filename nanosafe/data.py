"""Data: the one JSONL schema of DESIGN §3, prompt rendering, tokenisation and collation.

    {"id": str, "prompt": str, "images": [path, ...], "answer": str, "label": str, "meta": {...}}
    (+ "response" for SFT lines). Image paths are relative to the JSONL file unless absolute.

Validation fails loudly with `DataError("file:line: field 'x': what is wrong")` for malformed
JSON, a missing or mistyped field (an image entry that is not a path string included), an
unknown label (one with no recipe: verifiers.label_fields), a field the label's recipe reads
missing (`meta.harmful` for the safety judge, `answer` for the reference checks), a duplicate
id, an empty prompt or SFT response, a missing or undecodable image, a prompt over
`max_prompt_len` tokens (checked when encoding, image tokens included) and an empty file; a
`data.labels` filter that keeps no prompt is an error too.
Nothing is dropped silently.

Encoding: the prompt goes through the tokenizer's chat template with the system prompt, a turn
without images as a plain string (what every chat template takes; Qwen2.5's text template takes
nothing else) and a turn with images as parts; each `<|image_pad|>` is expanded to the image's
merged-patch count. The SFT target is the response plus
the end-of-turn token. Loss masks: prompt and image tokens never carry loss, and neither do
tool results (`<result>...</result>`, written by the search tool, not the model). To get that
mask without offsets, a response is tokenised segment by segment (model text / tool text) --
exactly how a multi-turn rollout builds it -- so training and sampling see the same tokens.
"""
from __future__ import annotations

import json
import os
import re

import torch
from PIL import Image

import verifiers

LABELS = tuple(verifiers.RECIPES)  # the built-in labels; a config adds its own (verifiers.recipes)
IGNORE = -100
MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
TOOL_SPAN = re.compile(r"(<result>.*?</result>)", re.S)

class DataError(ValueError):
    pass

def check(cond: bool, where: str, field: str, msg: str) -> None:
    if not cond:
        raise DataError(f"{where}: field {field!r}: {msg}")

def read_jsonl(path: str, need_response: bool = False, labels: dict | None = None) -> list[dict]:
    """Read and validate one JSONL file. Each sample gets `_where` ("file:line") for later errors
    and absolute image paths. `labels`: {label: {field: type}}, the labels there are and the fields
    each one's recipe reads (verifiers.label_fields of the run's config; default: the built-in ones)."""
    labels = labels or verifiers.label_fields()
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    base, rows, first = os.path.dirname(os.path.abspath(path)), [], {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
            check(isinstance(r, dict), where, "<line>", "expected a JSON object")
            for key in ("id", "prompt", "label") + (("response",) if need_response else ()):
                check(key in r, where, key, "missing")
                check(isinstance(r[key], str), where, key, f"expected a string, got {type(r[key]).__name__}")
            check(r["prompt"].strip() != "", where, "prompt", "empty")
            check(not need_response or r["response"].strip() != "", where, "response", "empty")
            check(r["label"] in labels, where, "label", f"unknown label {r['label']!r}; one of {sorted(labels)} "
                  "(a new label needs its recipe in the config: verifiers.recipes)")
            check(r.get("answer") is None or isinstance(r["answer"], str), where, "answer", "expected a string")
            check(isinstance(r.get("meta", {}), dict), where, "meta", "expected an object")
            for field, typ in labels[r["label"]].items():
                value = r.get("meta", {}).get(field[5:]) if field.startswith("meta.") else r.get(field)
                check(isinstance(value, typ), where, field, f"label {r['label']!r} needs a {typ.__name__} here "
                      f"(its recipe's verifiers read it), got {value!r}")
            images = r.get("images") or []
            check(isinstance(images, list), where, "images", "expected a list of paths")
            for p in images:
                check(isinstance(p, str), where, "images", f"expected a path string, got {type(p).__name__} {p!r}")
            r["images"] = [check_image(p if os.path.isabs(p) else os.path.join(base, p), where)
                           for p in images]
            check(r["id"] not in first, where, "id", f"duplicate id {r['id']!r} (first at {first.get(r['id'])})")
            first[r["id"]] = where
            r.setdefault("meta", {})
            r.setdefault("answer", None)
            r["_where"] = where
            rows.append(r)
    if not rows:
        raise DataError(f"{path}: empty file (no samples)")
    return rows

def check_image(path: str, where: str) -> str:
    check(os.path.exists(path), where, "images", f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # pillow raises several types for bad files
        raise DataError(f"{where}: field 'images': cannot decode {path} ({type(e).__name__})") from None
    return path

def load_images(sample: dict) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in sample["images"]]

def render_prompt(tokenizer, sample: dict, system_prompt: str) -> str:
    # A turn without images is a plain string: Qwen2.5's text template concatenates
    # message['content'] as a string (a list of parts is a TypeError there). Only a turn with
    # images needs parts, and the VL templates take both forms.
    content = sample["prompt"] if not sample["images"] else \
        [{"type": "image"} for _ in sample["images"]] + [{"type": "text", "text": sample["prompt"]}]
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
               [{"role": "user", "content": content}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

def encode_prompt(bundle, sample: dict, dcfg) -> dict:
    """-> {"input_ids": [T] long, "pixel_values": [P, C] | None, "image_grid_thw": [I, 3] | None,
    "mm_token_type_ids": [T] int (1 on image tokens) | None}. Qwen2.5-VL needs the token types to
    give image tokens their 3D (M-RoPE) positions; without them it silently numbers them as text."""
    check(bundle.is_vl or not sample["images"], sample["_where"], "images", "this model takes no images (text-only)")
    text, vision = render_prompt(bundle.tokenizer, sample, dcfg.system_prompt), {}
    if sample["images"]:
        vision = bundle.image_processor(images=load_images(sample), return_tensors="pt")
        merge = bundle.image_processor.merge_size ** 2
        pad = "<|image_pad|>"
        parts = text.split(pad)
        check(len(parts) - 1 == len(sample["images"]), sample["_where"], "images",
               "chat template produced a different number of image slots")
        counts = [int(g.prod()) // merge for g in vision["image_grid_thw"]]
        text = parts[0] + "".join(pad * n + p for n, p in zip(counts, parts[1:]))
    ids = bundle.tokenizer(text, add_special_tokens=False)["input_ids"]
    check(len(ids) <= dcfg.max_prompt_len, sample["_where"], "prompt",
           f"{len(ids)} tokens (images included) exceed max_prompt_len={dcfg.max_prompt_len}")
    ids = torch.tensor(ids, dtype=torch.long)  # [T]
    types = (ids == bundle.tokenizer.convert_tokens_to_ids(pad)).int() if vision else None  # [T]
    return {"input_ids": ids, "pixel_values": vision.get("pixel_values"),
            "image_grid_thw": vision.get("image_grid_thw"), "mm_token_type_ids": types}

def with_response(prompt: dict, ids: list[int]) -> dict:
    """An encoded prompt continued by response tokens (text, token type 0)."""
    ext = torch.tensor(ids, dtype=torch.long)  # [R]
    types = prompt.get("mm_token_type_ids")  # [T] or None (no image)
    if types is not None:
        types = torch.cat([types, torch.zeros_like(ext, dtype=types.dtype)])  # [T + R]
    return {**prompt, "input_ids": torch.cat([prompt["input_ids"], ext]), "mm_token_type_ids": types}

def end_of_turn_id(tokenizer) -> int:
    """Qwen's `<|im_end|>` where the tokenizer has it as one token, else its eos token."""
    ids = tokenizer("<|im_end|>", add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else tokenizer.eos_token_id

def encode_response(tokenizer, response: str, end: bool = True) -> tuple[list[int], list[int]]:
    """Response text -> (ids, loss mask); tool results get mask 0. `end` appends end-of-turn."""
    ids, mask = [], []
    for part in TOOL_SPAN.split(response):
        if not part:
            continue
        p_ids = tokenizer(part, add_special_tokens=False)["input_ids"]
        ids += p_ids
        mask += [0 if TOOL_SPAN.fullmatch(part) else 1] * len(p_ids)
    if end:
        ids.append(end_of_turn_id(tokenizer))
        mask.append(1)
    return ids, mask

def encode_sft(bundle, sample: dict, dcfg) -> dict:
    """Prompt + response; labels are IGNORE on prompt, image and tool-result tokens."""
    enc = encode_prompt(bundle, sample, dcfg)
    r_ids, r_mask = encode_response(bundle.tokenizer, sample["response"])
    total = len(enc["input_ids"]) + len(r_ids)
    check(total <= dcfg.max_len, sample["_where"], "response",
           f"prompt + response is {total} tokens, over max_len={dcfg.max_len}")
    labels = [IGNORE] * len(enc["input_ids"]) + [t if m else IGNORE for t, m in zip(r_ids, r_mask)]
    enc = with_response(enc, r_ids)
    enc["labels"] = torch.tensor(labels, dtype=torch.long)
    return enc

def collate(items: list[dict], pad_id: int, left: bool = False) -> dict:
    """Pad a list of encoded samples into a batch (right padding for training, left for
    generation); images are concatenated in order, as Qwen2.5-VL expects."""
    T = max(len(x["input_ids"]) for x in items)
    B = len(items)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros((B, T), dtype=torch.long)  # [B, T]
    labels = torch.full((B, T), IGNORE, dtype=torch.long) if "labels" in items[0] else None
    for i, x in enumerate(items):
        n = len(x["input_ids"])
        sl = slice(T - n, T) if left else slice(0, n)
        input_ids[i, sl] = x["input_ids"]
        attention_mask[i, sl] = 1
        if labels is not None:
            labels[i, sl] = x["labels"]
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if labels is not None:
        batch["labels"] = labels
    pix = [x["pixel_values"] for x in items if x.get("pixel_values") is not None]
    if pix:
        batch["pixel_values"] = torch.cat(pix)
        batch["image_grid_thw"] = torch.cat([x["image_grid_thw"] for x in items
                                             if x.get("image_grid_thw") is not None])
        types = torch.zeros((B, T), dtype=torch.int)  # [B, T] text rows and padding stay 0
        for i, x in enumerate(items):
            if x.get("mm_token_type_ids") is not None:
                n = len(x["input_ids"])
                types[i, slice(T - n, T) if left else slice(0, n)] = x["mm_token_type_ids"]
        batch["mm_token_type_ids"] = types
    return batch

def filter_labels(samples: list[dict], labels: str, known=LABELS) -> tuple[list[dict], dict]:
    """Keep the samples whose label is in the comma-separated `labels` ("" keeps all, "-knowledge"
    keeps all but knowledge); returns the kept samples and the count dropped per label, so
    deliberate filtering is reported. `known`: the labels there are (verifiers.label_fields of the
    run's config)."""
    if not labels:
        return samples, {}
    names = labels.split(",")
    drop = {n[1:] for n in names if n.startswith("-")}
    if drop and len(drop) != len(names):
        raise DataError(f"data.labels={labels!r}: either labels to keep or -labels to drop, not both")
    keep = set(known) - drop if drop else set(names)
    bad = (drop or keep) - set(known)
    if bad:
        raise DataError(f"data.labels: unknown label(s) {sorted(bad)}; one of {sorted(known)}")
    dropped: dict[str, int] = {}
    for s in samples:
        if s["label"] not in keep:
            dropped[s["label"]] = dropped.get(s["label"], 0) + 1
    kept = [s for s in samples if s["label"] in keep]
    if not kept:
        source = samples[0]["_where"].rsplit(":", 1)[0] if samples and "_where" in samples[0] else "the data"
        raise DataError(f"data.labels={labels!r} keeps 0 of the {len(samples)} prompts in {source} "
                        f"(labels there: {sorted(dropped)})")
    return kept, dropped

def batch_order(n: int, step: int, batch_size: int, seed: int) -> list[int]:
    """Indices of the samples in optimiser step `step`: epoch-wise seeded permutations, so the
    data position is a function of the step and resuming needs nothing else."""
    out = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, i = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        take = min(batch_size - len(out), n - i)
        out += perm[i:i + take].tolist()
        pos += take
    return out
