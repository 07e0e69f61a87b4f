"""Compaction: folds the change store into a new bundle built beside the live one, then swaps it in."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .changes import ChangeStore, Snapshot
from .errors import BundleError, CatalogError
from .index import BuildOptions, Item, bundle_lock, read_manifest, recover, swap_into_place, write_bundle

log = logging.getLogger(__name__)

_CHUNK = 8192


def _staging(bundle_dir: Path, seq: int) -> Path:
    return bundle_dir.parent / f".{bundle_dir.name}.compact-{seq}"


def _read_store(directory: Path, manifest: dict) -> np.ndarray:
    """The bundle's full vectors as stored (float32, float16 or int8 [n, dim], memory-mapped)."""
    return np.load(directory / Path(manifest["store"]["file"]).name, mmap_mode="r")


def _rows(directory: Path, manifest: dict) -> list[tuple]:
    """``(idx, id, title, price, extra)`` of every bundle row, in index order."""
    db = sqlite3.connect(f"file:{directory / manifest.get('items_file', 'items.sqlite')}?mode=ro&immutable=1",
                         uri=True)
    try:
        return db.execute("SELECT idx, id, title, price, extra FROM items ORDER BY idx").fetchall()
    finally:
        db.close()


def _options(manifest: dict) -> BuildOptions:
    """The old bundle's build settings, so a compacted bundle searches like the one it replaces."""
    proj, ix, s = manifest.get("projection"), manifest["index"], manifest["search"]
    return BuildOptions(dims=int(proj["dims"]) if proj else None, whiten=bool(proj and proj.get("whiten")),
                        n_trees=int(ix.get("n_trees") or manifest.get("n_trees") or 50), search=s["mode"],
                        candidates=int(s.get("candidates", 100)), search_k=int(s.get("search_k", 10_000)),
                        store_dtype=manifest["store"]["dtype"], backend=ix.get("backend", "annoy"))


class _Plan:
    """The rows of the new bundle: kept bundle rows (by old index) and taught shots (by snapshot row)."""

    def __init__(self, rows: list[tuple], snap: Snapshot):
        from .live import VIEW_SEP, item_of

        items = snap.items
        self.meta: list[tuple] = []      # (id, title, price, extra_json, "bundle" or "taught", row)
        have: dict[str, int] = {}        # item id -> next view number
        self.views = 0
        for idx, rid, title, price, extra in rows:
            iid = item_of(rid)
            it = items.get(iid)
            if it is not None and it.masks_bundle:
                continue
            if it is not None:
                title, price = it.title, it.price
                if rid == iid:
                    extra = json.dumps(it.extra, ensure_ascii=False)
            if rid != iid:
                self.views += 1
                n = int(rid.split(VIEW_SEP, 1)[1])
                have[iid] = max(have.get(iid, 1), n + 1)
            else:
                have.setdefault(iid, 1)
            self.meta.append((rid, title, price, extra, "bundle", idx))
        self.taught: list[str] = []
        for r, owner in enumerate(snap.owners.tolist()):
            it = items.get(owner)
            if it is None or it.deleted:
                continue
            if owner in have:
                rid = f"{owner}{VIEW_SEP}{have[owner]}"
                have[owner] += 1
                self.views += 1
                extra = json.dumps({"view_of": owner})
            else:
                rid = owner
                have[owner] = 1
                extra = it.extra if it.base else {**it.extra, "taught_at": round(it.created, 3)}
                extra = json.dumps(extra, ensure_ascii=False)
                self.taught.append(owner)
            self.meta.append((rid, it.title, it.price, extra, "taught", r))


