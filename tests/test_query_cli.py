"""The index and query commands as users and scripts call them: exit codes, stdout JSON, stderr lines."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from pi_search.cli import main


@pytest.fixture()
def run():
    def _run(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return _run


def test_build_info_and_query_json_contract(run, catalog_dir, query_photo, tmp_path, extractor, caplog):
    out = tmp_path / "bundle"
    r = run("index", "build", catalog_dir, "--out", out, "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["items"] == 16 and report["skipped"] == 0 and report["search"] == "exact"

    r = run("index", "info", out, "--json")
    assert r.exit_code == 0
    info = json.loads(r.stdout)
    assert info["items"] == 16
    assert info["model"] == {"name": extractor.name, "sha256": extractor.sha256, "dim": 1280}
    assert info["index"]["backend"] == "annoy" and info["index"]["n_trees"] > 0
    assert info["projection"] is None
    assert info["files"]["index.ann"] > 0 and "created" in info

    r = run("index", "info", out)
    assert r.exit_code == 0 and "items       16" in r.stdout and extractor.sha256 in r.stdout

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    apple = catalog_dir / "images" / "apple.jpg"
    r = run("query", "--bundle", out, "--k", 3, "--json", query_photo, bad, apple)
    assert r.exit_code == 1  # one image could not be read; the others are answered
    data = json.loads(r.stdout)
    assert list(data) == ["results"]
    res = data["results"]
    assert [x["query"] for x in res] == [str(query_photo), str(bad), str(apple)]
    assert res[1]["matches"] == [] and "not a readable image" in res[1]["error"]
    for entry in (res[0], res[2]):
        assert "error" not in entry and len(entry["matches"]) == 3
        assert entry["codes"] == []     # no barcode in these photos
        for m in entry["matches"]:
            assert set(m) == {"id", "title", "price", "score", "photo", "via"} and m["via"] == "image"
            assert -1.0 <= m["score"] <= 1.0
    assert res[0]["matches"][0]["id"] == "coffee"
    assert res[2]["matches"][0] == {"id": "apple", "title": "Apple", "price": "0.50",
                                    "score": res[2]["matches"][0]["score"], "photo": 0, "via": "image"}
    assert "1 of 3 image(s) could not be read" in caplog.text


def test_query_text_output(run, bundle_dir, query_photo):
    r = run("query", "--bundle", bundle_dir, "--k", 2, query_photo)
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[0] == str(query_photo)
    assert lines[1].strip().startswith("1. ") and "coffee  Cup of coffee  3.20" in lines[1]
    assert len(lines) == 3


def test_mismatched_bundle_is_refused_with_one_line(run, bundle_dir, query_photo, tmp_path):
    d = tmp_path / "other"
    shutil.copytree(bundle_dir, d)
    m = json.loads((d / "manifest.json").read_text())
    m["model"]["sha256"] = "12" * 32
    (d / "manifest.json").write_text(json.dumps(m))
    r = run("query", "--bundle", d, "--json", query_photo)
    assert r.exit_code == 2
    assert r.stdout == ""
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "121212121212" in err[0]
    assert f"pi-search index build CATALOG --out {d}" in err[0]


@pytest.mark.slow   # builds a real bundle: over 1.5 s
def test_build_reports_bad_rows_and_strict_fails(run, catalog_dir, tmp_path, caplog):
    root = tmp_path / "cat"
    shutil.copytree(catalog_dir, root)
    with open(root / "catalog.csv", "a") as f:
        f.write("ghost,Ghost,1,images/ghost.jpg,x\n")
    r = run("index", "build", root, "--out", tmp_path / "b")
    assert r.exit_code == 0
    assert "catalog.csv line 18: images/ghost.jpg: missing image file" in caplog.text
    assert "16 items indexed, 1 bad row(s) skipped" in r.stderr
    r = run("index", "build", root, "--out", tmp_path / "strict", "--strict")
    assert r.exit_code == 2 and "--strict" in r.stderr
    assert not (tmp_path / "strict").exists()


@pytest.mark.slow
def test_build_with_projection_options(run, catalog_dir, tmp_path):
    r = run("index", "build", catalog_dir, "--out", tmp_path / "b", "--dims", 8, "--search", "ann",
            "--store", "int8", "--trees", 5, "--candidates", 12, "--search-k", 500, "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(run("index", "info", tmp_path / "b", "--json").stdout)
    assert info["projection"]["dims"] == 8 and info["projection"]["whiten"] is True  # the default
    r = run("index", "build", catalog_dir, "--out", tmp_path / "b", "--dims", 8, "--search", "ann",
            "--no-whiten", "--trees", 5)
    assert r.exit_code == 0
    assert json.loads(run("index", "info", tmp_path / "b", "--json").stdout)["projection"]["whiten"] is False
    assert info["index"]["dim"] == 8 and info["n_trees"] == 5 and info["store"]["dtype"] == "int8"
    assert info["search"] == {"mode": "ann", "candidates": 12, "search_k": 500}
    r = run("index", "build", catalog_dir, "--out", tmp_path / "c", "--dims", "lots")
    assert r.exit_code == 2 and "'lots'" in r.stderr


def test_info_of_a_missing_bundle(run, tmp_path):
    r = run("index", "info", tmp_path / "nope")
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and "pi-search index build" in r.stderr


def test_query_in_a_real_process_prints_only_json_on_stdout(bundle_dir, query_photo, tmp_path):
    import subprocess
    import sys

    missing = tmp_path / "missing.jpg"
    from pathlib import Path

    exe = Path(sys.executable).parent / "pi-search"
    cmd = [str(exe), "query", "--bundle", str(bundle_dir), "--k", "2", "--json", str(query_photo),
           str(missing)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    res = json.loads(r.stdout)["results"]
    assert res[0]["matches"][0]["id"] == "coffee" and "cannot read" in res[1]["error"]
    assert "could not be read" in r.stderr
