"""index embed with the local engine: shards hold the vectors index build computes, resume after a stop, and
index build --embeddings turns them into the same bundle, refusing shards of another model or catalog."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import CATALOG_PHOTOS, write_catalog

from pi_search import images
from pi_search.embed import shards as sh
from pi_search.embed.build import FromShards, build_bundle
from pi_search.embed.catalog import read_catalog
from pi_search.embed.local import embed_local
from pi_search.errors import CatalogError
from pi_search.model.framing import embed_catalog_image


def shard_table(out) -> dict[str, np.ndarray]:
    """Every embedded row of a shards directory, asserting each id is there once."""
    table: dict[str, np.ndarray] = {}
    for path in sorted(sh.shard_files(out).values()):
        shard = sh.read_shard(path)
        for i, v in zip(shard.ids, shard.vectors, strict=True):
            assert i not in table, f"{i} in two shards"
            table[i] = v
    return table


@pytest.fixture(scope="module")
def shards(tmp_path_factory, catalog_dir, extractor):
    out = tmp_path_factory.mktemp("shards") / "s"
    report = embed_local(catalog_dir, out, extractor, shard_rows=5, progress=False)
    return out, report


def test_local_shards_hold_the_vectors_index_build_computes(shards, catalog_dir, extractor):
    out, report = shards
    assert (report.rows, report.shards, report.embedded, report.resumed) == (16, 4, 16, 0)
    manifest = sh.ShardsManifest.read(out)
    assert manifest.complete and manifest.count == 16 and manifest.failed == 0
    assert manifest.model == sh.ModelRef(extractor.name, extractor.sha256, 1280)
    assert manifest.framing == sh.catalog_framing(224)
    table = shard_table(out)
    rows, _ = read_catalog(catalog_dir)
    assert sorted(table) == sorted(r.id for r in rows)
    for row in rows:
        want = embed_catalog_image(extractor, images.read(row.image))
        assert table[row.id].dtype == np.float32 and table[row.id].shape == (1280,)
        assert np.array_equal(table[row.id], want), row.id
        assert abs(float(np.linalg.norm(table[row.id])) - 1) < 1e-5


@pytest.mark.slow   # builds a real bundle: over 1.5 s
def test_build_from_shards_is_the_build_from_the_catalog(shards, catalog_dir, bundle_dir, extractor,
                                                         tmp_path):
    out, _ = shards
    report = build_bundle(catalog_dir, tmp_path / "b", extractor, source=FromShards(out), progress=False)
    assert report.items == 16 and report.embedded == 0
    assert np.array_equal(np.load(tmp_path / "b" / "vectors.npy"), np.load(bundle_dir / "vectors.npy"))
    assert (tmp_path / "b" / "index.ann").read_bytes() == (bundle_dir / "index.ann").read_bytes()

    def items(path):
        with sqlite3.connect(path / "items.sqlite") as db:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            return {t: db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in tables}

    assert items(tmp_path / "b") == items(bundle_dir)


def test_build_from_shards_without_thumbnails_reads_no_photo(shards, catalog_dir, plain_bundle_dir, extractor,
                                                             tmp_path, monkeypatch, caplog):
    """The path for millions of items: vectors streamed from the shards, no photo decoded (nothing learned
    from them either)."""
    bundle_dir = plain_bundle_dir
    out, _ = shards

    def no_photos(*args, **kwargs):
        raise AssertionError("a photo was read")

    monkeypatch.setattr(images, "read", no_photos)
    report = build_bundle(catalog_dir, tmp_path / "b", extractor, source=FromShards(out), progress=False,
                          thumbnails=False, learn=False)
    assert report.items == 16 and report.skipped == []
    assert np.array_equal(np.load(tmp_path / "b" / "vectors.npy"), np.load(bundle_dir / "vectors.npy"))
    with sqlite3.connect(tmp_path / "b" / "items.sqlite") as db:
        assert db.execute("SELECT COUNT(*), COUNT(thumb) FROM items").fetchone() == (16, 0)
    assert not list(tmp_path.glob(".b.*"))   # the gathered vectors' temporary file is gone
    assert "interrupted build" not in caplog.text   # and was never taken for a leftover


@pytest.mark.slow   # builds a real bundle: over 1.5 s
def test_build_learns_from_the_views_in_the_shards_without_reading_a_photo(shards, catalog_dir, bundle_dir,
                                                                          extractor, tmp_path, monkeypatch):
    """The path for millions of items with learning: index embed made the views with the vectors, so the
    build reads no photo and learns what a build from the photos learns."""
    out, report = shards
    assert report.views == 16 * 6 + 4 and sh.ShardsManifest.read(out).learning == {
        "views": 6, "sampled": 16, "held_every": 4, "others": 32}

    def no_photos(*args, **kwargs):
        raise AssertionError("a photo was read")

    monkeypatch.setattr(images, "read", no_photos)
    built = build_bundle(catalog_dir, tmp_path / "b", extractor, source=FromShards(out), progress=False,
                         thumbnails=False)
    assert built.manifest.learned["items"] == 16 and built.manifest.learned["views_made_by"] == \
        "index embed (local)"
    for name in ("learned_matrix.npy", "learned_mean.npy", "vectors.npy"):
        assert np.array_equal(np.load(tmp_path / "b" / name), np.load(bundle_dir / name)), name


@pytest.mark.slow   # builds a real bundle: over 1.5 s
def test_shards_without_views_leave_the_views_to_the_build(catalog_dir, bundle_dir, extractor, tmp_path,
                                                           caplog):
    """index embed --no-learn: no views in the shards; the build makes them from the photos itself and
    learns the same projection."""
    report = embed_local(catalog_dir, tmp_path / "s", extractor, shard_rows=5, progress=False, views=0)
    assert report.views == 0 and sh.ShardsManifest.read(tmp_path / "s").learning is None
    assert not any(sh.read_shard(p, vectors=False).has_views for p in sh.shard_files(tmp_path / "s").values())
    with caplog.at_level("INFO"):
        built = build_bundle(catalog_dir, tmp_path / "b", extractor, source=FromShards(tmp_path / "s"),
                             progress=False)
    assert "holds no views to learn from" in caplog.text
    assert built.manifest.learned["items"] == 16 and "views_made_by" not in built.manifest.learned
    name = "learned_matrix.npy"
    assert np.array_equal(np.load(tmp_path / "b" / name), np.load(bundle_dir / name))


def test_a_big_catalog_makes_views_of_its_sample_only(catalog_dir, extractor, tmp_path, monkeypatch):
    """Above the sample's size, only an even sample of the items gets views, each with the sampled items
    before it (in earlier shards too) to show beside it; the shards of another sample are not resumed."""
    from pi_search.learn import catalog as learning

    real = learning.sample_rows
    monkeypatch.setattr(learning, "sample_rows", lambda n: real(n, 6))
    rows, _ = read_catalog(catalog_dir)
    plan = sh.Plan.from_rows(catalog_dir, rows, 5, views=2)
    assert plan.learn.sample == (0, 3, 6, 9, 12, 15)
    work = json.loads(plan.work(2)["learn"])   # rows 10..14: the sampled row 12, the 5th of the sample
    assert (work["rows"], work["first"], work["views"]) == ([12], 4, 2)
    assert work["before"] == [str(catalog_dir / rows[r].image.relative_to(catalog_dir)) for r in (0, 3, 6, 9)]
    report = embed_local(catalog_dir, tmp_path / "s", extractor, shard_rows=5, progress=False, views=2)
    held = {}
    for _, path in sorted(sh.shard_files(tmp_path / "s").items()):
        v_rows, vecs, v_held = sh.read_views(path, 1280)
        for r in np.unique(v_rows):
            held[int(r)] = v_held[v_rows == r].tolist()
    # 2 views each, and one held out for the 1st and 5th of the sample (rows 0 and 12)
    assert held == {0: [False, False, True], 3: [False, False], 6: [False, False], 9: [False, False],
                    12: [False, False, True], 15: [False, False]}
    assert report.views == 14
    with pytest.raises(CatalogError, match="made with 2 views of each of 6 sampled items to learn from, not "
                                           "with 6 views"):
        embed_local(catalog_dir, tmp_path / "s", extractor, shard_rows=5, progress=False)


def test_opencv_keeps_to_the_interpreters_threads_during_a_run(catalog_dir, extractor, tmp_path):
    """A local run frames photos with as many OpenCV threads as the interpreter has (one here: one core), and
    gives OpenCV back the count it had."""
    import cv2

    class Watching:   # the real extractor, noting OpenCV's thread count at each model pass
        def __init__(self, inner):
            self.inner, self.seen = inner, set()

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def embed(self, rgb):
            self.seen.add(cv2.getNumThreads())
            return self.inner.embed(rgb)

    watching, before = Watching(extractor), cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        embed_local(catalog_dir, tmp_path / "s", watching, shard_rows=8, progress=False)
        assert watching.seen == {extractor.num_threads} == {1}
        assert cv2.getNumThreads() == 2
    finally:
        cv2.setNumThreads(before)


def test_a_stopped_run_resumes_and_keeps_the_shards_it_wrote(shards, catalog_dir, extractor, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(shards[0], out)
    files = sh.shard_files(out)
    kept = {k: (p.stat().st_ino, p.stat().st_mtime_ns) for k, p in files.items() if k != 2}
    files[2].unlink()                                            # the shard in flight when it stopped
    (out / ".shard-000002.npz.123-abcd.tmp").write_bytes(b"half a shard")
    replace(sh.ShardsManifest.read(out), complete=False).write(out)
    report = embed_local(catalog_dir, out, extractor, shard_rows=5, progress=False)
    assert (report.resumed, report.embedded) == (11, 5)
    after = sh.shard_files(out)
    assert {k: (p.stat().st_ino, p.stat().st_mtime_ns) for k, p in after.items() if k != 2} == kept
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    table = shard_table(out)
    ref = shard_table(shards[0])
    assert sorted(table) == sorted(ref) and all(np.array_equal(table[i], ref[i]) for i in ref)
    again = embed_local(catalog_dir, out, extractor, shard_rows=5, progress=False)
    assert (again.resumed, again.embedded) == (16, 0)


def test_a_shard_that_lost_rows_is_embedded_again(shards, catalog_dir, extractor, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(shards[0], out)
    s = sh.read_shard(sh.shard_files(out)[1])
    sh.write_shard(out, 1, s.rows[:-1], s.ids[:-1], s.images[:-1], s.vectors[:-1], s.failed_rows,
                   s.failed_reasons)
    with pytest.raises(CatalogError, match="does not hold the catalog rows"):
        build_bundle(catalog_dir, tmp_path / "b", extractor, source=FromShards(out), progress=False)
    report = embed_local(catalog_dir, out, extractor, shard_rows=5, progress=False)
    assert (report.resumed, report.embedded) == (11, 5)
    assert len(shard_table(out)) == 16


def test_a_damaged_shard_is_embedded_again(shards, catalog_dir, extractor, tmp_path, caplog):
    out = tmp_path / "s"
    shutil.copytree(shards[0], out)
    path = sh.shard_files(out)[3]
    path.write_bytes(path.read_bytes()[:1000])                   # cut short (a disk that lied about syncing)
    with pytest.raises(CatalogError, match="shard-000003.npz: damaged"):
        build_bundle(catalog_dir, tmp_path / "b", extractor, source=FromShards(out), progress=False)
    report = embed_local(catalog_dir, out, extractor, shard_rows=5, progress=False)
    assert (report.resumed, report.embedded) == (15, 1)
    assert "shard-000003.npz: unreadable" in caplog.text
    assert shard_table(out).keys() == shard_table(shards[0]).keys()


def test_build_refuses_shards_of_another_model_catalog_or_an_unfinished_run(shards, catalog_dir, extractor,
                                                                           tmp_path):
    from pi_search.model.extractor import Extractor
    from pi_search.model.shipped import SHIPPED_FLOAT, shipped_model

    out, _ = shards
    other = Extractor(shipped_model(SHIPPED_FLOAT))
    with pytest.raises(CatalogError, match=r"made with model efficientnet_lite0_int8 .*index embed"):
        build_bundle(catalog_dir, tmp_path / "b", other, source=FromShards(out), progress=False)
    smaller = write_catalog(tmp_path / "smaller", CATALOG_PHOTOS[:15])
    with pytest.raises(CatalogError, match="catalog of 16 usable rows, this one has 15"):
        build_bundle(smaller, tmp_path / "b", extractor, source=FromShards(out), progress=False)
    renamed = tmp_path / "renamed"
    shutil.copytree(catalog_dir, renamed)
    csv = renamed / "catalog.csv"
    csv.write_text(csv.read_text().replace("astronaut,", "astronaut-2,", 1))
    with pytest.raises(CatalogError, match="other ids or images"):
        build_bundle(renamed, tmp_path / "b", extractor, source=FromShards(out), progress=False)
    dim_512 = replace(sh.ShardsManifest.read(out).model, dim=512)
    for field, value, words in (("framing", "catalog-v0 size=224 whole only", "framing 'catalog-v0"),
                                ("model", dim_512, "vectors of 512 dims")):
        changed = tmp_path / f"other-{field}"
        shutil.copytree(out, changed)
        replace(sh.ShardsManifest.read(out), **{field: value}).write(changed)
        with pytest.raises(CatalogError, match=words):
            build_bundle(catalog_dir, tmp_path / "b", extractor, source=FromShards(changed), progress=False)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(out, unfinished)
    replace(sh.ShardsManifest.read(out), complete=False).write(unfinished)
    with pytest.raises(CatalogError, match="not finished .* run pi-search index embed"):
        build_bundle(catalog_dir, tmp_path / "b", extractor, source=FromShards(unfinished), progress=False)
    assert not (tmp_path / "b").exists()
    # embedding another catalog or with another model into the same directory is refused too
    with pytest.raises(CatalogError, match="embed into another --out"):
        embed_local(smaller, unfinished, extractor, shard_rows=5, progress=False)
    with pytest.raises(CatalogError, match="embed into another --out"):
        embed_local(catalog_dir, unfinished, other, shard_rows=5, progress=False)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(CatalogError, match="not an embeddings directory"):
        embed_local(catalog_dir, stranger, extractor, progress=False)
    assert sorted(p.name for p in stranger.iterdir()) == ["notes.txt"]


@pytest.mark.slow   # two builds
def test_an_unreadable_photo_is_a_failed_row_skipped_by_the_build_like_without_shards(catalog_dir, extractor,
                                                                                     tmp_path):
    cat = tmp_path / "cat"
    shutil.copytree(catalog_dir, cat)
    (cat / "images" / "coffee.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    report = embed_local(cat, tmp_path / "s", extractor, shard_rows=4, progress=False)
    assert (report.embedded, report.failed) == (15, 1)
    failed = [(s.failed_rows.tolist(), s.failed_reasons) for s in map(sh.read_shard,
                                                                     sh.shard_files(tmp_path / "s").values())
              if len(s.failed_rows)]
    assert failed == [([2], [failed[0][1][0]])] and failed[0][1][0].startswith("unreadable image")
    via = build_bundle(cat, tmp_path / "b1", extractor, source=FromShards(tmp_path / "s"), progress=False)
    direct = build_bundle(cat, tmp_path / "b2", extractor, progress=False)
    assert via.items == direct.items == 15
    assert [str(p) for p in via.skipped] == [str(p) for p in direct.skipped] and len(via.skipped) == 1
    assert np.array_equal(np.load(tmp_path / "b1" / "vectors.npy"), np.load(tmp_path / "b2" / "vectors.npy"))


def test_one_writer_at_a_time(shards, catalog_dir, extractor, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(shards[0], out)
    rows, _ = read_catalog(catalog_dir)
    plan = sh.Plan.from_rows(catalog_dir, rows, 5, views=6)
    want = sh.header(plan, {"name": extractor.name, "sha256": extractor.sha256, "dim": 1280},
                     sh.catalog_framing(224))
    first = sh.ShardWriter(out, want, plan)
    try:
        with pytest.raises(CatalogError, match="another pi-search index embed is writing it"):
            embed_local(catalog_dir, out, extractor, shard_rows=5, progress=False)
    finally:
        first.close()
    assert embed_local(catalog_dir, out, extractor, shard_rows=5, progress=False).resumed == 16


@pytest.mark.slow   # builds a real bundle: over 1.5 s
def test_cli_embed_then_build(catalog_dir, tmp_path):
    from pi_search.cli import main

    runner = CliRunner()
    r = runner.invoke(main, ["index", "embed", str(catalog_dir), "--out", str(tmp_path / "s"), "--shard-rows",
                             "6", "--json"])
    assert r.exit_code == 0, r.output
    import json

    report = json.loads(r.stdout)
    assert (report["engine"], report["rows"], report["shards"], report["embedded"]) == ("local", 16, 3, 16)
    r = runner.invoke(main, ["index", "build", str(catalog_dir), "--embeddings", str(tmp_path / "s"), "--out",
                             str(tmp_path / "b"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["items"] == 16 and json.loads(r.stdout)["embedded"] == 0
    r = runner.invoke(main, ["index", "embed", str(catalog_dir), "--out", str(tmp_path / "s"), "--address",
                             "auto"])
    assert r.exit_code == 2 and "--address and --actors are for --engine ray" in r.output


def test_engine_ray_without_ray_names_the_extra(catalog_dir, tmp_path, monkeypatch):
    from pi_search.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)   # as if it were not installed
    r = CliRunner().invoke(main, ["index", "embed", str(catalog_dir), "--out", str(tmp_path / "s"),
                                  "--engine", "ray"])
    assert r.exit_code == 2
    assert "pip install 'pi-search[cluster]'" in r.output and r.output.count("\n") == 1, r.output
    assert not (tmp_path / "s").exists()


def test_pi_search_and_the_daemon_never_import_ray():
    code = ("import sys, pi_search, pi_search.cli, pi_search.bootstrap, pi_search.pipeline.worker, "
            "pi_search.web, pi_search.embed.build, pi_search.embed, pi_search.embed.shards, "
            "pi_search.embed.local, pi_search.embed.ray_engine\n"
            "from pi_search.bootstrap import build_daemon\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_the_manifest_is_read_back_as_written_and_a_wrong_field_is_one_line(shards, tmp_path):
    import json

    out, _ = shards
    manifest = sh.ShardsManifest.read(out)
    data = json.loads((out / sh.MANIFEST).read_text())
    assert manifest.to_dict() == data                  # the file's layout, field for field
    assert list(data)[:9] == ["format", "version", "model", "framing", "vectors", "catalog", "shard_rows",
                              "shards", "complete"]
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    for field, value in (("shard_rows", "5"), ("model", {"name": "m", "sha256": "x"}), ("complete", 1)):
        (bad / sh.MANIFEST).write_text(json.dumps({**data, field: value}))
        with pytest.raises(CatalogError) as exc:
            sh.ShardsManifest.read(bad)
        assert "\n" not in str(exc.value) and str(exc.value).endswith(f"delete {bad} and embed again")
        assert ("dim" if field == "model" else field) in str(exc.value)
    (bad / sh.MANIFEST).write_text(json.dumps({**data, "format": "something-else"}))
    with pytest.raises(CatalogError, match="not a pi-search embeddings directory"):
        sh.ShardsManifest.read(bad)
