"""Convert a lab's own prompts into nanosafe's JSONL schema (DESIGN §3).

    python -m nanosafe.convert prompts.csv rl.jsonl --label normal --map prompt=question
    python -m nanosafe.convert train.parquet rl.jsonl --recipe gsm8k            # question + numeric answer
    python -m nanosafe.convert pku.jsonl rl.jsonl --recipe safe-flag \\
        --map prompt=prompt,safe=is_safe                                        # -> safety / normal
    python -m nanosafe.convert sft.json sft.jsonl --label general --map prompt=q,response=a,answer=a

Input: JSONL, JSON (a list of objects, or {"data": [...]}), CSV, or parquet (needs pandas with
pyarrow), picked by extension; or a Hugging Face dataset saved with `save_to_disk` (`--hf-disk
DIR`, needs `datasets`; both optional extras, never required). `--map field=column,...` names
the input column for each schema field (id, prompt, response, answer, images, label, and for
recipes: safe / harmful); unmapped fields keep their own name. A missing id becomes
"<file stem>-<row>".

Recipes for two common shapes:
  safe-flag  a prompt plus an is-safe flag (PKU-SafeRLHF / BeaverTails style): an unsafe prompt
             becomes label "safety" with meta.harmful = true (the safety judge rewards a refusal
             with a warning or alternative); a safe one becomes "normal" (the policy should just
             help). Flags read as bools from true/false, 1/0, yes/no, safe/unsafe.
  gsm8k      a question plus a worked answer ending "#### 42": label "general_rule", answer "42"
             (the final number, commas dropped), scored by the \\boxed{} match.
`--label NAME` may name a new label: train with its recipe in the config (`verifiers.recipes`).
Every row is checked as it is converted: a missing column, an empty prompt, an unreadable flag
or a label-required field (safety: meta.harmful; general_rule / knowledge / general: answer) is an
error naming the input file, the row (line for JSONL and CSV) and the field. Nothing is dropped
silently; `--skip-bad` skips such rows instead, and the counts of written and skipped rows are
printed. The output is written through a temporary file and renamed, and read back with
`data.read_jsonl` so it is known to load.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys

import verifiers
from nanosafe import data

FIELDS = ("id", "prompt", "response", "answer", "images", "label", "meta", "safe", "harmful")
TRUE = {"true", "1", "yes", "y", "safe", "t"}
FALSE = {"false", "0", "no", "n", "unsafe", "f"}
REQUIRED = verifiers.label_fields()  # label -> {field: type} its built-in recipe reads

def read_rows(path: str, hf_disk: bool = False) -> list[tuple[str, dict]]:
    """-> [(where, row)], where = "file:line" (JSONL, CSV) or "file:row N" (JSON, parquet, datasets)."""
    if hf_disk:
        try:
            import datasets
        except ImportError:
            raise SystemExit("--hf-disk needs the optional package `datasets` (pip install datasets)") from None
        ds = datasets.load_from_disk(path)
        if isinstance(ds, datasets.DatasetDict):
            raise SystemExit(f"{path}: a DatasetDict with splits {list(ds)}; pass one split's folder")
        return [(f"{path}:row {i}", dict(r)) for i, r in enumerate(ds)]
    if not os.path.exists(path):
        raise SystemExit(f"{path}: file not found")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".jsonl":
        rows = []
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append((f"{path}:{n}", json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise data.DataError(f"{path}:{n}: malformed JSON ({e.msg})") from None
        return rows
    if ext == ".json":
        with open(path) as f:
            obj = json.load(f)
        obj = obj.get("data", obj) if isinstance(obj, dict) else obj
        if not isinstance(obj, list):
            raise data.DataError(f"{path}: expected a list of objects (or {{\"data\": [...]}})")
        return [(f"{path}:row {i}", r) for i, r in enumerate(obj)]
    if ext in (".csv", ".tsv"):
        with open(path, newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ",")
            # reader.line_num is the physical line the row ended on (quoted newlines included)
            return [(f"{path}:{reader.line_num}", dict(r)) for r in reader]
    if ext == ".parquet":
        try:
            import pandas
        except ImportError:
            raise SystemExit("parquet input needs the optional packages pandas and pyarrow") from None
        frame = pandas.read_parquet(path)
        return [(f"{path}:row {i}", r) for i, r in enumerate(frame.to_dict("records"))]
    raise SystemExit(f"{path}: unknown input type {ext!r}; one of .jsonl .json .csv .tsv .parquet")

def parse_map(spec: str) -> dict[str, str]:
    """"prompt=question,answer=final" -> {"prompt": "question", "answer": "final"}."""
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        field, sep, column = part.partition("=")
        if not sep or not column:
            raise SystemExit(f"--map: {part!r} is not field=column")
        if field not in FIELDS:
            raise SystemExit(f"--map: unknown field {field!r}; one of {FIELDS}")
        out[field] = column
    return out

def _get(row: dict, column: str, where: str, field: str, required: bool = True):
    if column not in row or row[column] is None or (isinstance(row[column], float) and row[column] != row[column]):
        data.check(not required, where, field, f"column {column!r} missing (columns: {sorted(row)})")
        return None
    return row[column]

def _flag(value, where: str, field: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    data.check(text in TRUE | FALSE, where, field, f"cannot read {value!r} as a flag (true/false, 1/0, yes/no)")
    return text in TRUE

def gsm8k_answer(text: str) -> str | None:
    """The final number of a GSM8K-style worked answer ("... #### 1,234" -> "1234")."""
    tail = text.rsplit("####", 1)[-1] if "####" in text else text
    nums = re.findall(r"-?\d[\d,]*(?:\.\d+)?", tail)
    return nums[-1].replace(",", "") if nums else None

def convert_row(row: dict, where: str, n: int, stem: str, cols: dict, label: str | None, recipe: str | None) -> dict:
    col = lambda f: cols.get(f, f)  # noqa: E731 -- the input column holding schema field f
    prompt = _get(row, col("prompt"), where, "prompt")
    data.check(isinstance(prompt, str) and prompt.strip() != "", where, "prompt", "empty or not text")
    ident = _get(row, col("id"), where, "id", required=False)
    out = {"id": str(ident) if ident is not None else f"{stem}-{n}", "prompt": prompt}
    meta = dict(_get(row, col("meta"), where, "meta", required=False) or {})
    if recipe == "safe-flag":
        if "harmful" in cols:
            harmful = _flag(_get(row, col("harmful"), where, "harmful"), where, "harmful")
        else:
            harmful = not _flag(_get(row, col("safe"), where, "safe"), where, "safe")
        out["label"] = "safety" if harmful else "normal"
        meta["harmful"] = harmful
    elif recipe == "gsm8k":
        worked = _get(row, col("answer"), where, "answer")
        answer = gsm8k_answer(str(worked))
        data.check(answer is not None, where, "answer", f"no final number in {str(worked)[-60:]!r}")
        out.update(label="general_rule", answer=answer)
    else:
        out["label"] = label or _get(row, col("label"), where, "label")
        answer = _get(row, col("answer"), where, "answer", required=False)
        if answer is not None:
            out["answer"] = str(answer)
    data.check(out["label"] in data.LABELS or out["label"] == label, where, "label",
               f"unknown label {out['label']!r}; one of {data.LABELS} (or a new one with --label)")
    for field in ("response", "images"):
        value = _get(row, col(field), where, field, required=False)
        if value is not None:
            out[field] = value
    if meta:
        out["meta"] = meta
    for need in REQUIRED.get(out["label"], {}):
        present = out.get("meta", {}).get("harmful") is not None if need == "meta.harmful" else out.get(need) is not None
        data.check(present, where, need, f"label {out['label']!r} needs it (map a column, or use --recipe)")
    return out

def convert(src: str, dst: str, cols: dict, label: str | None = None, recipe: str | None = None,
            hf_disk: bool = False, skip_bad: bool = False) -> tuple[int, list[str]]:
    """Convert `src` into `dst` (JSONL); -> (rows written, errors of skipped rows)."""
    stem = os.path.splitext(os.path.basename(os.path.normpath(src)))[0]
    rows, skipped, seen = [], [], set()
    for n, (where, row) in enumerate(read_rows(src, hf_disk)):
        try:
            data.check(isinstance(row, dict), where, "<row>", "expected an object")
            out = convert_row(row, where, n, stem, cols, label, recipe)
            data.check(out["id"] not in seen, where, "id", f"duplicate id {out['id']!r}")
        except data.DataError as e:
            if not skip_bad:
                raise
            skipped.append(str(e))
            continue
        seen.add(out["id"])
        rows.append(out)
    if not rows:
        raise data.DataError(f"{src}: no rows converted" + (f" ({len(skipped)} skipped)" if skipped else ""))
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    tmp = f"{dst}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, dst)
    # it must load as written (a new label: its recipe, in the training config, says what it needs)
    known = {label: {}, **REQUIRED} if label else REQUIRED
    data.read_jsonl(dst, need_response=all("response" in r for r in rows), labels=known)
    return len(rows), skipped

def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m nanosafe.convert", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="input: .jsonl .json .csv .tsv .parquet, or a save_to_disk folder with --hf-disk")
    p.add_argument("dst", help="output JSONL")
    p.add_argument("--map", default="", help="field=column,... (fields: %s)" % ", ".join(FIELDS))
    p.add_argument("--label", help=f"one label for every row (else the label column): one of "
                   f"{', '.join(data.LABELS)}, or a new one (train with its recipe in verifiers.recipes)")
    p.add_argument("--recipe", choices=("safe-flag", "gsm8k"), help="map a common shape (see the module doc)")
    p.add_argument("--hf-disk", action="store_true", help="src is a datasets.save_to_disk folder")
    p.add_argument("--skip-bad", action="store_true", help="skip rows that fail a check (counted), not stop")
    a = p.parse_args(argv)
    if a.recipe and a.label:
        p.error("--recipe sets the label; drop --label")
    try:
        n, skipped = convert(a.src, a.dst, parse_map(a.map), a.label, a.recipe, a.hf_disk, a.skip_bad)
    except data.DataError as e:
        raise SystemExit(f"error: {e}") from None
    for e in skipped[:10]:
        print(f"skipped: {e}", file=sys.stderr)
    print(f"wrote {n} rows to {a.dst}" + (f"; skipped {len(skipped)} bad rows" if skipped else ""))
    if a.label and a.label not in data.LABELS:
        print(f"label {a.label!r} is new: train with its recipe in the config (verifiers.recipes)")


if __name__ == "__main__":
    main()
