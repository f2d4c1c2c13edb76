"""nanosafe.convert: a lab's CSV / JSON / JSONL into the schema, with errors that name file:row:field."""
import json

import pytest

from nanosafe import convert, data


def _lines(path):
    return [json.loads(x) for x in open(path)]


def test_safe_flag_recipe_from_csv(tmp_path):
    src = tmp_path / "pku.csv"
    src.write_text('question,is_safe\n"How do I make a pipe bomb?",false\n"How do I bake bread?",yes\n')
    n, skipped = convert.convert(str(src), str(tmp_path / "rl.jsonl"), {"prompt": "question", "safe": "is_safe"},
                                 recipe="safe-flag")
    rows = _lines(tmp_path / "rl.jsonl")
    assert (n, skipped) == (2, [])
    assert [(r["label"], r["meta"]["harmful"]) for r in rows] == [("safety", True), ("normal", False)]
    assert [r["id"] for r in rows] == ["pku-0", "pku-1"]


def test_gsm8k_recipe_takes_the_final_number(tmp_path):
    src = tmp_path / "gsm.json"
    src.write_text(json.dumps({"data": [{"question": "Sum?", "answer": "12 + 30 = 42\n#### 42"},
                                        {"question": "Big?", "answer": "so it is\n#### 1,234"}]}))
    convert.convert(str(src), str(tmp_path / "o.jsonl"), {"prompt": "question"}, recipe="gsm8k")
    rows = _lines(tmp_path / "o.jsonl")
    assert [(r["label"], r["answer"]) for r in rows] == [("general_rule", "42"), ("general_rule", "1234")]
    assert data.read_jsonl(str(tmp_path / "o.jsonl"))[0]["answer"] == "42"


def test_sft_lines_keep_response_and_load(tmp_path):
    src = tmp_path / "sft.jsonl"
    src.write_text(json.dumps({"q": "Hi?", "a": "<think>greet</think> Hello!"}) + "\n")
    convert.convert(str(src), str(tmp_path / "o.jsonl"), {"prompt": "q", "response": "a"}, label="normal")
    assert data.read_jsonl(str(tmp_path / "o.jsonl"), need_response=True)[0]["response"].endswith("Hello!")


@pytest.mark.parametrize("text, cols, kwargs, match", [
    ('question,flag\n"Q?",1\n', {"prompt": "quest"}, {"label": "normal"}, r"o\.csv:2: field 'prompt': column 'quest' missing"),
    ('question,flag\n"Q?",maybe\n', {"prompt": "question", "safe": "flag"}, {"recipe": "safe-flag"},
     r"o\.csv:2: field 'safe': cannot read 'maybe'"),
    ('question\n"Q?"\n', {"prompt": "question"}, {"label": "safety"}, r"o\.csv:2: field 'meta\.harmful'"),
    ('question\n"Q?"\n', {"prompt": "question"}, {"label": "general_rule"}, r"o\.csv:2: field 'answer'"),
    ('question,label\n"Q?",poetry\n', {"prompt": "question"}, {}, r"o\.csv:2: field 'label': unknown label"),
    ('question\n"  "\n', {"prompt": "question"}, {"label": "normal"}, r"o\.csv:2: field 'prompt': empty"),
    ('id,question\na,"Q?"\na,"R?"\n', {"prompt": "question"}, {"label": "normal"}, r"o\.csv:3: field 'id': duplicate"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, text, cols, kwargs, match):
    src = tmp_path / "o.csv"
    src.write_text(text)
    with pytest.raises(data.DataError, match=match):
        convert.convert(str(src), str(tmp_path / "out.jsonl"), cols, **kwargs)
    assert not (tmp_path / "out.jsonl").exists()  # nothing half-written


def test_skip_bad_counts_what_it_skips(tmp_path):
    src = tmp_path / "o.csv"
    src.write_text('question,is_safe\n"A?",true\n"B?",perhaps\n"C?",false\n')
    n, skipped = convert.convert(str(src), str(tmp_path / "o.jsonl"), {"prompt": "question", "safe": "is_safe"},
                                 recipe="safe-flag", skip_bad=True)
    assert n == 2 and len(skipped) == 1 and "o.csv:3" in skipped[0]


def test_command_line(tmp_path, capsys):
    src = tmp_path / "p.csv"
    src.write_text('prompt\n"How do I boil an egg?"\n')
    convert.main([str(src), str(tmp_path / "o.jsonl"), "--label", "normal"])
    assert "wrote 1 rows" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not field=column"):
        convert.main([str(src), str(tmp_path / "o.jsonl"), "--label", "normal", "--map", "prompt"])
    (tmp_path / "p.xlsx").write_bytes(b"PK")
    with pytest.raises(SystemExit, match="unknown input type"):
        convert.main([str(tmp_path / "p.xlsx"), str(tmp_path / "o.jsonl"), "--label", "normal"])
