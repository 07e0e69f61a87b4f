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
    assert {"daemon.p50", "learned.r1", "taught.idle.bundle"} <= set(values)
    for name, body in values.items():
        assert body == tables.VALUES[name](results)


def test_a_new_measurement_is_caught_and_written(copy, capsys):
    assert _check(copy) == 0
    report = copy / "results" / "bench_daemon.json"
    data = json.loads(report.read_text())
    run = data["pipeline"]["changing, 15 fps camera"]
    run["latency_ms"]["p50"] = 123.45
    report.write_text(json.dumps(data))
    row = (f"| changing, 15 fps camera | {tables.num(run['frames_per_s'], 1)} | "
           f"{tables.num(run['inferences_per_s'])} | 123.45 ({run['latency_ms']['n']}) |")

    assert _check(copy) == 1
    err = capsys.readouterr().err
    assert "README.md" in err and "v:daemon.p50" in err
    assert "performance.md" in err and "daemon" in err

    assert tables.main(["--write", "--root", str(copy), "--results", str(copy / "results")]) == 0
    assert "<!-- v:daemon.p50 -->123.5<!-- /v -->" in (copy / "README.md").read_text()
    performance = (copy / "docs" / "performance.md").read_text()
    assert row in performance
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


def test_a_new_hard_shot_result_is_caught_and_written(copy, capsys):
    assert _check(copy) == 0
    report = copy / "results" / "retrieval-hard-eval.json"
    data = json.loads(report.read_text())
    settled = next(run for run in data["hard"]["runs"] if run["search"] == "settled")
    settled["recall@1"] = 0.8506  # 575 of 676 queries
    report.write_text(json.dumps(data))

    assert _check(copy) == 1
    err = capsys.readouterr().err
    assert "hard-shots.md" in err and "hard-results" in err and "v:hard.settled.r1" in err

    assert tables.main(["--write", "--root", str(copy), "--results", str(copy / "results")]) == 0
    doc = (copy / "docs" / "hard-shots.md").read_text()
    assert "met by the settled look\n(<!-- v:hard.settled.r1 -->0.851<!-- /v -->" in doc
    assert "| hard | Annoy, **settled look (after)** | **0.851** |" in doc
    assert _check(copy) == 0


def test_shares_are_shown_from_their_counts():
    # 169 of 198 is 0.85354: the JSON keeps 0.8535, which formatting alone would show as 0.853.
    assert tables.share(0.8535, 198) == "0.854"
    assert tables.share(0.8462, 676) == "0.846"
    with pytest.raises(SystemExit, match="not a share of 676 queries"):
        tables.share(0.84, 676)


def test_an_attempt_that_beats_the_shipped_fusion_needs_a_reason(copy):
    report = copy / "results" / "retrieval-hard.json"
    data = json.loads(report.read_text())
    attempt = next(a for a in data["attempts"] if a["attempt"] == "max over g2 (6 windows)")
    attempt["hard"]["recall@1"] = 0.9024  # 610 of 676, above the shipped fusion
    report.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="beats the shipped fusion"):
        tables.render("<!-- table:hard-attempts -->\n<!-- /table:hard-attempts -->\n",
                      tables.Results(copy / "results"))
