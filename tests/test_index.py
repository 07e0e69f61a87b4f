"""Bundle loading and search with the real model and real Annoy: scores, modes, refusals, thumbnails."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import CATALOG_PHOTOS, camera_view, load_photo

from pi_search.bundle.backends.annoy import DEFAULT_TREES
from pi_search.bundle.backends.annoy import FILE as ANNOY_FILE
from pi_search.bundle.backends.usearch import FILE as USEARCH_FILE
from pi_search.bundle.files import bundle_lock, recover
from pi_search.bundle.items import Item
from pi_search.bundle.manifest import FORMAT_VERSION, ITEMS_FILE, MANIFEST, STORE_FILE, read_manifest
from pi_search.bundle.projection import fit_pca
from pi_search.bundle.reader import Bundle
from pi_search.bundle.write import BuildOptions, write_bundle
from pi_search.errors import BundleError, CatalogError
from pi_search.model.framing import embed_catalog_image, embed_query_image
from pi_search.updates.install import info


def test_small_catalog_uses_exact_search_and_writes_every_file(bundle_dir):
    m = json.loads((bundle_dir / MANIFEST).read_text())
    learned = read_manifest(bundle_dir).learned
    assert m["format_version"] == FORMAT_VERSION
    assert m["items"] == len(CATALOG_PHOTOS)
    assert m["search"]["mode"] == "exact"
    assert m["index"] == {"backend": "annoy", "file": ANNOY_FILE, "metric": "angular",
                          "dim": learned["dims"], "n_trees": DEFAULT_TREES}   # the stored rows'
    assert learned["dims"] < m["model"]["dim"] == 1280
    for name in (ANNOY_FILE, ITEMS_FILE, STORE_FILE):
        assert (bundle_dir / name).stat().st_size > 0
    assert not list(bundle_dir.parent.glob(".bundle.*"))  # no temporary or old directories left behind


def test_catalog_photo_finds_itself_with_cosine_one(bundle, extractor, catalog_dir):
    from pi_search import images

    for item_id in ("apple", "rocket", "strawberry"):
        vec = embed_catalog_image(extractor, images.read(catalog_dir / "images" / f"{item_id}.jpg"))
        matches = bundle.search(vec, k=5)
        assert matches[0].id == item_id
        assert matches[0].score == pytest.approx(1.0, abs=1e-4)
        scores = [m.score for m in matches]
        assert scores == sorted(scores, reverse=True)
        assert all(-1.0 <= s <= 1.0 for s in scores)


def test_camera_view_of_an_item_ranks_it_first(bundle, extractor):
    for item_id, source in (("coffee", "skimage:coffee"), ("butterfly", CATALOG_PHOTOS[7][3])):
        vec = embed_query_image(extractor, camera_view(load_photo(source)))
        top = bundle.search(vec, k=3)
        assert top[0].id == item_id
        assert top[0].score < 0.999  # a different photo, not the same vector


def test_match_fields_and_metadata(bundle, extractor):
    vec = embed_query_image(extractor, load_photo("skimage:coffee"))
    m = bundle.search(vec, k=1)[0]
    expected = {"id": "coffee", "title": "Cup of coffee", "price": "3.20", "score": round(m.score, 6),
                "photo": 0, "via": "image"}
    assert m.as_dict() == expected
    assert bundle.item("coffee")["extra"] == {"colour": "n/a"}
    assert len(bundle.search(vec, k=100)) == len(CATALOG_PHOTOS)


def test_score_is_the_cosine_of_the_full_vectors(bundle, extractor):
    rng = np.random.default_rng(3)
    q = rng.standard_normal(extractor.dim).astype(np.float32)
    q /= np.linalg.norm(q)
    store = np.load(bundle.directory / STORE_FILE).astype(np.float32)
    expected = np.sort(store @ bundle.to_learned(q))[::-1][:4]   # stored rows: in the learned space
    assert bundle.learned is not None
    got = [m.score for m in bundle.search(q, k=4)]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_thumbnail_by_id_never_by_path(bundle):
    jpeg = bundle.thumbnail("rocket")
    assert jpeg[:2] == b"\xff\xd8"
    from pi_search import images

    rgb = images.decode(jpeg)
    assert max(rgb.shape[:2]) <= 256
    assert bundle.thumbnail("no-such-id") is None
    assert bundle.thumbnail("../manifest.json") is None
    assert bundle.thumbnail("' OR 1=1 --") is None


def _copy(bundle_dir, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(bundle_dir, d)
    return d


def _edit_manifest(d, fn):
    m = json.loads((d / MANIFEST).read_text())
    fn(m)
    (d / MANIFEST).write_text(json.dumps(m))


def test_refuses_a_bundle_of_another_model(bundle_dir, extractor, tmp_path):
    d = _copy(bundle_dir, tmp_path)
    _edit_manifest(d, lambda m: m["model"].update(sha256="ab" * 32, name="other_model"))
    with pytest.raises(BundleError) as err:
        Bundle.open(d, extractor=extractor)
    msg = str(err.value)
    assert "\n" not in msg and "other_model" in msg and "abababababab" in msg
    assert extractor.sha256[:12] in msg and "pi-search index build" in msg
    Bundle.open(d).close()  # without an extractor there is nothing to compare


def test_refuses_another_dimension(bundle_dir, extractor, tmp_path):
    d = _copy(bundle_dir, tmp_path)
    _edit_manifest(d, lambda m: m["model"].update(dim=1792))
    with pytest.raises(BundleError, match=r"1792-d but the model .* gives 1280-d; rebuild"):
        Bundle.open(d, extractor=extractor)


def test_refuses_a_newer_format(bundle_dir, extractor, tmp_path):
    d = _copy(bundle_dir, tmp_path)
    _edit_manifest(d, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(BundleError, match=r"newer than this pi-search reads .*rebuild"):
        Bundle.open(d, extractor=extractor)


@pytest.mark.parametrize("damage", ["no-manifest", "bad-json", "no-store", "truncated-store"])
def test_damaged_bundles_give_one_line_errors(bundle_dir, tmp_path, damage):
    d = _copy(bundle_dir, tmp_path)
    if damage == "no-manifest":
        (d / MANIFEST).unlink()
    elif damage == "bad-json":
        (d / MANIFEST).write_text("{not json")
    elif damage == "no-store":
        (d / STORE_FILE).unlink()
    else:
        data = (d / STORE_FILE).read_bytes()
        (d / STORE_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError) as err:
        Bundle.open(d)
    msg = str(err.value)
    assert "\n" not in msg and ("rebuild" in msg or "pi-search index build" in msg)


def test_missing_directory_says_how_to_build(tmp_path):
    with pytest.raises(BundleError, match="pi-search index build CATALOG --out"):
        Bundle.open(tmp_path / "nothing")


def _clustered(n=3000, dim=64, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((60, dim)) * np.linspace(2.0, 0.2, dim)
    x = centres[rng.integers(0, 60, n)] + 0.5 * rng.standard_normal((n, dim)) * np.linspace(1.0, 0.1, dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _write(tmp_path, x, name, **opts):
    items = [Item(f"id{i}", f"item {i}") for i in range(len(x))]
    model = {"name": "synthetic", "sha256": "0" * 64, "dim": x.shape[1]}
    write_bundle(tmp_path / name, x, items, model=model, options=BuildOptions.parse(**opts))
    return tmp_path / name


@pytest.mark.parametrize("store", ["float16", "int8"])
def test_ann_with_projection_and_rerank_agrees_with_exact(tmp_path, store):
    x = _clustered()
    exact = _write(tmp_path, x, "exact", search="exact")
    ann = _write(tmp_path, x, f"ann-{store}", search="ann", dims=16, n_trees=20, store_dtype=store,
                 candidates=100, search_k=4000)
    m = json.loads((ann / MANIFEST).read_text())
    assert m["projection"]["dims"] == 16 and m["index"]["dim"] == 16 and m["store"]["dtype"] == store
    rng = np.random.default_rng(1)
    queries = x[rng.choice(len(x), 50, replace=False)] + 0.05 * rng.standard_normal((50, x.shape[1]))
    with Bundle.open(exact) as be, Bundle.open(ann) as ba:
        hits = 0
        for q in queries.astype(np.float32):
            e, _ = be.search_indices(q, 10)
            a, _ = ba.search_indices(q, 10)
            hits += len(set(e.tolist()) & set(a.tolist()))
        assert hits / (10 * len(queries)) >= 0.9
        # Scores come from the full vectors (float16 or int8), close to the exact float32 cosine.
        q = queries[0].astype(np.float32)
        q /= np.linalg.norm(q)
        idx, scores = ba.search_indices(q, 5)
        np.testing.assert_allclose(scores, x[idx] @ q, atol=0.01 if store == "int8" else 1e-3)


def test_search_overrides_and_bad_vectors(tmp_path):
    x = _clustered(500, 32)
    d = _write(tmp_path, x, "b", search="ann", dims=8, n_trees=5)
    with Bundle.open(d, search={"mode": "exact"}) as b:
        idx, s = b.search_indices(x[7], 3)
        assert idx[0] == 7 and s[0] == pytest.approx(1.0, abs=1e-3)
        with pytest.raises(BundleError, match="31 dims"):
            b.search(x[7][:31])
    with pytest.raises(BundleError, match="search settings"):
        Bundle.open(d, search={"bogus": 1})


def test_pca_projection_contract():
    x = _clustered(800, 32)
    p = fit_pca(x, 8)
    y = p.apply(x)
    assert y.shape == (800, 8) and y.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)
    assert 0.0 < p.explained <= 1.0
    w = fit_pca(x, 8, whiten=True)
    z = (x - w.mean) @ w.components.T
    np.testing.assert_allclose(z.var(axis=0, ddof=1), 1.0, rtol=0.05)
    with pytest.raises(BundleError, match="--dims 40"):
        fit_pca(x, 40)


def test_info_lists_files_and_sizes(bundle_dir):
    data = info(bundle_dir)
    assert data["items"] == len(CATALOG_PHOTOS)
    assert set(data["files"]) >= {MANIFEST, ANNOY_FILE, ITEMS_FILE, STORE_FILE}
    assert data["total_bytes"] == sum(p.stat().st_size for p in bundle_dir.iterdir())


def test_usearch_backend_behind_the_same_interface(tmp_path):
    x = _clustered(2000, 48)
    exact = _write(tmp_path, x, "exact", search="exact")
    us = _write(tmp_path, x, "us", search="ann", dims=24, backend="usearch", candidates=60)
    m = json.loads((us / MANIFEST).read_text())
    assert m["index"]["backend"] == "usearch" and (us / USEARCH_FILE).is_file()
    assert not (us / ANNOY_FILE).exists()
    rng = np.random.default_rng(2)
    hits = 0
    with Bundle.open(exact) as be, Bundle.open(us) as bu:
        for i in rng.choice(len(x), 40, replace=False):
            q = x[i] + 0.05 * rng.standard_normal(x.shape[1]).astype(np.float32)
            e, _ = be.search_indices(q, 10)
            matches = bu.search(q, 10)
            assert matches[0].id == f"id{e[0]}"
            hits += len({m.index for m in matches} & set(e.tolist()))
    assert hits / 400 >= 0.9


def test_a_waiter_names_a_holder_that_has_only_just_taken_the_lock(tmp_path, caplog):
    """Another process takes the lock and writes its name a moment later: the waiter still says whom it
    waits for (it used to read the empty file and say "another build")."""
    import fcntl
    import logging
    import os
    import threading
    import time

    from pi_search.bundle.files import lock_path

    out = tmp_path / "b"
    fd = os.open(lock_path(out), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)

    def holder():
        time.sleep(0.1)
        os.pwrite(fd, b"pi-search demo build (pid 7)", 0)
        time.sleep(0.2)
        os.close(fd)                        # releases the lock

    threading.Thread(target=holder, daemon=True).start()
    with caplog.at_level(logging.WARNING, logger="pi_search.bundle.files"), bundle_lock(out):
        pass
    assert "waiting for another pi-search demo build (pid 7) to finish" in caplog.text


def test_leftovers_of_a_killed_build_are_removed(tmp_path):
    """Builds hold the bundle's lock: what a killed one left is removed by the next, at once; a running one's
    files are left alone while it holds the lock."""
    x = _clustered(50, 16)
    stale = tmp_path / ".b.tmp-deadbeef"
    stale.mkdir()
    (stale / "index.ann").write_bytes(b"half")
    _write(tmp_path, x, "b", search="exact")
    assert not stale.exists()
    assert (tmp_path / "b" / MANIFEST).is_file()
    running = tmp_path / ".b.tmp-cafe0000"
    running.mkdir()
    with bundle_lock(tmp_path / "b", what="build"):
        recover(tmp_path / "b")          # another process's clean-up: the lock is held, nothing goes
        assert running.exists()
        with pytest.raises(CatalogError, match="another build .* is running"), \
                bundle_lock(tmp_path / "b", wait=False):
            pass
    recover(tmp_path / "b")
    assert not running.exists() and not list(tmp_path.glob(".b.lock"))
