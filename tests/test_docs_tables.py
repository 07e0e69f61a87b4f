"""The docs' tables and figures are generated from bench/results/*.json: a doc that differs fails here."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_tables():
    spec = importlib.util.spec_from_file_location("bench_tables", ROOT / "bench" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tables = _load_tables()


@pytest.fixture
def copy(tmp_path):
    """A copy of README.md, docs/*.md and bench/results/ to change without touching the checkout."""
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    for doc in (ROOT / "docs").glob("*.md"):
        shutil.copy(doc, tmp_path / "docs" / doc.name)
    shutil.copytree(ROOT / "bench" / "results", tmp_path / "results")
    return tmp_path


def _check(root: Path) -> int:
    return tables.main(["--check", "--root", str(root), "--results", str(root / "results")])


def test_docs_match_the_json():
    diffs = tables.differences(tables.doc_files(), tables.Results())
    assert diffs == [], "\n".join(diffs) + "\nfix: .venv/bin/python bench/tables.py --write"


def test_every_table_and_figure_is_used_in_the_docs():
    text = "\n".join(p.read_text() for p in tables.doc_files())
    used_tables = {m.group("name") for m in tables.TABLE_RE.finditer(text)}
    used_values = {m.group("name") for m in tables.VALUE_RE.finditer(text)}
    assert set(tables.TABLES) - used_tables == set()
    assert set(tables.VALUES) - used_values == set()


def test_the_readme_quotes_figures_from_the_json():
    readme = (ROOT / "README.md").read_text()
    values = {m.group("name"): m.group("body") for m in tables.VALUE_RE.finditer(readme)}
    results = tables.Results()
    assert {"daemon.p50", "quality.r1", "taught.idle.bundle"} <= set(values)
    for name, body in values.items():
        assert body == tables.VALUES[name](results)


def test_a_new_measurement_is_caught_and_written(copy, capsys):
    assert _check(copy) == 0
    report = copy / "results" / "bench_daemon.json"
    data = json.loads(report.read_text())
    data["pipeline"]["changing, 15 fps camera"]["latency_ms"]["p50"] = 123.45
    report.write_text(json.dumps(data))

    assert _check(copy) == 1
    err = capsys.readouterr().err
    assert "README.md" in err and "v:daemon.p50" in err
    assert "performance.md" in err and "daemon" in err

    assert tables.main(["--write", "--root", str(copy), "--results", str(copy / "results")]) == 0
    assert "<!-- v:daemon.p50 -->123.5<!-- /v -->" in (copy / "README.md").read_text()
    performance = (copy / "docs" / "performance.md").read_text()
    assert "| changing, 15 fps camera | 15.0 | 10.37 | 123.45 (84) |" in performance
    assert _check(copy) == 0


def test_a_hand_edited_table_is_caught(copy, capsys):
    doc = copy / "docs" / "quality.md"
    text = doc.read_text()
    assert "| efficientnet_lite0_int8 | exact | 0.933 |" in text
    row = "| efficientnet_lite0_int8 | exact | 0.933 |"
    doc.write_text(text.replace(row, row.replace("0.933", "0.950")))
    assert _check(copy) == 1
    assert "retrieval-models" in capsys.readouterr().err


def test_unknown_or_unclosed_markers_are_errors():
    results = tables.Results()
    with pytest.raises(SystemExit, match="unknown table 'nonsense'"):
        tables.render("<!-- table:nonsense -->\n<!-- /table:nonsense -->\n", results)
    with pytest.raises(SystemExit, match="without their closing marker"):
        tables.render("<!-- table:daemon -->\nno end\n", results)
    with pytest.raises(SystemExit, match="bad marker"):
        tables.render("<!-- v:Daemon.p50 -->1<!-- /v -->", results)
    with pytest.raises(SystemExit, match="unknown v 'nope'"):
        tables.render("<!-- v:nope -->1<!-- /v -->", results)


def test_a_missing_report_says_what_to_run(tmp_path):
    with pytest.raises(SystemExit, match="load.json is missing: run the benchmark"):
        tables.render("<!-- table:load -->\n<!-- /table:load -->\n", tables.Results(tmp_path))
