"""Writing a bundle: store, projection, index, items and manifest into a temporary folder, then swapped in."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError
from .backends import get_backend
from .files import bundle_lock, fingerprint, fsync_tree, recover, swap_into_place
from .items import Item, write_items
from .learned import manifest_entry
from .manifest import (
    FORMAT_VERSION,
    ITEMS_FILE,
    LEARNED_MATRIX_FILE,
    LEARNED_MEAN_FILE,
    MANIFEST,
    PCA_COMPONENTS_FILE,
    PCA_FOLD_FILE,
    PCA_MEAN_FILE,
    STORE_FILE,
    Manifest,
    ModelRef,
    ProjectionEntry,
    SearchSettings,
    catalog_not_bundle,
    write_manifest,
)
from .memory import needs
from .pca_store import ProjectedRows
from .pca_store import write as write_pca_store
from .projection import ProjectedView, fit_pca, fold_learned, normalise, outside, save_fold
from .store import STORE_DTYPES, write_store

log = logging.getLogger(__name__)

EXACT_MAX_ITEMS = 5_000      # below this, exact search over the stored vectors is as fast as Annoy
DEFAULT_DIMS = 256           # PCA dimensions of the Annoy index for larger catalogs
DEFAULT_WHITEN = True        # whitened PCA finds better candidates (README, "Scale")
DEFAULT_CANDIDATES = 100     # index candidates re-ranked on the full vectors


@dataclass
class BuildOptions:
    """How the searchable part of a bundle is made (see README, "Scale", for how the defaults were chosen):
    the fields every backend shares, and ``backend_options``, the chosen backend's own (its ``Options``
    dataclass, e.g. ``AnnoyOptions(n_trees=...)``; None: its defaults). ``parse`` takes them all flat."""

    dims: int | None = -1              # -1: automatic (none below EXACT_MAX_ITEMS, DEFAULT_DIMS above)
    whiten: bool = DEFAULT_WHITEN
    search: str = "auto"              # "auto", "exact" or "ann"
    candidates: int = 0               # 0: the backend's default (DEFAULT_CANDIDATES unless it has its own)
    store_dtype: str = "auto"         # "auto" (float32 for exact search, float16 for re-ranking)
    backend: str = "annoy"
    backend_options: Any = None

    @classmethod
    def parse(cls, **fields) -> BuildOptions:
        """Options from flat keywords: the shared fields and the chosen backend's own, e.g.
        ``parse(backend="annoy", dims=16, n_trees=5)``; BundleError for a field neither has."""
        shared = {f.name for f in dataclasses.fields(cls)} - {"backend_options"}
        backend = get_backend(fields.get("backend", cls.backend))
        own = {k: v for k, v in fields.items() if k not in shared}
        return cls(**{k: v for k, v in fields.items() if k in shared},
                   backend_options=backend.options(None, **own))

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> BuildOptions:
        """The settings a bundle was built with, so that a bundle built from it searches alike."""
        proj, s = manifest.projection, manifest.search
        backend = get_backend(manifest.backend)
        return cls(dims=proj.dims if proj else None, whiten=bool(proj and proj.whiten), search=s.mode,
                   candidates=s.candidates, store_dtype=manifest.store.dtype, backend=backend.name,
                   backend_options=backend.options_of(manifest.index, s))

    def resolved(self, n: int, dim: int) -> BuildOptions:
        """Every automatic choice made for ``n`` rows of ``dim`` dims, by the backend (BundleError naming
        the known backends when it is not one)."""
        backend = get_backend(self.backend)
        opts = replace(self, backend_options=backend.options(self.backend_options))
        return backend.resolve(opts, n, dim)

    def resolved_generic(self, n: int, dim: int) -> BuildOptions:
        """The automatic choices of a backend that searches exactly or approximately over the full (or
        PCA-projected) vectors and re-ranks on a store of the full vectors."""
        search = self.search
        if search == "auto":
            search = "exact" if n < EXACT_MAX_ITEMS else "ann"
        if search not in ("exact", "ann"):
            raise BundleError(f"search mode {search!r}: choose auto, exact or ann")
        dims = self.dims
        if dims == -1:
            dims = DEFAULT_DIMS if search == "ann" and dim > DEFAULT_DIMS else None
        if dims is not None and dims >= dim:
            dims = None
        if dims is not None and n < 2:
            dims = None
        store = self.store_dtype
        if store == "auto":
            store = "float32" if search == "exact" else "float16"
        if store not in STORE_DTYPES:
            raise BundleError(f"store dtype {store!r}: choose one of {', '.join(STORE_DTYPES)}")
        return replace(self, dims=dims, search=search, store_dtype=store,
                       candidates=self.candidates or DEFAULT_CANDIDATES)


def check_out_dir(out_dir: Path) -> None:
    """Refuse to replace something that is not a bundle (a non-empty directory without a manifest, a file)."""
    if out_dir.exists() and not (out_dir / MANIFEST).is_file() and (
            not out_dir.is_dir() or any(out_dir.iterdir())):
        catalog = catalog_not_bundle(out_dir)
        if catalog:
            held, out = catalog
            raise BundleError(f"--out {out_dir} is a catalog (it holds {held}), not a bundle: write the "
                              f"bundle to another folder, e.g. --out {out} (nothing was replaced)")
        raise BundleError(f"{out_dir} exists and is not a bundle; choose another --out (nothing was "
                          "replaced)")


class LearnedRows:
    """Rows of [n, dim] embeddings seen through a learned projection (``learned.Learned``), a slice at
    a time: slicing yields float32 [rows, dim], L2-normalised (the store, PCA and index read it in chunks)."""

    def __init__(self, vectors, learned):
        self._v, self._l = vectors, learned
        self.shape = (int(vectors.shape[0]), learned.dims)
        self.ndim = 2
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, sl):
        return self._l.apply(normalise(np.asarray(self._v[sl], dtype=np.float32)))


def write_bundle(out_dir: str | Path, vectors: np.ndarray, items: Sequence[Item], *, model: dict,
                 options: BuildOptions | None = None, extra_manifest: dict | None = None,
                 locked: bool = False, learned=None, learned_info: dict | None = None,
                 learned_applied: bool = False) -> Manifest:
    """Write a bundle for ``items`` (row i of ``vectors`` is item i) atomically into ``out_dir``.

    ``vectors``: float32 [n, dim] embeddings (normalised again). ``model``: ``name``, ``sha256``, ``dim``.
    Everything is written into a temporary directory beside ``out_dir``, synced, and renamed into place; an
    existing bundle at ``out_dir`` is swapped out only once the new one is complete (``swap_into_place``).
    Holds ``bundle_lock`` unless the caller does (``locked``). ``learned`` (``learned.Learned``): the
    projection learned from the catalog, written beside the store (``learned_mean.npy``,
    ``learned_matrix.npy``, the manifest's ``learned`` entry with ``learned_info``); the store and index hold
    the projected rows (``learned_applied``: ``vectors`` are projected already, as a compaction's are).
    A backend that stores PCA coordinates (ivfpq) gets it folded into its PCA instead: the PCA is fitted on
    the learned rows before their normalisation and composed with the projection (``fold_learned``), so the
    build and every query pay one PCA product; no learned files, ``"folded": "pca"`` in the entry.
    Returns the manifest.
    """
    out_dir = Path(out_dir)
    n = len(items)
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise BundleError(f"{n} items but embeddings of shape {tuple(vectors.shape)}; they must match "
                          "row for row")
    if n == 0:
        raise BundleError(f"no items to index for {out_dir}: every catalog row was skipped")
    dim = int(vectors.shape[1])
    stored = dim   # the stored rows' dims: the learned projection's output when it has one
    fold = (learned is not None and not learned_applied
            and get_backend((options or BuildOptions()).backend).store_space == "pca")
    if fold:
        if dim != int(learned.mean.shape[0]):
            raise BundleError(f"embeddings have {dim} dims; the learned projection takes "
                              f"{learned.mean.shape[0]}")
    elif learned is not None:
        stored = learned.dims
        if learned_applied and dim != learned.dims:
            raise BundleError(f"projected rows have {dim} dims; the learned projection gives {learned.dims}")
        dim = int(learned.mean.shape[0])
    if int(model["dim"]) != dim:
        raise BundleError(f"embeddings have {dim} dims but the model {model['name']} gives {model['dim']}")
    check_out_dir(out_dir)
    opts = (options or BuildOptions()).resolved(n, stored)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = contextlib.nullcontext() if locked else bundle_lock(out_dir)
    with lock:
        recover(out_dir, locked=True)
        if learned is not None:
            extra_manifest = {**(extra_manifest or {}),
                              "learned": manifest_entry(learned, learned_info, folded=fold)}
            if not learned_applied and not fold:
                vectors = LearnedRows(vectors, learned)
        return _write_bundle(out_dir, vectors, items, n, dim, model, opts, extra_manifest,
                             None if fold else learned, learned if fold else None)


class WhitenedRows:
    """Rows of [n, dim] embeddings through a learned projection without the final normalisation: slicing
    yields float32 [rows, dims] ``W (x - m)`` of the normalised rows (what a folded PCA is fitted on)."""

    def __init__(self, vectors, learned):
        self._v, self._l = vectors, learned
        self.shape = (int(vectors.shape[0]), learned.dims)

    def __getitem__(self, sl):
        x = normalise(np.asarray(self._v[sl], dtype=np.float32))
        return ((x - self._l.mean) @ self._l.matrix.T).astype(np.float32)


def _write_bundle(out_dir: Path, vectors, items, n: int, dim: int, model: dict, opts: BuildOptions,
                  extra_manifest: dict | None, learned=None, fold=None) -> Manifest:
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    t0 = time.perf_counter()
    backend = get_backend(opts.backend)
    try:
        if learned is not None:
            learned.save(tmp / LEARNED_MEAN_FILE, tmp / LEARNED_MATRIX_FILE)
        projection = None
        if opts.dims:
            if fold is None:
                projection = fit_pca(backend.pca_rows(vectors), opts.dims, whiten=opts.whiten)
            else:   # fitted on the learned rows (a sample of them), then one projection doing both; a
                # learned space of the store's dims is turned whole (``embed.build._Build.learning``)
                rows = backend.pca_rows(WhitenedRows(vectors, fold))
                pca = fit_pca(rows, min(opts.dims, fold.dims), whiten=opts.whiten)
                projection = fold_learned(pca, fold, outside(rows, pca))
                del rows
                save_fold(tmp / PCA_FOLD_FILE, projection.fold)
            np.save(tmp / PCA_MEAN_FILE, projection.mean)
            np.save(tmp / PCA_COMPONENTS_FILE, projection.components)
        if backend.store_space == "pca":   # an int8 store of the PCA vectors; the index is built from it
            store = write_pca_store(tmp, vectors, projection.mean, projection.components,
                                    fold=projection.fold)
            indexed = ProjectedRows(tmp, projection.components, projection.lengths)
        else:
            store = write_store(tmp, vectors, opts.store_dtype)
            if projection is not None:
                indexed = ProjectedView(vectors, projection)
            elif opts.store_dtype != "int8":
                indexed = np.load(tmp / STORE_FILE, mmap_mode="r")
            else:
                indexed = normalise(vectors[:])
        index_entry = backend.build(tmp, indexed, opts.backend_options)
        write_items(tmp / ITEMS_FILE, items)
        extra = dict(extra_manifest or {})
        manifest = Manifest(
            format_version=FORMAT_VERSION, items=n,
            model=ModelRef(str(model["name"]), str(model["sha256"]), dim), index=index_entry, store=store,
            search=SearchSettings(opts.search, opts.candidates,
                                  **backend.search_settings(opts.backend_options)),
            projection=None if projection is None else ProjectionEntry(
                projection.dims, projection.whiten, round(projection.explained, 4),
                fold=None if projection.fold is None else PCA_FOLD_FILE,
                fold_rest=0.0 if projection.fold is None else projection.fold.rest,
                fold_residual=0.0 if projection.fold is None else projection.fold.residual),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            catalog=extra.pop("catalog", None), changes=extra.pop("changes", None) or {}, extra=extra)
        files = {p.name: fingerprint(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = replace(manifest, files=files)
        manifest = replace(manifest, extra={**manifest.extra, "memory": needs(tmp, manifest.to_dict())},
                           build_seconds=round(time.perf_counter() - t0, 3))
        write_manifest(tmp, manifest)
        fsync_tree(tmp)
        swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("bundle %s: %d items, %s search, index %s %d-d, built in %.1f s", out_dir, n, opts.search,
             backend.name, int(index_entry["dim"]), manifest.build_seconds)
    return manifest
