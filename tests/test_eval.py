"""pi-search eval: metrics, the truth file, exact vs Annoy search on real images, the PNG report, the CLI."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from pi_search import images
from pi_search.cli import main
from pi_search.errors import PiSearchError
from pi_search.model.shipped import SHIPPED_INT8, shipped_model
from pi_search.tools import benchmark_data as bd
from pi_search.tools import evaluate as ev

INT8 = shipped_model(SHIPPED_INT8)


def test_metrics_follow_their_definitions():
    ranks = np.array([1, 2, 0, 11, 5])
    m = ev.metrics(ranks)
    assert m["recall@1"] == pytest.approx(1 / 5)
    assert m["recall@5"] == pytest.approx(3 / 5)
    assert m["recall@10"] == pytest.approx(3 / 5)
    assert m["map"] == pytest.approx((1 + 1 / 2 + 0 + 1 / 11 + 1 / 5) / 5, abs=1e-4)
    assert m["queries"] == 5


@given(st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=60))
def test_recall_is_monotone_in_k_and_bounded(ranks):
    curve = ev.recall_curve(np.array(ranks), 20)
    assert all(0.0 <= a <= b <= 1.0 for a, b in zip(curve, curve[1:], strict=False))
    m = ev.metrics(np.array(ranks))
    assert m["recall@1"] <= m["map"] + 1e-4 <= 1 + 1e-4
    assert m["map"] <= m["recall@1"] + (m["recall@10"] - m["recall@1"]) / 2 + (1 - m["recall@10"]) / 11 + 1e-4


def test_exact_ranks_count_better_scored_items():
    cat = np.eye(4, dtype=np.float32)
    q = np.array([[1, 0, 0, 0], [0.6, 0.8, 0, 0], [0, 0, 0.2, 0.98]], np.float32)
    ranks, top, scores = ev.exact_ranks(q, cat, np.array([0, 0, 2]))
    assert ranks.tolist() == [1, 2, 2]
    assert top[1, 0] == 1 and top[2, 0] == 3
    assert scores[0, 0] == pytest.approx(1.0)


def test_truth_file_errors_say_what_is_wrong(tmp_path):
    bad = tmp_path / "truth.csv"
    bad.write_text("path,item\na.jpg,x\n")
    with pytest.raises(PiSearchError, match="query_path,item_id"):
        ev.read_truth(bad)
    bad.write_text("query_path,item_id\n")
    with pytest.raises(PiSearchError, match="no queries"):
        ev.read_truth(bad)
    bad.write_text("query_path,item_id\nq/a.jpg,x\n")
    (t,) = ev.read_truth(bad)
    assert t.path == tmp_path / "q" / "a.jpg" and t.item_id == "x"


def _tiny(tmp_path: Path, n: int = 6) -> tuple[Path, Path]:
    """A catalog of ``n`` demo items; queries: each catalog photo itself and one demo camera frame."""
    demo = bd.DEMO_DIR
    with open(demo / "frames" / "truth.csv", newline="") as f:
        frames = list(csv.DictReader(f))
    with open(demo / "catalog.csv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    shown = list(dict.fromkeys(fr["item_id"] for fr in frames))[:2]
    others = [i for i in rows if i not in shown][: n - len(shown)]
    cat = tmp_path / "catalog"
    (cat / "images").mkdir(parents=True)
    (tmp_path / "q").mkdir()
    truth = []
    with open(cat / "catalog.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "title", "price", "image"])
        for i in shown + others:
            shutil.copy(demo / rows[i]["image"], cat / rows[i]["image"])
            w.writerow([i, rows[i]["title"], rows[i]["price"], rows[i]["image"]])
            shutil.copy(demo / rows[i]["image"], tmp_path / "q" / f"{i}.jpg")
            truth.append((f"q/{i}.jpg", i))
    for fr in frames:
        if fr["item_id"] in shown and not any(t[0].startswith("q/frame") and t[1] == fr["item_id"]
                                              for t in truth):
            shutil.copy(demo / "frames" / fr["query_path"], tmp_path / "q" / fr["query_path"])
            truth.append((f"q/{fr['query_path']}", fr["item_id"]))
    with open(tmp_path / "truth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["query_path", "item_id"])
        w.writerows(truth)
    return cat, tmp_path / "truth.csv"


@pytest.mark.slow
def test_catalog_photo_as_query_is_found_first_exact_and_through_annoy(tmp_path):
    cat, truth = _tiny(tmp_path)
    result = ev.evaluate(cat, truth, [INT8], annoy=True)
    exact, annoy, looked = result["runs"]   # looked: the look every way in takes (model.look)
    assert (exact["search"], annoy["search"], looked["search"]) == ("exact", "annoy", "settled")
    assert result["items"] == 6 and result["queries"] == 8
    for run in (exact, annoy, looked):
        assert run["recall@1"] <= run["recall@5"] <= run["recall@10"] <= 1.0
        assert run["recall@1"] >= 6 / 8  # the six catalog photos themselves come back first
        assert run["query_ms"] > 0
    assert abs(exact["recall@1"] - annoy["recall@1"]) <= 1 / 8
    curve = result["curves"][f"{INT8.stem} exact"]
    assert curve[0] == pytest.approx(exact["recall@1"]) and curve[-1] == 1.0
    png = ev.write_report(result, tmp_path / "report.png")
    img = images.read(png, min_side=None)   # as it is: three sheets are tall enough to be decoded reduced
    assert img.shape[1] == 900 and img.shape[0] > 380


def test_unknown_truth_id_is_an_error(tmp_path):
    cat, truth = _tiny(tmp_path)
    with open(truth, "a") as f:
        f.write("q/ghost.jpg,not-in-catalog\n")
    with pytest.raises(PiSearchError, match="not-in-catalog"):
        ev.evaluate(cat, truth, [INT8], annoy=False)


def test_cli_eval_prints_json_and_writes_the_png(tmp_path):
    cat, truth = _tiny(tmp_path)
    args = ["eval", "--catalog", str(cat), "--truth", str(truth), "--model", str(INT8), "--no-annoy",
            "--report", str(tmp_path / "r.png"), "--json"]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert [r["search"] for r in data["runs"]] == ["exact"]
    assert set(data["runs"][0]) >= {"recall@1", "recall@5", "recall@10", "map", "query_ms"}
    assert Path(data["report"]).is_file()
    missing = CliRunner().invoke(main, ["eval"])
    assert missing.exit_code == 2 and "BENCHMARK" in missing.output


@pytest.mark.slow
@pytest.mark.skipif(not bd.STAMPS_ROOT.is_dir(), reason="needs the Debian package tuxpaint-stamps-default")
def test_generated_tiny_benchmark_evaluates(tmp_path):
    bd.make_benchmark(tmp_path / "b", seed=1, scenes=1, burst=1, limit=6)
    out = CliRunner().invoke(main, ["eval", str(tmp_path / "b"), "--model", str(INT8), "--json"])
    assert out.exit_code == 0, out.output
    runs = json.loads(out.stdout)["runs"]
    assert [r["search"] for r in runs] == ["exact", "annoy", "settled"]
    assert all(r["queries"] == 6 for r in runs)
    assert all(0 < r["recall@1"] <= r["recall@5"] <= r["recall@10"] <= 1 for r in runs)
    assert (tmp_path / "b" / "eval.png").is_file()
