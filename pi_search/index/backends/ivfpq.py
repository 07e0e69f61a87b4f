"""The ivfpq backend: faiss inverted lists of product-quantised PCA vectors, for millions of items (faiss is
the ``large`` extra, imported on first use)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from ...errors import BundleError

log = logging.getLogger(__name__)

FILE = "index.faiss"
DEFAULT_DIMS = 512           # PCA dimensions of the re-rank store (docs/scale.md: ten million items)
DEFAULT_INDEX_DIMS = 256     # the first (largest) of them are the ones the inverted lists are built on
DEFAULT_PQ_BYTES = 32       # bytes per item in the index (PQ sub-quantizers of 8 bits)
DEFAULT_NPROBE = 128        # inverted lists scanned per query (of 4,096 at 1M-10M items)
DEFAULT_CANDIDATES = 500    # IVF-PQ candidates re-ranked on the int8 PCA store
TRAIN_ROWS = 262_144        # rows the coarse quantizer and the PQ codebooks learn from
TRAIN_RUNS = 32             # ... taken as this many runs spread over the catalog
MIN_PER_LIST = 39           # faiss's rule: at least 39 training points per inverted list
_ADD_CHUNK = 65_536


def _faiss():
    try:
        import faiss
    except ImportError as exc:
        raise BundleError("the ivfpq backend needs the faiss-cpu package: pip install 'pi-search[large]' "
                          "(or use --backend annoy or usearch)") from exc
    return faiss


def auto_nlist(n: int) -> int:
    """Inverted lists for ``n`` items: the power of two nearest ``4 * sqrt(n)``, with enough training rows."""
    want = 2 ** round(math.log2(max(4 * math.sqrt(max(n, 1)), 1)))
    cap = max(1, min(n, TRAIN_ROWS) // MIN_PER_LIST)
    return int(max(1, min(want, 2 ** int(math.log2(cap)), 65_536)))


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


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(n > 0, n, 1.0), dtype=np.float32)


class _Leading:
    """The first ``d`` columns of projected rows, normalised again: float32 [n, d] when sliced."""

    def __init__(self, vectors, d: int):
        self._v, self.of = vectors, int(vectors.shape[1])
        self.shape = (int(vectors.shape[0]), d)

    def __getitem__(self, sl) -> np.ndarray:
        return _unit(np.asarray(self._v[sl], dtype=np.float32)[:, :self.shape[1]])


class IvfPq:
    """Builds and opens ``index.faiss`` (``IndexIVFPQ``, L2 on unit vectors: the same order as cosine)."""

    name = "ivfpq"

    def build(self, directory: Path, vectors, options) -> dict:
        """Train on a spread sample of ``vectors`` (float32 [n, d] array-like, projected, unit rows), add
        every row in chunks, write ``index.faiss``; returns the manifest's "index" entry.

        ``options``: ``nlist`` (0: ``auto_nlist``), ``pq_bytes``, ``nprobe``, ``index_dims`` attributes (0:
        defaults); the lists are built on the first ``index_dims`` PCA dimensions (the largest).
        """
        faiss = _faiss()
        n = int(vectors.shape[0])
        d = min(int(vectors.shape[1]), int(getattr(options, "index_dims", 0) or DEFAULT_INDEX_DIMS))
        vectors = _Leading(vectors, d)
        nlist = int(getattr(options, "nlist", 0) or auto_nlist(n))
        m = pq_bytes_for(d, int(getattr(options, "pq_bytes", 0) or DEFAULT_PQ_BYTES))
        nbits = 8 if n >= 256 * MIN_PER_LIST else max(1, min(8, int(math.log2(max(n // MIN_PER_LIST, 2)))))
        # enough rows for every list (faiss wants 39 a list): more lists than the default learn from more rows
        train = np.ascontiguousarray(sample(vectors, max(TRAIN_ROWS, MIN_PER_LIST * nlist)), dtype=np.float32)
        quantizer = faiss.IndexFlatL2(d)
        index = faiss.IndexIVFPQ(quantizer, d, nlist, m, nbits)
        index.cp.seed = 1
        index.cp.niter = 20
        index.pq.cp.seed = 1
        log.info("ivfpq: training %d lists and %d x %d-bit codes on %d rows", nlist, m, nbits, len(train))
        index.train(train)
        del train
        for i in range(0, n, _ADD_CHUNK):
            block = np.ascontiguousarray(vectors[i:i + _ADD_CHUNK], dtype=np.float32)
            index.add(block)
        path = directory / FILE
        faiss.write_index(index, str(path))
        return {"backend": "ivfpq", "file": FILE, "metric": "l2 of unit vectors", "dim": d, "nlist": nlist,
                "of_dims": int(vectors.of),
                "pq_bytes": m, "pq_bits": nbits,
                "nprobe": int(getattr(options, "nprobe", 0) or DEFAULT_NPROBE),
                "faiss": faiss.__version__}

    def open(self, directory: Path, entry: dict, items: int, search) -> IvfPqSearcher:
        searcher = IvfPqSearcher(Path(directory) / Path(entry["file"]).name, entry, items)
        searcher.nprobe = int(search.nprobe or searcher.nprobe)
        return searcher


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

    def candidates(self, q: np.ndarray, n: int) -> np.ndarray:
        """Up to ``n`` nearest row ids (int64) of ``q`` (float32 [>= dim], projected, unit length)."""
        self.index.nprobe = self.nprobe
        q = _unit(np.asarray(q, dtype=np.float32).reshape(1, -1)[:, :self.dim])
        _, ids = self.index.search(q, int(n))
        ids = ids[0]
        return ids[ids >= 0].astype(np.int64)

    def files(self) -> list[Path]:
        return [self.path]

    def resident_bytes(self) -> int:
        """Bytes the index holds in memory once read: codes and ids of every list, plus the centroids."""
        idx = self.index
        lists = idx.ntotal * (idx.code_size + 8)
        return int(lists + idx.nlist * idx.d * 4 + idx.pq.M * (1 << idx.pq.nbits) * idx.pq.dsub * 4)

    def close(self) -> None:
        self.index = None

