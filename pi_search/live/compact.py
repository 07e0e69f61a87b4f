"""Compaction: folds the change store into a new bundle built beside the live one, then swaps it in."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ..bundle import (
    ROW_SEP,
    BuildOptions,
    Item,
    ItemsFile,
    Learned,
    Manifest,
    VectorStore,
    bundle_lock,
    item_of,
    read_manifest,
    recover,
    swap_into_place,
    write_bundle,
)
from ..errors import BundleError, CatalogError
from .changes import ChangeStore, Snapshot, store_path

log = logging.getLogger(__name__)

_CHUNK = 8192


def _staging(bundle_dir: Path, seq: int) -> Path:
    return bundle_dir.parent / f".{bundle_dir.name}.compact-{seq}"


def _options(manifest: Manifest) -> BuildOptions:
    """The old bundle's build settings, so a compacted bundle searches like the one it replaces."""
    return BuildOptions.from_manifest(manifest)


class _Plan:
    """The rows of the new bundle: kept bundle rows (by old index) and taught shots (by snapshot row)."""

    def __init__(self, rows: list[tuple], snap: Snapshot):
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
                n = int(rid.split(ROW_SEP, 1)[1])
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
                rid = f"{owner}{ROW_SEP}{have[owner]}"
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
        store.forget(manifest.folded_seq)
        snap = store.snapshot()
        if not snap.items:
            return {"bundle": str(bundle_dir), "folded": 0, "items": manifest.items,
                    "seconds": round(time.perf_counter() - t0, 3)}
        if manifest.store.space == "pca":
            raise CatalogError(f"{bundle_dir}: its store keeps PCA vectors only (--backend ivfpq), from "
                               "which taught items cannot be folded in; they stay served from the change "
                               "store. Rebuild the bundle from the catalog to include them")
        old_items = ItemsFile(bundle_dir / manifest.items_file)
        try:
            plan = _Plan(old_items.all_rows(), snap)
            if not plan.meta:
                raise CatalogError(f"{bundle_dir}: every item would be removed; a bundle needs at least one "
                                   "item (teach one first)")
            staging = _staging(bundle_dir, snap.seq)
            shutil.rmtree(staging, ignore_errors=True)
            new_manifest = _write_folded(bundle_dir, staging, manifest, plan, store, snap, old_items)
        finally:
            old_items.close()
        if progress:
            progress("built")
        swap_into_place(staging, bundle_dir)
        if progress:
            progress("swapped")
        store.forget(snap.seq)
        store.mark_in_bundle(plan.taught)
    report = {"bundle": str(bundle_dir), "folded": len(snap.items), "folded_seq": snap.seq,
              "items": new_manifest.items - plan.views, "rows": new_manifest.items,
              "views": plan.views, "seconds": round(time.perf_counter() - t0, 3)}
    log.info("compacted %s: %d change(s) folded, %d items, %.1f s", bundle_dir, report["folded"],
             report["items"], report["seconds"])
    return report


def _write_folded(bundle_dir: Path, staging: Path, manifest: Manifest, plan: _Plan, store: ChangeStore,
                  snap: Snapshot, old_items: ItemsFile) -> Manifest:
    """Write the new bundle at ``staging``: the kept bundle rows' vectors (float32, from the old store) and
    the taught shots, gathered in a temporary memory map beside the bundle."""
    dim = manifest.stored_dim   # the stored rows' dims (the learned projection's output, if any)
    stored = VectorStore(bundle_dir, manifest.store, manifest.items, dim, random_access=False)
    tmp_vecs = bundle_dir.parent / f".{bundle_dir.name}.fold-{snap.seq}.npy"
    try:
        vecs = np.lib.format.open_memmap(tmp_vecs, mode="w+", dtype=np.float32, shape=(len(plan.meta), dim))
        bundle_rows = [(n, m[5]) for n, m in enumerate(plan.meta) if m[4] == "bundle"]
        for i in range(0, len(bundle_rows), _CHUNK):
            part = bundle_rows[i:i + _CHUNK]
            dst = np.array([p[0] for p in part], np.int64)
            vecs[dst] = stored.full(np.array([p[1] for p in part], np.int64))
        learned = _learned(bundle_dir, manifest)   # stored rows are in its space: taught shots join them
        for n, m in enumerate(plan.meta):
            if m[4] == "taught":
                v = snap.vectors[m[5]]
                vecs[n] = v if learned is None else learned.apply(v / max(float(np.linalg.norm(v)), 1e-12))
        vecs.flush()
        items = _CompactedItems(plan.meta, store.thumbnails(), old_items)
        model = {"name": manifest.model.name, "sha256": manifest.model.sha256, "dim": manifest.model.dim}
        extra = {"catalog": manifest.catalog,
                 "changes": {"folded_seq": snap.seq, "views": plan.views,
                             "compacted": datetime.now(UTC).isoformat(timespec="seconds"),
                             "folded_items": len(snap.items)}}
        info = {k: v for k, v in (manifest.learned or {}).items() if k not in ("mean", "matrix", "dims")}
        new_manifest = write_bundle(staging, vecs, items, model=model, options=_options(manifest),
                                    extra_manifest=extra, locked=True, learned=learned, learned_info=info,
                                    learned_applied=True)
        del vecs
        return new_manifest
    finally:
        stored.close()
        with contextlib.suppress(OSError):
            tmp_vecs.unlink()


def _learned(bundle_dir: Path, manifest: Manifest):
    """The bundle's learned projection (``bundle.Learned``), or None: carried into the new bundle."""
    if manifest.learned is None:
        return None
    return Learned.load(bundle_dir / Path(manifest.learned["mean"]).name,
                        bundle_dir / Path(manifest.learned["matrix"]).name, manifest.model.dim)


class _CompactedItems:
    """The new bundle's Items in row order; thumbnails read lazily (a taught thumbnail wins)."""

    def __init__(self, meta: list[tuple], taught_thumbs: dict, old: ItemsFile):
        self.meta, self.taught_thumbs, self.old = meta, taught_thumbs, old

    def __len__(self) -> int:
        return len(self.meta)

    def __iter__(self):
        for rid, title, price, extra, _source, _ref in self.meta:
            thumb = None
            if ROW_SEP not in rid:
                thumb = self.taught_thumbs.get(rid) or self.old.thumbnail(rid)
            elif _source == "bundle":   # a catalog item's further photo keeps its own thumbnail
                thumb = self.old.thumbnail(rid)
            yield Item(rid, title, price, json.loads(extra or "{}"), thumb)


def compact_path(bundle_dir: str | Path, store_file: str | Path | None = None) -> dict:
    """``pi-search index compact``: open the store beside ``bundle_dir`` and compact it."""
    bundle_dir = Path(bundle_dir)
    recover(bundle_dir)
    manifest = read_manifest(bundle_dir)
    path = Path(store_file) if store_file else store_path(bundle_dir)
    if not path.is_file():
        return {"bundle": str(bundle_dir), "folded": 0, "items": manifest.items, "seconds": 0.0}
    store = ChangeStore(path, dim=manifest.model.dim, model_sha256=manifest.model.sha256 or None)
    try:
        return compact(bundle_dir, store)
    except OSError as exc:
        raise BundleError(f"{bundle_dir}: compaction failed ({exc}); the live bundle and the changes are "
                          "untouched; free disk space and try again") from exc
    finally:
        store.close()
