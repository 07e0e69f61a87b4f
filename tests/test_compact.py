"""Compaction: changes folded into a new bundle beside the live one, swapped in, then forgotten."""

from __future__ import annotations

import os
import shutil
import sqlite3

import numpy as np
import pytest
from fakes import wait_until

from pi_search.bundle.ids import ROW_SEP
from pi_search.bundle.manifest import read_manifest
from pi_search.errors import CatalogError
from pi_search.live import compact as compact_mod
from pi_search.live.catalog import LiveCatalog
from pi_search.live.changes import store_path

DIM = 1280


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def live_dir(tmp_path, plain_bundle_dir):
    out = tmp_path / "bundle"
    shutil.copytree(plain_bundle_dir, out)   # stored rows = model embeddings: usable as queries
    return out


def bundle_vector(directory, item_id: str) -> np.ndarray:
    db = sqlite3.connect(directory / "items.sqlite")
    idx = db.execute("SELECT idx FROM items WHERE id = ?", (item_id,)).fetchone()[0]
    db.close()
    return unit(np.load(directory / "vectors.npy")[idx].astype(np.float32))


def results(cat: LiveCatalog, queries: dict, k: int = 3) -> dict:
    return {name: [(m.id, m.title, m.price, round(m.score, 4)) for m in cat.search(q, k)]
            for name, q in queries.items()}


def teach_some(cat: LiveCatalog, rng) -> dict:
    """Three shots of a new item, a removal, an edit, and a new view of a bundle item; returns queries."""
    lamp = unit(rng.normal(size=(3, DIM)))
    pear_view = unit(rng.normal(size=(1, DIM)))
    queries = {"lamp": lamp[2], "coffee": bundle_vector(cat.directory, "coffee"),
               "cat": bundle_vector(cat.directory, "cat"), "pear": pear_view[0]}
    cat.add("Desk lamp", "30.00", lamp, item_id="lamp", thumb=b"\xff\xd8lamp")
    cat.remove("coffee")
    cat.edit("cat", title="Tabby cat", price="7.00")
    cat.edit("apple", vectors=pear_view)
    return queries


def test_compaction_keeps_every_result_and_empties_the_store(live_dir):
    rng = np.random.default_rng(0)
    cat = LiveCatalog.open(live_dir, refresh_s=0.0)
    queries = teach_some(cat, rng)
    n = len(cat)
    before = results(cat, queries)
    assert before["lamp"][0][:3] == ("lamp", "Desk lamp", "30.00")
    report = cat.compact()
    assert report["folded"] == 4 and report["items"] == n == 16
    assert report["views"] == 3  # two more lamp shots, one more apple shot
    assert cat.store.pending() == 0 and cat.changes() == []
    assert results(cat, queries) == before and len(cat) == n
    assert cat.thumbnail("lamp") == b"\xff\xd8lamp" and cat.thumbnail("coffee") is None
    manifest = read_manifest(live_dir)
    assert manifest.folded_seq == 4 and manifest.items == 19
    assert manifest.catalog == read_manifest(live_dir).catalog is not None
    assert [p.name for p in live_dir.parent.iterdir() if p.name.startswith(".")] == []
    cat.close()
    again = LiveCatalog.open(live_dir, refresh_s=0.0)  # a fresh process sees the same catalog
    assert results(again, queries) == before and len(again) == n
    assert all(ROW_SEP not in m.id for m in again.search(queries["lamp"], 16))
    again.close()


def test_changes_made_during_a_compaction_are_kept(live_dir):
    rng = np.random.default_rng(1)
    cat = LiveCatalog.open(live_dir, refresh_s=0.0)
    queries = teach_some(cat, rng)
    late = unit(rng.normal(size=(1, DIM)))

    def during(step):
        if step == "built":  # the new bundle is written, not yet live
            cat.add("Late vase", None, late, item_id="vase")
            cat.remove("lamp")

    compact_mod.compact(live_dir, cat.store, progress=during)
    cat.reload()
    assert {it.id for it in cat.changes()} == {"vase", "lamp"}
    assert cat.search(late[0], 1)[0].id == "vase"
    assert "lamp" not in [m.id for m in cat.search(queries["lamp"], 5)]
    assert cat.search(queries["cat"], 1)[0].title == "Tabby cat"
    cat.compact()
    assert cat.store.pending() == 0 and cat.search(late[0], 1)[0].id == "vase"
    assert "lamp" not in [m.id for m in cat.search(queries["lamp"], 5)]
    cat.close()


def test_crash_between_swap_and_forget_counts_nothing_twice(live_dir, monkeypatch):
    rng = np.random.default_rng(2)
    cat = LiveCatalog.open(live_dir, refresh_s=0.0)
    queries = teach_some(cat, rng)
    n, before = len(cat), results(cat, queries)

    def crash(step):
        if step == "swapped":
            raise KeyboardInterrupt  # the process dies before the store forgets the folded changes

    with pytest.raises(KeyboardInterrupt):
        compact_mod.compact(live_dir, cat.store, progress=crash)
    assert cat.store.pending() == 4          # still in the store ...
    cat.close()
    cat = LiveCatalog.open(live_dir, refresh_s=0.0)  # ... and forgotten on open: the bundle holds them
    assert cat.store.pending() == 0 and len(cat) == n and results(cat, queries) == before
    cat.close()


