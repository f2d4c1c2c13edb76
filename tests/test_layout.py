"""The house: scripts stand side by side, the rung table is a config file, string choices are
checked at parse time, and every "DESIGN §N" cite resolves in docs/DESIGN.md."""
import ast
import os
import re

import pytest

from nanosafe import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("train_sft", "train_grpo", "eval")


def _imported(path):
    """Top-level module names a file imports (absolute imports only)."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _library_files():
    for top in ("nanosafe", "kernels"):
        for name in sorted(os.listdir(os.path.join(ROOT, top))):
            if name.endswith(".py"):
                yield os.path.join(ROOT, top, name)
    yield os.path.join(ROOT, "verifiers.py")


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_script_imports_another_script(script):
    imported = _imported(os.path.join(ROOT, f"{script}.py"))
    assert not imported & (set(SCRIPTS) - {script}), f"{script}.py imports {imported & set(SCRIPTS)}"


def test_library_imports_no_script():
    for path in _library_files():
        assert not _imported(path) & set(SCRIPTS), path


def test_import_checker_sees_imports(tmp_path):
    """The checker above must catch both import forms, or the two tests above cannot fail."""
    f = tmp_path / "x.py"
    f.write_text("import eval as evaluation\nfrom train_sft import batch_order\nfrom . import sibling\n")
    assert _imported(str(f)) == {"eval", "train_sft"}


def test_rung_table_is_the_config_file():
    table = config.stages()
    assert list(table) == ["sft", "m3a", "m3b", "cale", "search"]
    assert config.RUNGS == os.path.join(ROOT, "configs", "rungs.py")
    cfg = config.parse(["stage=cale"])
    assert cfg.rl.cale_beta == table["cale"]["rl.cale_beta"] > 0


@pytest.mark.parametrize("key", sorted(config.CHOICES))
def test_string_choices_checked_at_parse(key):
    with pytest.raises(ValueError, match=rf"config key '{re.escape(key)}': 'bogus' is not one of "
                                         rf"{re.escape(', '.join(config.CHOICES[key]))}"):
        config.parse([f"{key}=bogus"])
    for value in config.CHOICES[key]:  # every listed value parses
        config.parse([f"{key}={value}"])


def test_choice_in_a_config_file_checked(tmp_path):
    preset = tmp_path / "p.py"
    preset.write_text("stages = {'m3b': {'rl.agg': 'mean'}}\n")
    config.parse(["--config", str(preset), "stage=m3a"])  # the bad value is not applied here
    with pytest.raises(ValueError, match="'rl.agg': 'mean' is not one of"):
        config.parse(["--config", str(preset), "stage=m3b"])


def test_every_design_cite_resolves():
    design = open(os.path.join(ROOT, "docs", "DESIGN.md")).read()
    sections = set(re.findall(r"^## (\d+)\. ", design, re.M))
    cites = []
    for base, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("out", "__pycache__")]
        for name in files:
            if name.endswith((".py", ".md", ".sh")):
                path = os.path.join(base, name)
                text = open(path, encoding="utf-8").read()
                cites += [(path, n) for n in re.findall(r"DESIGN §(\d+)", text)]
    assert cites, "no DESIGN cite found: the walk is broken"
    missing = [(os.path.relpath(p, ROOT), n) for p, n in cites if n not in sections]
    assert not missing, missing


def test_rung_table_errors_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "RUNGS", str(tmp_path / "gone.py"))
    with pytest.raises(FileNotFoundError, match="rung table is missing.*gone.py"):
        config.parse([])
    bad = tmp_path / "rungs.py"
    bad.write_text("stages = {'sft': ['not', 'a', 'dict']}\n")
    monkeypatch.setattr(config, "RUNGS", str(bad))
    with pytest.raises(TypeError, match="rungs.py: `stages` must be a dict"):
        config.parse([])
