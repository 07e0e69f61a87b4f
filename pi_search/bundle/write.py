"""Writing a bundle: store, projection, index, items and manifest into a temporary folder, then swapped in."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ..errors import BundleError
from . import pca_store
from .backends import get_backend, ivfpq
from .files import bundle_lock, fingerprint, fsync_tree, recover, swap_into_place
from .items import Item, write_items
from .manifest import (
    FORMAT_VERSION,
    ITEMS_FILE,
    LEARNED_MATRIX_FILE,
    LEARNED_MEAN_FILE,
    MANIFEST,
    PCA_COMPONENTS_FILE,
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
from .projection import ProjectedView, fit_pca, normalise
from .store import STORE_DTYPES, write_store

log = logging.getLogger(__name__)

EXACT_MAX_ITEMS = 5_000      # below this, exact search over the stored vectors is as fast as Annoy
DEFAULT_DIMS = 256           # PCA dimensions of the Annoy index for larger catalogs
DEFAULT_WHITEN = True        # whitened PCA finds better candidates (README, "Scale")
DEFAULT_TREES = 50
DEFAULT_CANDIDATES = 100     # Annoy candidates re-ranked on the full vectors
DEFAULT_SEARCH_K = 10_000    # Annoy nodes inspected per query


@dataclass
class BuildOptions:
    """How the searchable part of a bundle is made (see README, "Scale", for how the defaults were chosen)."""

    dims: int | None = -1              # -1: automatic (none below EXACT_MAX_ITEMS, DEFAULT_DIMS above)
    whiten: bool = DEFAULT_WHITEN
    n_trees: int = DEFAULT_TREES
    search: str = "auto"              # "auto", "exact" or "ann"
    candidates: int = 0               # 0: the backend's default (DEFAULT_CANDIDATES; ivfpq: its own)
    search_k: int = DEFAULT_SEARCH_K
    store_dtype: str = "auto"         # "auto" (float32 for exact search, float16 for re-ranking)
    backend: str = "annoy"
    nlist: int = 0                    # ivfpq: inverted lists (0: automatic)
    pq_bytes: int = 0                 # ivfpq: PQ bytes per item (0: default)
    nprobe: int = 0                   # ivfpq: lists probed per query (0: default)
    index_dims: int = 0               # ivfpq: leading PCA dims the lists are built on (0: default)

    def resolved(self, n: int, dim: int) -> BuildOptions:
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
        get_backend(self.backend)   # BundleError naming the known backends
        if self.backend == "ivfpq":
            return self._resolved_ivfpq(n, dim)
        return replace(self, dims=dims, search=search, store_dtype=store,
                       candidates=self.candidates or DEFAULT_CANDIDATES)

    def _resolved_ivfpq(self, n: int, dim: int) -> BuildOptions:
        """ivfpq always searches approximately, over a PCA projection, re-ranking on the int8 PCA store."""
        if self.search == "exact":
            raise BundleError("--backend ivfpq searches approximately; leave --search out (or use another "
                              "backend for exact search)")
        if self.store_dtype not in ("auto", "int8"):
            raise BundleError(f"--store {self.store_dtype}: the ivfpq backend keeps an int8 store of the "
                              "PCA vectors; leave --store out")
        dims = ivfpq.default_dims(n) if self.dims == -1 else self.dims
        if not dims or not 0 < dims < dim:
            raise BundleError(f"--dims {dims}: the ivfpq backend needs a PCA projection of 1 to {dim - 1} "
                              "dims (leave --dims out for the default)")
        return replace(self, dims=dims, search="ann", store_dtype="int8",
                       candidates=self.candidates or ivfpq.DEFAULT_CANDIDATES,
                       nprobe=self.nprobe or ivfpq.default_nprobe(self.nlist or ivfpq.auto_nlist(n)))


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
    """Rows of [n, dim] embeddings seen through a learned projection (``learn.whiten.Learned``), a slice at
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
    Holds ``bundle_lock`` unless the caller does (``locked``). ``learned`` (``learn.whiten.Learned``): the
    projection learned from the catalog, written beside the store (``learned_mean.npy``,
    ``learned_matrix.npy``, the manifest's ``learned`` entry with ``learned_info``); the store and index hold
    the projected rows (``learned_applied``: ``vectors`` are projected already, as a compaction's are).
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
    if learned is not None:
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
            extra_manifest = {**(extra_manifest or {}), "learned": {
                **(learned_info or {}), "dims": learned.dims, "mean": LEARNED_MEAN_FILE,
                "matrix": LEARNED_MATRIX_FILE}}
            if not learned_applied:
                vectors = LearnedRows(vectors, learned)
        return _write_bundle(out_dir, vectors, items, n, dim, model, opts, extra_manifest, learned)




def _write_bundle(out_dir: Path, vectors, items, n: int, dim: int, model: dict, opts: BuildOptions,
                  extra_manifest: dict | None, learned=None) -> Manifest:
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    t0 = time.perf_counter()
    backend = get_backend(opts.backend)
    try:
        if learned is not None:
            learned.save(tmp / LEARNED_MEAN_FILE, tmp / LEARNED_MATRIX_FILE)
        projection = None
        big = opts.backend == "ivfpq"   # millions of rows: the PCA learns from a spread sample
        if opts.dims:
            projection = fit_pca(ivfpq.sample(vectors) if big else vectors, opts.dims, whiten=opts.whiten)
            np.save(tmp / PCA_MEAN_FILE, projection.mean)
            np.save(tmp / PCA_COMPONENTS_FILE, projection.components)
        if big:   # an int8 store of the PCA vectors; the lists are built from it, not a second full read
            store = pca_store.write(tmp, vectors, projection.mean, projection.components)
            indexed = pca_store.ProjectedRows(tmp, projection.components)
        else:
            store = write_store(tmp, vectors, opts.store_dtype)
            if projection is not None:
                indexed = ProjectedView(vectors, projection)
            elif opts.store_dtype != "int8":
                indexed = np.load(tmp / STORE_FILE, mmap_mode="r")
            else:
                indexed = normalise(vectors[:])
        index_entry = backend.build(tmp, indexed, opts)
        write_items(tmp / ITEMS_FILE, items)
        extra = dict(extra_manifest or {})
        manifest = Manifest(
            format_version=FORMAT_VERSION, items=n,
            model=ModelRef(str(model["name"]), str(model["sha256"]), dim), index=index_entry, store=store,
            search=SearchSettings(opts.search, opts.candidates, opts.search_k, opts.nprobe if big else 0),
            projection=None if projection is None else ProjectionEntry(
                projection.dims, projection.whiten, round(projection.explained, 4)),
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