def compact(bundle_dir: str | Path, store: ChangeStore, *, progress=None) -> dict:
    """Fold every change in ``store`` into a new bundle at ``bundle_dir`` while the old one keeps serving.

    Order (each step survives a crash at any point, nothing is lost or counted twice): the new bundle is
    written and synced beside the live one, its manifest recording the last folded change (``folded_seq``);
    it is swapped in; only then are the folded changes deleted from the store. Anyone opening the bundle
    later forgets changes up to its ``folded_seq`` (``Catalog.open``). ``progress(step)`` is called with
    "built" (the new bundle is complete beside the live one) and "swapped". Returns a report.
    """
    bundle_dir = Path(bundle_dir)
    t0 = time.perf_counter()
    with bundle_lock(bundle_dir, wait=False, what="compaction"):
        recover(bundle_dir, locked=True)
        manifest = read_manifest(bundle_dir)
        store.forget(int((manifest.get("changes") or {}).get("folded_seq", 0)))
        snap = store.snapshot()
        if not snap.items:
            return {"bundle": str(bundle_dir), "folded": 0, "items": int(manifest["items"]),
                    "seconds": round(time.perf_counter() - t0, 3)}
        rows = _rows(bundle_dir, manifest)
        plan = _Plan(rows, snap)
        if not plan.meta:
            raise CatalogError(f"{bundle_dir}: every item would be removed; a bundle needs at least one item "
                               "(teach one first)")
        dim = int(manifest["model"]["dim"])
        stored = _read_store(bundle_dir, manifest)
        scale = None
        if manifest["store"].get("scale"):
            scale = np.load(bundle_dir / Path(manifest["store"]["scale"]).name, mmap_mode="r")
        staging = _staging(bundle_dir, snap.seq)
        shutil.rmtree(staging, ignore_errors=True)
        tmp_vecs = bundle_dir.parent / f".{bundle_dir.name}.fold-{snap.seq}.npy"
        try:
            vecs = np.lib.format.open_memmap(tmp_vecs, mode="w+", dtype=np.float32,
                                             shape=(len(plan.meta), dim))
            bundle_rows = [(n, m[5]) for n, m in enumerate(plan.meta) if m[4] == "bundle"]
            for i in range(0, len(bundle_rows), _CHUNK):
                part = bundle_rows[i:i + _CHUNK]
                dst = np.array([p[0] for p in part], np.int64)
                src = np.array([p[1] for p in part], np.int64)
                block = np.asarray(stored[src], dtype=np.float32)
                if scale is not None:
                    block *= np.asarray(scale[src], dtype=np.float32)[:, None]
                vecs[dst] = block
            for n, m in enumerate(plan.meta):
                if m[4] == "taught":
                    vecs[n] = snap.vectors[m[5]]
            vecs.flush()
            thumbs = store.thumbnails()
            old_thumbs = _Thumbs(bundle_dir, manifest)
            try:
                items = _CompactedItems(plan.meta, thumbs, old_thumbs)
                model = manifest["model"]
                extra = {"catalog": manifest.get("catalog"),
                         "changes": {"folded_seq": snap.seq, "views": plan.views,
                                     "compacted": datetime.now(UTC).isoformat(timespec="seconds"),
                                     "folded_items": len(snap.items)}}
                new_manifest = write_bundle(staging, vecs, items, model=model, options=_options(manifest),
                                            extra_manifest=extra, locked=True)
            finally:
                old_thumbs.close()
            del vecs
        finally:
            with contextlib.suppress(OSError):
                tmp_vecs.unlink()
        if progress:
            progress("built")
        swap_into_place(staging, bundle_dir)
        if progress:
            progress("swapped")
        store.forget(snap.seq)
        store.mark_in_bundle(plan.taught)
    report = {"bundle": str(bundle_dir), "folded": len(snap.items), "folded_seq": snap.seq,
              "items": int(new_manifest["items"]) - plan.views, "rows": int(new_manifest["items"]),
              "views": plan.views, "seconds": round(time.perf_counter() - t0, 3)}
    log.info("compacted %s: %d change(s) folded, %d items, %.1f s", bundle_dir, report["folded"],
             report["items"], report["seconds"])
    return report


class _Thumbs:
    """Thumbnails of the old bundle read one at a time by id."""

    def __init__(self, directory: Path, manifest: dict):
        path = directory / manifest.get("items_file", "items.sqlite")
        self._db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)

    def get(self, item_id: str) -> bytes | None:
        r = self._db.execute("SELECT thumb FROM items WHERE id = ?", (item_id,)).fetchone()
        return None if r is None or r[0] is None else bytes(r[0])

    def close(self) -> None:
        self._db.close()


class _CompactedItems:
    """The new bundle's Items in row order; thumbnails read lazily (a taught thumbnail wins)."""

    def __init__(self, meta: list[tuple], taught_thumbs: dict, old: _Thumbs):
        self.meta, self.taught_thumbs, self.old = meta, taught_thumbs, old

    def __len__(self) -> int:
        return len(self.meta)

    def __iter__(self):
        from .live import VIEW_SEP

        for rid, title, price, extra, _source, _ref in self.meta:
            thumb = None
            if VIEW_SEP not in rid:
                thumb = self.taught_thumbs.get(rid) or self.old.get(rid)
            yield Item(rid, title, price, json.loads(extra or "{}"), thumb)


def compact_path(bundle_dir: str | Path, store_file: str | Path | None = None) -> dict:
    """``pi-search index compact``: open the store beside ``bundle_dir`` and compact it."""
    from .changes import store_path

    bundle_dir = Path(bundle_dir)
    recover(bundle_dir)
    manifest = read_manifest(bundle_dir)
    path = Path(store_file) if store_file else store_path(bundle_dir)
    if not path.is_file():
        return {"bundle": str(bundle_dir), "folded": 0, "items": int(manifest["items"]), "seconds": 0.0}
    store = ChangeStore(path, dim=int(manifest["model"]["dim"]), model_sha256=manifest["model"].get("sha256"))
    try:
        return compact(bundle_dir, store)
    except OSError as exc:
        raise BundleError(f"{bundle_dir}: compaction failed ({exc}); the live bundle and the changes are "
                          "untouched; free disk space and try again") from exc
    finally:
        store.close()
