"""The change store and the live catalog: taught items, edits and removals merged with the bundle."""

from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pytest
from conftest import camera_view

from pi_search.bundle.items import Item
from pi_search.bundle.write import BuildOptions, write_bundle
from pi_search.errors import CatalogError
from pi_search.live.catalog import LiveCatalog
from pi_search.live.changes import ChangeStore, store_path
from pi_search.live.served import dir_key
from pi_search.live.teach import embed_shots

DIM = 1280


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def near(v: np.ndarray, rng: np.random.Generator, noise: float = 0.01) -> np.ndarray:
    return unit(v + rng.normal(0, noise, v.shape).astype(np.float32))


@pytest.fixture
def live_dir(tmp_path, plain_bundle_dir):
    """A private copy of the shared real bundle (changes and compactions must not touch the original)."""
    out = tmp_path / "bundle"
    shutil.copytree(plain_bundle_dir, out)   # stored rows = model embeddings: usable as queries
    return out


@pytest.fixture
def catalog(live_dir):
    cat = LiveCatalog.open(live_dir, refresh_s=0.0)
    yield cat
    cat.close()


def stored_vector(bundle_dir, item_id: str) -> np.ndarray:
    """The bundle's own vector of ``item_id`` (a query identical to it must find it first)."""
    db = sqlite3.connect(bundle_dir / "items.sqlite")
    idx = db.execute("SELECT idx FROM items WHERE id = ?", (item_id,)).fetchone()[0]
    db.close()
    return unit(np.load(bundle_dir / "vectors.npy")[idx].astype(np.float32))


