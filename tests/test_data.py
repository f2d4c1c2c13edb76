"""Schema validation (every bad input names file, line and field) and loss masking."""
import json

import pytest
import torch

from nanosafe import data
from nanosafe.data import DataError

GOOD = {"id": "a", "prompt": "What is 2 + 3?", "label": "general_rule", "answer": "5",
        "response": "<think>2 + 3 = 5.</think>\\boxed{5}"}


def _write(tmp_path, lines, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return str(p)


@pytest.mark.parametrize("bad,field", [
    ('{"id": "x", "prompt": ', "malformed JSON"),
    ({k: v for k, v in GOOD.items() if k != "prompt"}, "field 'prompt': missing"),
    ({**GOOD, "label": "evil"}, "field 'label': unknown label 'evil'"),
    ({**GOOD, "prompt": 7}, "field 'prompt': expected a string"),
    ({**GOOD, "images": ["nope.png"]}, "field 'images': image not found"),
    ({**GOOD, "images": ["broken.png"]}, "field 'images': cannot decode"),
    ({**GOOD, "meta": []}, "field 'meta'"),
])
def test_bad_input_names_file_line_field(tmp_path, bad, field):
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    path = _write(tmp_path, [GOOD, bad])
    with pytest.raises(DataError) as e:
        data.read_jsonl(path, need_response=True)
    assert f"{path}:2" in str(e.value) and field in str(e.value)


def test_missing_response_for_sft(tmp_path):
    path = _write(tmp_path, [{k: v for k, v in GOOD.items() if k != "response"}])
    data.read_jsonl(path)  # fine for RL / eval
    with pytest.raises(DataError, match=r":1: field 'response': missing"):
        data.read_jsonl(path, need_response=True)


def test_empty_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="empty file"):
        data.read_jsonl(_write(tmp_path, ["", "  "]))
    with pytest.raises(DataError, match="file not found"):
        data.read_jsonl(str(tmp_path / "none.jsonl"))


def test_prompt_over_length_limit(tmp_path, tiny):
    cfg, _, bundle = tiny
    path = _write(tmp_path, [GOOD, {**GOOD, "id": "b", "prompt": "What is 2 + 3? " * 80}])
    rows = data.read_jsonl(path, need_response=True)
    data.encode_sft(bundle, rows[0], cfg.data)
    with pytest.raises(DataError, match=rf"{path}:2: field 'prompt': \d+ tokens .* exceed max_prompt_len"):
        data.encode_sft(bundle, rows[1], cfg.data)


def test_filter_labels_counts_what_it_drops(tiny):
    _, paths, _ = tiny
    rows = data.read_jsonl(paths["rl"])
    kept, dropped = data.filter_labels(rows, "general_rule,knowledge")
    assert len(kept) + sum(dropped.values()) == len(rows)
    assert {r["label"] for r in kept} <= {"general_rule", "knowledge"}
    with pytest.raises(DataError, match="unknown label"):
        data.filter_labels(rows, "general_rule,nonsense")
    kept, dropped = data.filter_labels(rows, "-knowledge")
    assert set(dropped) == {"knowledge"} and len(kept) + dropped["knowledge"] == len(rows)
    assert "knowledge" not in {r["label"] for r in kept} and len({r["label"] for r in kept}) > 1
    with pytest.raises(DataError, match="not both"):
        data.filter_labels(rows, "-knowledge,safety")
    with pytest.raises(DataError, match="unknown label"):
        data.filter_labels(rows, "-nonsense")


def test_loss_mask_prompt_image_and_tool_tokens(tiny):
    cfg, paths, bundle = tiny
    rows = data.read_jsonl(paths["sft"], need_response=True)
    tok = bundle.tokenizer
    img = next(r for r in rows if r["images"])
    enc = data.encode_sft(bundle, img, cfg.data)
    n_prompt = len(data.encode_prompt(bundle, img, cfg.data)["input_ids"])
    pad_id = tok.convert_tokens_to_ids("<|image_pad|>")
    ids, labels = enc["input_ids"], enc["labels"]
    assert (ids == pad_id).sum() == 4  # 56x56 image -> 16 patches -> 4 merged tokens
    assert (labels[:n_prompt] == data.IGNORE).all()  # prompt and image tokens carry no loss
    assert (labels[n_prompt:] != data.IGNORE).all()
    assert labels[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    # tool results: masked; the model's own search call is not
    sample = {**rows[0], "images": [], "response": "<think>x<search>q</search><result>The answer is 7."
              "</result>so 7</think>7"}
    enc = data.encode_sft(bundle, sample, cfg.data)
    n_prompt = len(data.encode_prompt(bundle, sample, cfg.data)["input_ids"])
    resp_ids, resp_labels = enc["input_ids"][n_prompt:], enc["labels"][n_prompt:]
    text_kept = tok.decode([t for t, lab in zip(resp_ids.tolist(), resp_labels.tolist()) if lab != data.IGNORE])
    text_masked = tok.decode([t for t, lab in zip(resp_ids.tolist(), resp_labels.tolist()) if lab == data.IGNORE])
    assert text_masked == "<result>The answer is 7.</result>"
    assert "<search>q</search>" in text_kept and "so 7" in text_kept and "answer is" not in text_kept


def test_collate_pads_and_keeps_images(tiny):
    cfg, paths, bundle = tiny
    rows = data.read_jsonl(paths["sft"], need_response=True)
    img = [r for r in rows if r["images"]][:2]
    txt = [r for r in rows if not r["images"]][:1]
    enc = [data.encode_sft(bundle, r, cfg.data) for r in img + txt]
    b = data.collate(enc, bundle.tokenizer.pad_token_id)
    assert b["pixel_values"].shape[0] == 2 * 16 and b["image_grid_thw"].shape == (2, 3)
    lengths = torch.tensor([len(e["input_ids"]) for e in enc])
    assert torch.equal(b["attention_mask"].sum(1), lengths)
    left = data.collate(enc, bundle.tokenizer.pad_token_id, left=True)
    assert (left["attention_mask"][:, -1] == 1).all()