def test_a_running_daemon_catalog_sees_another_process_compact(live_dir):
    rng = np.random.default_rng(3)
    daemon = LiveCatalog.open(live_dir, refresh_s=0.0)
    queries = teach_some(daemon, rng)
    before = results(daemon, queries)
    assert compact_mod.compact_path(live_dir)["folded"] == 4
    assert results(daemon, queries) == before     # still the old bundle: searching reloads nothing
    daemon.refresh()                              # the watcher's turn: the compacted bundle is mapped
    assert results(daemon, queries) == before
    assert daemon.bundle.manifest.folded_seq == 4 and daemon.changes() == []
    daemon.close()


def test_background_compaction_after_enough_changes(live_dir):
    rng = np.random.default_rng(4)
    cat = LiveCatalog.open(live_dir, refresh_s=0.0, compact_after=3)
    vecs = unit(rng.normal(size=(3, DIM)))
    for i in range(3):
        cat.add(f"Thing {i}", None, vecs[i:i + 1], item_id=f"thing{i}")
    cat.compaction.join(60)
    assert cat.last_compaction["folded"] == 3 and cat.store.pending() == 0
    assert [cat.search(v, 1)[0].id for v in vecs] == ["thing0", "thing1", "thing2"]
    cat.close()


def test_scheduled_compaction_folds_pending_changes(live_dir):
    import time

    rng = np.random.default_rng(7)
    cat = LiveCatalog.open(live_dir, refresh_s=0.05, compact_every_s=0.2)
    v = unit(rng.normal(size=(2, DIM)))
    cat.add("Clock", None, v, item_id="clock")
    assert cat.compacting is False          # not due yet
    time.sleep(0.3)
    assert cat.search(v[0], 1)[0].id == "clock" and not cat.compacting and cat.last_compaction is None
    cat.watch()                             # the daemon's timer finds the schedule due and starts it
    assert wait_until(lambda: cat.last_compaction is not None, 60)
    assert cat.last_compaction["folded"] == 1 and cat.store.pending() == 0
    assert cat.search(v[1], 1)[0].id == "clock" and len(cat) == 17
    cat.close()


def test_recover_puts_a_bundle_back_after_a_crash_between_renames(live_dir):
    rng = np.random.default_rng(5)
    cat = LiveCatalog.open(live_dir, refresh_s=0.0)
    queries = teach_some(cat, rng)
    before = results(cat, queries)
    cat.close()
    # the state a crash leaves between "rename live away" and "rename new into place"
    old = live_dir.parent / ".bundle.old-7"
    os.rename(live_dir, old)
    cat = LiveCatalog.open(live_dir, refresh_s=0.0)
    assert results(cat, queries) == before and not old.exists()
    cat.close()
    # a complete staged bundle wins over the old one (which lacks the folded changes)
    shutil.copytree(live_dir, old)
    cat = LiveCatalog.open(live_dir)
    cat.compact()
    cat.close()
    os.rename(live_dir, live_dir.parent / ".bundle.compact-4")
    (live_dir.parent / "..bundle.compact-5.tmp-ab12").mkdir()   # a build that never finished
    cat = LiveCatalog.open(live_dir, refresh_s=0.0)
    assert results(cat, queries) == before and cat.store.pending() == 0
    assert read_manifest(live_dir).folded_seq == 4
    assert [p.name for p in live_dir.parent.iterdir() if p.name.startswith(".")] == []
    cat.close()


def test_compaction_refuses_to_remove_every_item(tmp_path):
    from pi_search.bundle.items import Item
    from pi_search.bundle.write import write_bundle

    write_bundle(tmp_path / "b", unit(np.eye(2, 8, dtype=np.float32)), [Item("a", "A"), Item("b", "B")],
                 model={"name": "m", "sha256": "x", "dim": 8})
    cat = LiveCatalog.open(tmp_path / "b")
    cat.remove("a")
    cat.remove("b")
    with pytest.raises(CatalogError, match="every item would be removed"):
        cat.compact()
    assert len(cat) == 0 and cat.store.pending() == 2
    assert read_manifest(tmp_path / "b").items == 2
    cat.close()


def test_compact_cli_reports_and_empties_the_store(live_dir):
    import json

    from click.testing import CliRunner

    from pi_search.cli import main

    rng = np.random.default_rng(6)
    cat = LiveCatalog.open(live_dir)
    teach_some(cat, rng)
    cat.close()
    r = CliRunner().invoke(main, ["index", "compact", str(live_dir), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["folded"] == 4 and report["items"] == 16
    r = CliRunner().invoke(main, ["item", "list", "--bundle", str(live_dir), "--json"])
    listing = json.loads(r.stdout)
    assert listing["items"] == [] and listing["catalog_items"] == 16
    assert [f["id"] for f in listing["folded"]] == ["lamp"] and listing["folded"][0]["taught_at"] > 0
    assert store_path(live_dir).is_file()


def test_one_background_compaction_at_a_time_and_a_failed_one_is_reported():
    import threading

    from pi_search.live.compaction import Compaction

    gate, runs = threading.Event(), []

    def fold():
        runs.append(1)
        gate.wait(10)
        if len(runs) == 2:
            raise CatalogError("disk full")
        return {"folded": len(runs)}

    c = Compaction(fold, after=2)
    c.after_change(1)                                   # below the threshold: nothing starts
    assert not c.running and runs == []
    c.after_change(2)
    assert c.running and c.start() is False             # a second start while one runs does nothing
    gate.set()
    c.join(10)
    assert runs == [1] and c.last["folded"] == 1 and "finished" in c.last
    assert c.start() is True
    c.join(10)
    assert c.last["error"] == "disk full" and not c.running   # kept for /api/items; the catalog serves on