def test_store_round_trip_survives_reopen(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "b.changes.sqlite"
    s = ChangeStore(path, dim=8)
    s1 = s.add("mug", "Blue mug", "4.50", unit(rng.normal(size=(3, 8))), thumb=b"jpeg", extra={"shelf": 2})
    s2 = s.edit("mug", price="5.00", vectors=unit(rng.normal(size=(1, 8))))
    s3 = s.remove("lamp", base_item={"id": "lamp", "title": "Lamp", "price": None, "extra": {}})
    assert s1 < s2 < s3 == s.seq()
    s.close()
    s = ChangeStore(path, dim=8)
    snap = s.snapshot()
    mug, lamp = snap.items["mug"], snap.items["lamp"]
    assert (mug.title, mug.price, mug.extra, mug.shots, mug.deleted) == ("Blue mug", "5.00", {"shelf": 2}, 4,
                                                                        False)
    assert lamp.deleted and lamp.masks_bundle and lamp.base
    assert snap.vectors.shape == (4, 8) and sorted(set(snap.owners)) == ["mug"]
    assert np.allclose(np.linalg.norm(snap.vectors, axis=1), 1.0, atol=1e-5)
    assert s.thumbnail("mug") == b"jpeg" and s.thumbnail("lamp") is None
    assert [it.id for it in s.items()] == ["lamp", "mug"]  # most recent change first
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s.close()


@pytest.mark.parametrize("call, message", [
    (lambda s, v: s.add("", "T", None, v), "id is empty"),
    (lambda s, v: s.add("a/b", "T", None, v), "no slashes"),
    (lambda s, v: s.add("ok", "  ", None, v), "title is empty"),
    (lambda s, v: s.add("ok", "T", None, np.ones((1, 5), np.float32)), "expected finite float32 [n, 8]"),
    (lambda s, v: s.add("ok", "T", None, np.full((1, 8), np.nan, np.float32)), "finite"),
    (lambda s, v: s.add("ok", "T", None, np.ones((17, 8), np.float32)), "1 to 16 shots"),
    (lambda s, v: s.edit("ghost", title="x"), "no item 'ghost'"),
    (lambda s, v: s.remove("ghost"), "no item 'ghost'"),
])
def test_store_refuses_bad_changes_and_keeps_nothing(tmp_path, call, message):
    s = ChangeStore(tmp_path / "c.sqlite", dim=8)
    with pytest.raises(CatalogError, match=message.replace("[", r"\[").replace("]", r"\]")):
        call(s, np.ones((1, 8), np.float32))
    assert s.seq() == 0 and s.pending() == 0
    s.close()


def test_store_refuses_another_dimension_or_model(tmp_path):
    path = tmp_path / "c.sqlite"
    ChangeStore(path, dim=8, model_sha256="aaa").close()
    with pytest.raises(CatalogError, match="8-d"):
        ChangeStore(path, dim=16)
    with pytest.raises(CatalogError, match="another model"):
        ChangeStore(path, dim=8, model_sha256="bbb")


def test_taught_item_is_found_once_with_its_best_shot(catalog, live_dir):
    rng = np.random.default_rng(1)
    n0 = len(catalog)
    shots = unit(rng.normal(size=(3, DIM)))
    catalog.add("Brass lantern", "19.00", shots, item_id="lantern", thumb=b"\xff\xd8thumb")
    assert len(catalog) == n0 + 1
    res = catalog.search(near(shots[1], rng), 5)
    assert [m.id for m in res].count("lantern") == 1
    assert res[0].id == "lantern" and res[0].title == "Brass lantern" and res[0].price == "19.00"
    assert res[0].score > 0.9 and len(res) == 5
    assert [m.score for m in res] == sorted((m.score for m in res), reverse=True)
    # bundle items still match as before, with the taught item merged in by score
    cup = stored_vector(live_dir, "coffee")
    assert catalog.search(cup, 1)[0].id == "coffee"
    assert catalog.thumbnail("lantern") == b"\xff\xd8thumb"
    assert catalog.thumbnail("coffee")[:2] == b"\xff\xd8"
    assert store_path(live_dir).is_file() and not (live_dir / "bundle.changes.sqlite").exists()


def test_removed_and_edited_bundle_items(catalog, live_dir):
    cup = stored_vector(live_dir, "coffee")
    n0 = len(catalog)
    catalog.remove("coffee")
    res = catalog.search(cup, 5)
    assert "coffee" not in [m.id for m in res] and len(res) == 5
    assert len(catalog) == n0 - 1 and catalog.thumbnail("coffee") is None and catalog.item("coffee") is None
    with pytest.raises(CatalogError, match="already removed"):
        catalog.remove("coffee")
    cat_vec = stored_vector(live_dir, "cat")
    catalog.edit("cat", title="Chelsea, a tabby", price="9.00")
    top = catalog.search(cat_vec, 1)[0]
    assert (top.id, top.title, top.price) == ("cat", "Chelsea, a tabby", "9.00")
    assert len(catalog) == n0 - 1
    assert {it.id: it.deleted for it in catalog.changes()} == {"coffee": True, "cat": False}


def test_bundle_item_gains_views_and_ids_stay_unique(catalog, live_dir):
    rng = np.random.default_rng(2)
    extra = unit(rng.normal(size=(1, DIM)))
    with pytest.raises(CatalogError, match="already in the catalog"):
        catalog.add("Another apple", None, extra, item_id="apple")
    catalog.edit("apple", vectors=extra)
    res = catalog.search(near(extra[0], rng), 5)
    assert res[0].id == "apple" and [m.id for m in res].count("apple") == 1
    assert res[0].title == "Apple"
    with pytest.raises(CatalogError, match="already taught"):
        catalog.add("Another apple", None, extra, item_id="apple")


def test_removed_bundle_item_taught_again_keeps_only_new_shots(catalog, live_dir):
    rng = np.random.default_rng(3)
    orange = stored_vector(live_dir, "orange")
    catalog.remove("orange")
    new = unit(rng.normal(size=(1, DIM)))
    catalog.add("Blood orange", "1.20", new, item_id="orange")
    assert catalog.search(new[0], 1)[0].id == "orange"
    assert "orange" not in [m.id for m in catalog.search(orange, 3)]


def test_another_process_change_is_picked_up(catalog, live_dir):
    rng = np.random.default_rng(4)
    other = LiveCatalog.open(live_dir)
    v = unit(rng.normal(size=(2, DIM)))
    other.add("Teapot", None, v, item_id="teapot")
    other.close()
    assert catalog.search(v[0], 1)[0].id != "teapot"  # a search reads the published state only
    catalog.refresh()                                  # what the watcher does every refresh_s
    assert catalog.search(v[0], 1)[0].id == "teapot"


def test_real_photos_teach_an_object_not_in_the_catalog(catalog, extractor):
    import cv2

    from pi_search.model.framing import embed_query_image
    from pi_search.tools.benchmark_data import load_rgba, on_white

    photo = on_white(load_rgba("/usr/share/tuxpaint/stamps/animals/birds/ostrich.png"), 400)
    vecs, thumb = embed_shots(extractor, [(photo, "photo"), (camera_view(photo), "camera")])
    assert vecs.shape == (2, extractor.dim) and thumb[:2] == b"\xff\xd8"
    before = catalog.search(embed_query_image(extractor, cv2.flip(photo, 1)), 1)[0]
    assert before.id != "ostrich"
    catalog.add("Ostrich", "25.00", vecs, item_id="ostrich", thumb=thumb)
    h, w = photo.shape[:2]
    other_view = cv2.flip(photo, 1)[int(h * 0.1):, int(w * 0.05):int(w * 0.9)]
    top = catalog.search(embed_query_image(extractor, other_view), 3)
    assert top[0].id == "ostrich" and top[0].score > top[1].score + 0.1


def test_many_taught_shots_use_the_projection_and_agree_with_exact(tmp_path, monkeypatch):
    import pi_search.live.view as live

    rng = np.random.default_rng(5)
    base = unit(rng.normal(size=(300, 64)))
    write_bundle(tmp_path / "b", base, [Item(f"b{i}", f"B {i}") for i in range(300)],
                 model={"name": "m", "sha256": "x", "dim": 64},
                 options=BuildOptions.parse(dims=16, search="ann", n_trees=5))
    cat = LiveCatalog.open(tmp_path / "b", refresh_s=0.0)
    monkeypatch.setattr(live, "EXACT_TAUGHT_MAX", 10)
    taught = unit(rng.normal(size=(40, 64)))
    for i in range(0, 40, 2):
        cat.add(f"T {i}", None, taught[i:i + 2], item_id=f"t{i // 2}")
    assert cat.view.coarse is not None and cat.view.coarse.shape == (40, 16)
    for j in range(0, 40, 3):
        res = cat.search(near(taught[j], rng, 0.02), 3)
        assert res[0].id == f"t{j // 2}"
    cat.close()


@pytest.mark.slow
def test_adds_appended_in_place_match_a_fresh_read(tmp_path, monkeypatch):
    import pi_search.live.view as live

    rng = np.random.default_rng(6)
    items = [Item(f"b{i}", f"B {i}") for i in range(200)]
    write_bundle(tmp_path / "b", unit(rng.normal(size=(200, 32))), items,
                 model={"name": "m", "sha256": "x", "dim": 32},
                 options=BuildOptions.parse(dims=8, search="ann", n_trees=4))
    monkeypatch.setattr(live, "EXACT_TAUGHT_MAX", 150)
    cat = LiveCatalog.open(tmp_path / "b", refresh_s=3600)
    taught = unit(rng.normal(size=(600, 32)))
    reads = []
    real_snapshot = cat.store.snapshot
    monkeypatch.setattr(cat.store, "snapshot", lambda: reads.append(1) or real_snapshot())
    for i in range(300):   # crosses the pre-selection threshold and the first buffer's capacity
        cat.add(f"T {i}", None, taught[2 * i:2 * i + 2], item_id=f"t{i}")
    assert len(reads) < 10      # most adds did not read the store again
    queries = [near(taught[j], rng, 0.02) for j in range(0, 600, 7)]
    appended = [[(m.id, round(m.score, 5)) for m in cat.search(q, 5)] for q in queries]
    assert len(cat) == 500 and cat.view.coarse is not None and len(cat.view.vectors) == 600
    cat.reload()
    assert [[(m.id, round(m.score, 5)) for m in cat.search(q, 5)] for q in queries] == appended
    assert [a[0][0] for a in appended] == [f"t{j // 2}" for j in range(0, 600, 7)]
    cat.close()


def test_a_broken_replacement_bundle_is_not_mapped_until_a_good_one_comes(catalog, live_dir, tmp_path,
                                                                          caplog):
    import os

    rng = np.random.default_rng(7)
    v = unit(rng.normal(size=(1, DIM)))
    catalog.add("Kettle", None, v, item_id="kettle")
    cup = stored_vector(live_dir, "coffee")
    broken = tmp_path / "broken"
    shutil.copytree(live_dir, broken)
    (broken / "vectors.npy").unlink()
    os.rename(live_dir, tmp_path / "old")
    os.rename(broken, live_dir)
    for _ in range(3):
        catalog.refresh()   # the watcher's turn: the broken bundle is refused, the old one keeps serving
        assert catalog.search(cup, 1)[0].id == "coffee" and catalog.search(v[0], 1)[0].id == "kettle"
    assert sum("keeping the bundle in use" in r.message for r in caplog.records) == 1
    shutil.rmtree(live_dir)
    fixed = tmp_path / "fixed"
    shutil.copytree(tmp_path / "old", fixed)
    os.rename(fixed, live_dir)
    catalog.refresh()
    assert catalog.search(v[0], 1)[0].id == "kettle" and catalog.search(cup, 1)[0].id == "coffee"
    assert catalog.view.key == dir_key(live_dir)   # the good replacement is mapped


def test_the_empty_scene_is_taken_out_of_camera_shots(tmp_path):
    from pi_search.live.teach import BACKGROUND_WEIGHT, without_background

    rng = np.random.default_rng(8)
    obj, scene = unit(rng.normal(size=(2, 64)))
    shot = unit(obj + scene)
    assert np.array_equal(without_background(shot[None], None)[0], shot)
    cleaned = without_background(shot[None], scene)[0]
    assert np.isclose(np.linalg.norm(cleaned), 1.0, atol=1e-5)
    assert cleaned @ obj > shot @ obj and cleaned @ scene < shot @ scene
    expected = shot - BACKGROUND_WEIGHT * scene
    assert np.allclose(cleaned, expected / np.linalg.norm(expected), atol=1e-5)
    # the store keeps it across processes, and forgets it on request
    s = ChangeStore(tmp_path / "c.sqlite", dim=64)
    assert s.background() is None
    s.set_background(scene * 3)
    s.close()
    s = ChangeStore(tmp_path / "c.sqlite", dim=64)
    assert np.allclose(s.background(), scene, atol=1e-6) and s.seq() == 0   # not a catalog change
    with pytest.raises(CatalogError, match="background"):
        s.set_background(np.ones(5, np.float32))
    s.set_background(None)
    assert s.background() is None
    s.close()
