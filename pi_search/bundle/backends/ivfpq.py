"""The ivfpq backend: faiss inverted lists of product-quantised PCA vectors, for millions of items (faiss is
the ``large`` extra, imported on first use)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ...errors import BundleError
from .base import Backend, option

log = logging.getLogger(__name__)

FILE = "index.faiss"
DEFAULT_DIMS = 512           # PCA dimensions of the re-rank store (docs/scale.md: ten million items)
DEFAULT_DIMS_MANY = 768      # ... past MANY_LISTS_FROM items
DEFAULT_INDEX_DIMS = 256     # the first (largest) of them are the ones the inverted lists are built on
DEFAULT_PQ_BYTES = 32       # bytes per item in the index (PQ sub-quantizers of 8 bits)
DEFAULT_NPROBE = 128        # inverted lists scanned per query (of 4,096 at 1M-10M items)
DEFAULT_CANDIDATES = 500    # IVF-PQ candidates re-ranked on the int8 PCA store
TRAIN_ROWS = 262_144        # rows the coarse quantizer and the PQ codebooks learn from
TRAIN_RUNS = 32             # ... taken as this many runs spread over the catalog
MIN_PER_LIST = 39           # faiss's rule: at least 39 training points per inverted list
TRAIN_ROWS_MAX = 2_097_152  # ... but no more rows than this (16 a list at 131,072 lists: 2 GB in 256 dims)
_ADD_CHUNK = 65_536
FLAT_LISTS_MAX = 4096       # up to this many lists learn in one k-means; more learn group by group
GROUPS_PROBED = 8           # groups an item's list is looked for in (two-level lists)
SCALE_FILE = "index_scale.npy"   # many lists: the list space's per-axis factors
MANY_LISTS_FROM = 4_000_000  # items from which auto_nlist gives many small lists
ITEMS_PER_LIST = 80         # ... of about this many items each
LIST_WHITEN_POWER = 0.5     # many lists: the PCA axes whitened to this power (docs/scale.md: ten million)


def _faiss():
    try:
        import faiss
    except ImportError as exc:
        raise BundleError("the ivfpq backend needs the faiss-cpu package: pip install 'pi-search[large]' "
                          "(or use --backend annoy or usearch)") from exc
    return faiss


def auto_nlist(n: int) -> int:
    """Inverted lists for ``n`` items: the power of two nearest ``4 * sqrt(n)`` (1M items: 4,096 lists), with
    enough training rows; past ``MANY_LISTS_FROM`` items, the power of two nearest one list a
    ``ITEMS_PER_LIST`` items (10M: 131,072), learned group by group (docs/scale.md: at 10M, 4,096 lists of
    2,400 items scatter an item's true neighbours over too many lists).
    """
    if n > MANY_LISTS_FROM:
        return int(min(2 ** round(math.log2(n / ITEMS_PER_LIST)), 262_144))
    want = 2 ** round(math.log2(max(4 * math.sqrt(max(n, 1)), 1)))
    cap = max(1, min(n, TRAIN_ROWS) // MIN_PER_LIST)
    return int(max(1, min(want, 2 ** int(math.log2(cap)), 65_536)))


def default_dims(n: int) -> int:
    """PCA dimensions of the int8 re-rank store for ``n`` items: 512, and 768 from ``MANY_LISTS_FROM`` items
    (its ceiling at 10M: 0.969 of the true top 10 against 0.943 with 512, docs/scale.md)."""
    return DEFAULT_DIMS_MANY if n > MANY_LISTS_FROM else DEFAULT_DIMS


def default_nprobe(nlist: int) -> int:
    """Lists probed a query: DEFAULT_NPROBE of 4,096 lists or fewer; with more, the same 1/32 of them
    (docs/scale.md: 4,096 of 131,072 lists at ten million items)."""
    return DEFAULT_NPROBE if nlist <= FLAT_LISTS_MAX else max(DEFAULT_NPROBE, nlist // 32)


def spread_rows(n: int, want: int = TRAIN_ROWS, runs: int = TRAIN_RUNS) -> list[tuple[int, int]]:
    """``(start, stop)`` runs of about ``want`` rows spread evenly over ``n`` (all rows when ``n <= want``).

    Runs, not scattered rows: a catalog is read in contiguous blocks (memory map, streamed embeddings).
    """
    if n <= want:
        return [(0, n)]
    length = max(1, want // runs)
    starts = np.linspace(0, n - length, runs).astype(np.int64)
    return [(int(s), int(s) + length) for s in starts]


def sample(vectors, want: int = TRAIN_ROWS) -> np.ndarray:
    """About ``want`` rows of ``vectors`` (array-like [n, d]) from runs spread over it: float32 [m, d]."""
    return np.concatenate([np.asarray(vectors[a:b], dtype=np.float32)
                           for a, b in spread_rows(int(vectors.shape[0]), want)])


def pq_bytes_for(dim: int, want: int) -> int:
    """The largest divisor of ``dim`` that is at most ``want`` (faiss splits the vector into equal parts)."""
    for m in range(min(want, dim), 0, -1):
        if dim % m == 0:
            return m
    return 1


def _kmeans(faiss, x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``k`` k-means centroids (float32 [k, d]) of rows ``x`` (the mean when ``k`` is 1)."""
    if k <= 1:
        return x.mean(axis=0, keepdims=True).astype(np.float32)
    # inside a group the lists learn from TRAIN_ROWS_MAX / nlist rows each (16 at 131,072 lists): enough for
    # lists that only have to gather neighbours, so faiss is not to warn about fewer than its 39
    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, max_points_per_centroid=256,
                      min_points_per_centroid=min(39, max(1, len(x) // k)))
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return np.asarray(km.centroids, dtype=np.float32)


def _shares(counts: np.ndarray, total: int) -> np.ndarray:
    """``total`` split over groups in proportion to ``counts`` (largest remainders), at least 1 a group and
    at most its count: int64 [groups]."""
    want = counts / max(counts.sum(), 1) * total
    k = np.clip(np.floor(want).astype(np.int64), 1, counts)
    for g in np.argsort(-(want - np.floor(want))):
        if k.sum() >= total:
            break
        if k[g] < counts[g]:
            k[g] += 1
    while k.sum() > total:                                  # the floor of 1 a group can overshoot
        g = int(np.argmax(k))
        k[g] -= 1
    return k


class TwoLevelLists:
    """Many inverted lists learned cheaply: k-means into ``groups``, then k-means inside each group, with
    lists shared out in proportion to the group's rows (so lists hold about as many items each).

    ``centroids``: float32 [nlist, d], list by list; ``assign(x)`` gives each row of ``x`` (float32 [n, d])
    the nearest list among the ``GROUPS_PROBED`` nearest groups' lists (int64 [n]): the cost of k-means
    and of assigning ten million items grows with ``sqrt(nlist)`` instead of ``nlist``.
    """

    def __init__(self, faiss, train: np.ndarray, nlist: int, seed: int = 1):
        groups = min(nlist, 2 ** round(math.log2(math.sqrt(nlist))))
        self.top = _kmeans(faiss, train, groups, seed)
        self._top_index = faiss.IndexFlatL2(train.shape[1])
        self._top_index.add(self.top)
        of = self._top_index.search(np.ascontiguousarray(train), 1)[1][:, 0]
        counts = np.bincount(of, minlength=groups)
        keep = counts > 0
        share = np.zeros(groups, np.int64)
        share[keep] = _shares(counts[keep], nlist)
        parts, self.lists_of = [], []
        first = 0
        for g in range(groups):
            if share[g] == 0:
                self.lists_of.append(np.empty(0, np.int64))
                continue
            parts.append(_kmeans(faiss, train[of == g], int(share[g]), seed + g + 1))
            self.lists_of.append(np.arange(first, first + len(parts[-1]), dtype=np.int64))
            first += len(parts[-1])
        self.centroids = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
        self._sub = [self.centroids[ids] for ids in self.lists_of]
        self._sub_sq = [(c * c).sum(axis=1) for c in self._sub]

    def assign(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        near = self._top_index.search(x, min(GROUPS_PROBED, len(self.top)))[1]
        best_d = np.full(len(x), np.inf, np.float32)
        best = np.zeros(len(x), np.int64)
        for g in np.unique(near):
            if g < 0 or not len(self.lists_of[g]):
                continue
            rows = np.nonzero((near == g).any(axis=1))[0]
            d = self._sub_sq[g][None, :] - 2.0 * (x[rows] @ self._sub[g].T)   # |x|^2 is the same for all
            j = np.argmin(d, axis=1)
            dj = d[np.arange(len(rows)), j]
            better = dj < best_d[rows]
            best_d[rows[better]] = dj[better]
            best[rows[better]] = self.lists_of[g][j[better]]
        return best


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(n > 0, n, 1.0), dtype=np.float32)


class _ListSpace:
    """The space the lists live in: the first ``d`` projected coordinates, times ``scale`` (float32 [d]) when
    given, normalised again: float32 [n, d] when sliced."""

    def __init__(self, vectors, d: int, scale: np.ndarray | None = None):
        self._v, self.of, self.scale = vectors, int(vectors.shape[1]), scale
        self.shape = (int(vectors.shape[0]), d)

    def __getitem__(self, sl) -> np.ndarray:
        y = np.asarray(self._v[sl], dtype=np.float32)[:, :self.shape[1]]
        return _unit(y if self.scale is None else y * self.scale)


def list_scale(vectors, d: int, power: float = LIST_WHITEN_POWER) -> np.ndarray:
    """Per-axis factors (float32 [d]) that turn whitened PCA rows into rows whitened to ``power``.

    ``vectors.w`` (``pca_store.ProjectedRows``) is each axis' 1 / sqrt(variance) when the projection is
    whitened, 1 when not; whitened rows times ``w ** (power - 1)`` have each axis divided by
    ``variance ** (power / 2)``. Rows without ``w`` are kept as they are (ones).
    """
    w = getattr(vectors, "w", None)
    if w is None or np.allclose(w[:d], 1.0):
        return np.ones(d, np.float32)
    return (np.asarray(w[:d], dtype=np.float64) ** (power - 1.0)).astype(np.float32)


@dataclass(frozen=True)
class IvfPqOptions:
    """Build options of the ivfpq backend (0: the default, chosen for the catalog's size)."""

    nlist: int = option(0, flag="--nlist", low=0, high=1 << 20,
                        help="ivfpq: inverted lists (default: about 4 x sqrt(items); past 4M items one per "
                             "80 items).")
    pq_bytes: int = option(0, flag="--pq-bytes", low=0, high=256,
                           help=f"ivfpq: bytes per item in the index (default {DEFAULT_PQ_BYTES}).")
    nprobe: int = option(0, flag="--nprobe", low=0, high=1 << 20,
                         help=f"ivfpq: inverted lists scanned per query (default {DEFAULT_NPROBE}; past "
                              f"{FLAT_LISTS_MAX:,} lists 1/32 of them).")
    index_dims: int = option(0)   # leading PCA dims the lists are built on (0: DEFAULT_INDEX_DIMS)


class IvfPq(Backend):
    """Builds and opens ``index.faiss`` (``IndexIVFPQ``, L2 on unit vectors: the same order as cosine)."""

    name = "ivfpq"
    rank = 2
    Options = IvfPqOptions
    store_space = "pca"           # an int8 store of the PCA vectors; the lists are built from it
    file_keys = ("file", "scale")   # the index and, with many lists, the list space's factors
    in_ram = ("file", "scale")      # faiss reads them whole

    def resolve(self, opts, n: int, dim: int):
        """ivfpq always searches approximately, over a PCA projection, re-ranking on the int8 PCA store."""
        if opts.search == "exact":
            raise BundleError("--backend ivfpq searches approximately; leave --search out (or use another "
                              "backend for exact search)")
        if opts.store_dtype not in ("auto", "int8"):
            raise BundleError(f"--store {opts.store_dtype}: the ivfpq backend keeps an int8 store of the "
                              "PCA vectors; leave --store out")
        dims = default_dims(n) if opts.dims == -1 else opts.dims
        if not dims or not 0 < dims < dim:
            raise BundleError(f"--dims {dims}: the ivfpq backend needs a PCA projection of 1 to {dim - 1} "
                              "dims (leave --dims out for the default)")
        own = opts.backend_options
        own = replace(own, nprobe=own.nprobe or default_nprobe(own.nlist or auto_nlist(n)))
        return replace(opts, dims=dims, search="ann", store_dtype="int8",
                       candidates=opts.candidates or DEFAULT_CANDIDATES, backend_options=own)

    def options_of(self, entry: dict, search) -> IvfPqOptions:
        return IvfPqOptions(nlist=int(entry.get("nlist") or 0), pq_bytes=int(entry.get("pq_bytes") or 0),
                            nprobe=int(search.nprobe or entry.get("nprobe") or 0),
                            index_dims=int(entry.get("dim") or 0))

    def search_settings(self, options: IvfPqOptions) -> dict:
        return {"nprobe": options.nprobe}

    def pca_rows(self, vectors):
        """Millions of rows: the PCA learns from a spread sample."""
        return sample(vectors)

    def describe(self, entry: dict, pca: str, store_dtype: str) -> str:
        pq = (f"PQ{entry['pq_m']}x{entry['pq_bits']} fast scan" if entry.get("fast_scan")
              else f"PQ{entry['pq_bytes']}")
        return f"ivfpq: IVF{entry['nlist']},{pq} over {pca}, re-ranked on an int8 {pca} store"

    def build(self, directory: Path, vectors, options) -> dict:
        """Train on a spread sample of ``vectors`` (float32 [n, d] array-like, projected, unit rows), add
        every row in chunks, write ``index.faiss``; returns the manifest's "index" entry.

        ``options``: ``IvfPqOptions`` (``nlist``, ``pq_bytes``, ``nprobe``, ``index_dims``; 0: defaults);
        the lists are built on the first ``index_dims`` PCA dimensions (the largest).
        """
        faiss = _faiss()
        n = int(vectors.shape[0])
        d = min(int(vectors.shape[1]), int(options.index_dims or DEFAULT_INDEX_DIMS))
        nlist = int(options.nlist or auto_nlist(n))
        many = nlist > FLAT_LISTS_MAX
        scale = list_scale(vectors, d) if many else None
        vectors = _ListSpace(vectors, d, scale)
        m = pq_bytes_for(d, int(options.pq_bytes or DEFAULT_PQ_BYTES))
        nbits = 8 if n >= 256 * MIN_PER_LIST else max(1, min(8, int(math.log2(max(n // MIN_PER_LIST, 2)))))
        # enough rows for every list (faiss wants 39 a list): more lists than the default learn from more rows
        want = min(max(TRAIN_ROWS, MIN_PER_LIST * nlist), TRAIN_ROWS_MAX)
        train = np.ascontiguousarray(sample(vectors, want), dtype=np.float32)
        quantizer = faiss.IndexFlatL2(d)
        lists = None
        if many:
            log.info("ivfpq: learning %d lists group by group on %d rows", nlist, len(train))
            lists = TwoLevelLists(faiss, train, nlist)
            quantizer.add(lists.centroids)       # a filled quantizer is kept as it is by train()
            train = train[:TRAIN_ROWS]          # the codes learn from these rows: plenty
            # thousands of lists probed a query: codes of the vectors themselves (one distance table a
            # query, not one a list), two 4-bit codes a byte, scanned by faiss's SIMD "fast scan"
            m, nbits = pq_bytes_for(d, 2 * m), 4
        index = faiss.IndexIVFPQ(quantizer, d, nlist, m, nbits)
        index.by_residual = not many
        index.cp.seed = 1
        index.cp.niter = 20
        index.pq.cp.seed = 1
        log.info("ivfpq: training %d lists and %d x %d-bit codes on %d rows", nlist, m, nbits, len(train))
        index.train(train)
        del train
        for i in range(0, n, _ADD_CHUNK):
            block = np.ascontiguousarray(vectors[i:i + _ADD_CHUNK], dtype=np.float32)
            if lists is None:
                index.add(block)
            else:   # the list of each row found group by group, not against every centroid
                to = np.ascontiguousarray(lists.assign(block), dtype=np.int64)
                index.add_core(len(block), faiss.swig_ptr(block), None, faiss.swig_ptr(to))
        if many:
            index = faiss.IndexIVFPQFastScan(index)      # the same codes, packed for SIMD scanning
        path = directory / FILE
        faiss.write_index(index, str(path))
        entry = {"backend": "ivfpq", "file": FILE, "metric": "l2 of unit vectors", "dim": d, "nlist": nlist,
                 "of_dims": int(vectors.of),
                 "pq_bytes": m * nbits // 8 if many else m, "pq_m": m, "pq_bits": nbits,
                 "nprobe": int(options.nprobe or default_nprobe(nlist)),
                 "faiss": faiss.__version__}
        if many:
            np.save(directory / SCALE_FILE, scale)
            entry.update(scale=SCALE_FILE, list_whiten_power=LIST_WHITEN_POWER, by_residual=False,
                         fast_scan=True)
        return entry

    def open(self, directory: Path, entry: dict, items: int, search) -> IvfPqSearcher:
        searcher = IvfPqSearcher(Path(directory) / Path(entry["file"]).name, entry, items)
        searcher.nprobe = int(search.nprobe or searcher.nprobe)
        return searcher


def _load_scale(path: Path, d: int) -> np.ndarray:
    """The list space's factors (float32 [d]) of a many-list index, checked."""
    if not path.is_file():
        raise BundleError(f"{path}: missing; copy the whole bundle again (pi-search index install) "
                          f"or rebuild it: pi-search index build CATALOG --out {path.parent} --backend ivfpq")
    try:
        scale = np.load(path)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable ({exc}); copy the whole bundle again or rebuild it") from exc
    if scale.shape != (d,) or not np.all(np.isfinite(scale)):
        raise BundleError(f"{path}: does not match index.faiss; copy the whole bundle again or rebuild it")
    return scale.astype(np.float32)


class IvfPqSearcher:
    """An opened ``index.faiss``: ``candidates(q, n)`` scans ``nprobe`` lists for one query.

    The inverted lists (``pq_bytes`` + 8 bytes an item) are read into memory: 10 million items with 32-byte
    codes take about 0.4 GB.
    """

    def __init__(self, path: Path, entry: dict, items: int):
        try:
            faiss = _faiss()
        except BundleError as exc:
            raise BundleError(f"{path.parent}: bundle uses the ivfpq backend; install faiss-cpu (pip "
                              "install 'pi-search[large]') or rebuild it with --backend annoy") from exc
        self.path = path
        if not path.is_file():
            raise BundleError(f"{path}: missing; copy the whole bundle again (pi-search index install) "
                              f"or rebuild it: pi-search index build CATALOG --out {path.parent} "
                              "--backend ivfpq")
        try:
            self.index = faiss.read_index(str(path))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else "unreadable"
            raise BundleError(f"{path}: faiss cannot read it ({first}); copy the whole bundle again "
                              f"(pi-search index install) or rebuild it: pi-search index build CATALOG "
                              f"--out {path.parent} --backend ivfpq") from exc
        self.dim = int(entry["dim"])
        if self.index.ntotal != items or self.index.d != self.dim:
            raise BundleError(f"{path}: {self.index.ntotal} items of {self.index.d} dims, manifest says "
                              f"{items} of {entry['dim']}; copy the whole bundle again or rebuild it")
        # One query at a time scans its lists on one thread; more threads only add wake-ups.
        faiss.omp_set_num_threads(1)
        self.nprobe = int(entry.get("nprobe") or DEFAULT_NPROBE)
        self.scale_path = path.parent / Path(entry["scale"]).name if entry.get("scale") else None
        self.scale = _load_scale(self.scale_path, self.dim) if self.scale_path else None

    def candidates(self, q: np.ndarray, n: int) -> np.ndarray:
        """Up to ``n`` nearest row ids (int64) of ``q`` (float32 [>= dim], projected, unit length)."""
        self.index.nprobe = self.nprobe
        q = np.asarray(q, dtype=np.float32).reshape(1, -1)[:, :self.dim]
        if self.scale is not None:
            q = q * self.scale
        _, ids = self.index.search(_unit(q), int(n))
        ids = ids[0]
        return ids[ids >= 0].astype(np.int64)

    def files(self) -> list[Path]:
        return [self.path] + ([self.scale_path] if self.scale_path is not None else [])

    def close(self) -> None:
        self.index = None

