"""The compact re-rank store of big bundles: int8 PCA coordinates that estimate every full cosine."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import BundleError
from .manifest import StoreEntry
from .store import advise_random

log = logging.getLogger(__name__)

STORE_FILE = "vectors.npy"
SCALE_FILE = "vectors_scale.npy"
OFFSET_FILE = "vectors_offset.npy"
SPACE = "pca"


def axes(components: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
    """The orthonormal PCA axes (float32 [dims, dim]) of a projection's components, whitened or not.

    Whitening divides each axis by the square root of its variance; normalising the rows undoes it.
    ``lengths`` (``Projection.lengths`` of a folded projection): divide by these instead, the components'
    lengths in the learned space the PCA was fitted in (the axes are orthonormal there, not in x's).
    """
    c = np.asarray(components, dtype=np.float32)
    n = np.linalg.norm(c, axis=1, keepdims=True) if lengths is None else \
        np.asarray(lengths, np.float32).reshape(-1, 1)
    return c / np.where(n > 0, n, 1.0)


def write(directory: Path, vectors, mean: np.ndarray, components: np.ndarray, chunk: int = 65_536,
          fold=None) -> dict:
    """Write the store of ``vectors`` (float32 [n, dim] rows, normalised here) into ``directory``.

    For an item x (unit length) with PCA mean m and axes U: ``vectors.npy`` holds ``y = U (x - m)`` as int8
    [n, dims] (``round(y * 127 / max|y|)``), ``vectors_scale.npy`` the per-row factor ``max|y| / 127``
    (float32 [n]) and ``vectors_offset.npy`` the exact ``m . x`` (float32 [n]). Then for a query q
    ``x . q = (x - m) . (q - m) + m . x + m . q - m . m`` is estimated with ``y . U (q - m)`` for the first
    term: the full cosine, less only the part of ``(x - m) . (q - m)`` outside the kept dimensions.

    ``fold`` (``projection.Fold``: a learned projection ``z = W (x - m0)`` folded into the PCA): ``U`` are
    the axes in the learned space composed with W, so ``y`` are the item's PCA coordinates there, and the
    offset is ``-origin . y`` (see ``Scorer``). Returns the manifest's store entry.
    """
    u = axes(components, None if fold is None else fold.lengths)
    mean = np.asarray(mean, dtype=np.float32)
    n, dims = int(vectors.shape[0]), int(u.shape[0])
    out = np.lib.format.open_memmap(directory / STORE_FILE, mode="w+", dtype=np.int8, shape=(n, dims))
    scale = np.empty(n, np.float32)
    offset = np.empty(n, np.float32)
    for i in range(0, n, chunk):
        x = np.asarray(vectors[i:i + chunk], dtype=np.float32)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
        y = (x - mean) @ u.T
        mx = np.abs(y).max(axis=1)
        mx = np.where(mx > 0, mx, 1.0)
        out[i:i + len(x)] = np.round(y * (127.0 / mx[:, None])).astype(np.int8)
        scale[i:i + len(x)] = mx / 127.0
        offset[i:i + len(x)] = x @ mean if fold is None else -(y @ fold.origin)
    out.flush()
    del out
    np.save(directory / SCALE_FILE, scale)
    np.save(directory / OFFSET_FILE, offset)
    return StoreEntry(STORE_FILE, "int8", SCALE_FILE, SPACE, dims, OFFSET_FILE)


class Scorer:
    """Scores rows of an opened PCA store against a full query: ``scores(rows, q)`` -> float32 [len(rows)].

    ``store``: int8 [n, dims] (memory-mapped), ``scale`` and ``offset`` float32 [n]; ``q`` float32 [dim],
    unit length. The result estimates the cosine of the full vectors (see ``write``).

    With a ``fold`` (a learned projection folded into the PCA) the score is the cosine, in the learned
    space, of the item's and the query's PCA reconstructions ``z = mu + U^T y``: with ``a = -origin`` and
    ``c = |a|^2 + rest`` (``|mu|^2``), ``(y . qy + a . y + a . qy + c) / (|z_x| |z_q|)`` where
    ``|z|^2 = |y|^2 + 2 a . y + c + residual`` (the stored offset is ``a . y``, exact; ``|y|^2`` from the int8
    row; ``residual`` the rows' mean share outside the kept axes, ``Fold.residual``).
    """

    def __init__(self, store: np.ndarray, scale: np.ndarray, offset: np.ndarray, mean: np.ndarray,
                 components: np.ndarray, fold=None):
        self.store, self.scale, self.offset = store, scale, offset
        self.mean = np.asarray(mean, dtype=np.float32)
        self.fold = fold
        self.u = axes(components, None if fold is None else fold.lengths)
        self.mm = float(self.mean @ self.mean)
        if fold is not None:
            self.a = -np.asarray(fold.origin, np.float32)
            self.c = float(self.a @ self.a) + float(fold.rest)
            self.r = float(fold.residual)

    def coordinates(self, q: np.ndarray) -> np.ndarray:
        """The query's PCA coordinates ``U (q - m)``: float32 [dims] (the one product a query pays)."""
        return (q - self.mean) @ self.u.T

    def scores(self, rows: np.ndarray, q: np.ndarray, qy: np.ndarray | None = None) -> np.ndarray:
        if qy is None:
            qy = self.coordinates(q)
        if self.fold is not None:
            return self._folded(rows, qy)
        return self._plain(rows, qy, float(self.mean @ q))

    def stored(self, row: int) -> np.ndarray:
        """Stored row ``row``'s coordinates (float32 [dims]), as a query's up to the int8 rounding."""
        return self.store[row].astype(np.float32) * np.float32(self.scale[row])

    def scores_of_row(self, rows: np.ndarray, row: int) -> np.ndarray:
        """``scores`` of ``rows`` with stored row ``row`` as the query (its full vector is not kept: its
        coordinates, and ``m . x`` from its offset)."""
        qy = self.stored(row)
        if self.fold is not None:
            return self._folded(rows, qy)
        return self._plain(rows, qy, float(self.offset[row]))

    def _plain(self, rows: np.ndarray, qy: np.ndarray, mq: float) -> np.ndarray:
        s = self.store[rows].astype(np.float32) @ qy
        s *= self.scale[rows]
        s += self.offset[rows]
        s += mq - self.mm
        return s

    def _folded(self, rows: np.ndarray, qy: np.ndarray) -> np.ndarray:
        r = self.store[rows].astype(np.float32)
        sc = np.asarray(self.scale[rows], np.float32)
        off = np.asarray(self.offset[rows], np.float32)
        aq = float(self.a @ qy)
        dot = (r @ qy) * sc + off + (aq + self.c)
        nx = np.einsum("ij,ij->i", r, r) * (sc * sc) + 2.0 * off + (self.c + self.r)
        nq = float(qy @ qy) + 2.0 * aq + self.c + self.r
        return (dot / np.sqrt(np.maximum(nx, 1e-12) * max(nq, 1e-12))).astype(np.float32)


class ProjectedRows:
    """The projection of every stored item, read back from the store instead of the source vectors.

    Slicing gives float32 [rows, dims] unit rows: ``normalise(y * w)`` with ``w`` the row norms of the
    projection's components (1 unwhitened, 1 / sqrt(variance) whitened; ``lengths``: those of a folded
    projection, ``Projection.lengths``), which is ``Projection.apply(x)``
    up to the int8 rounding. Building the index from it reads the small store once more instead of the
    full vectors (which, for a catalog of millions, may be slow to read or to make again).
    """

    def __init__(self, directory: Path, components: np.ndarray, lengths: np.ndarray | None = None):
        self.store = np.load(directory / STORE_FILE, mmap_mode="r")
        self.scale = np.load(directory / SCALE_FILE, mmap_mode="r")
        self.w = np.linalg.norm(np.asarray(components, dtype=np.float32), axis=1) if lengths is None else \
            np.asarray(lengths, np.float32)
        self.shape = self.store.shape

    def __getitem__(self, sl) -> np.ndarray:
        y = self.store[sl].astype(np.float32) * (self.scale[sl][:, None] * self.w)
        n = np.linalg.norm(y, axis=1, keepdims=True)
        return y / np.where(n > 0, n, 1.0)


class PcaStore:
    """An int8 PCA store opened for re-ranking (ivfpq bundles), with ``store.VectorStore``'s interface: its
    ``scores`` estimate the full cosines; it cannot give full vectors back (no exact search, no compaction).
    """

    def __init__(self, directory: Path, entry: StoreEntry, n: int, projection, *, random_access: bool):
        if projection is None:
            raise BundleError(f"{directory}: its store holds PCA vectors but the bundle has no projection; "
                              "rebuild it")
        self.entry = entry
        self.path = directory / Path(entry.file).name
        self.rows = np.load(self.path, mmap_mode="r")
        if random_access:
            advise_random(self.rows)
        if self.rows.shape != (n, int(entry.dims or 0)):
            raise BundleError(f"{directory}: vector store is {self.rows.shape}, manifest says {n} x "
                              f"{entry.dims}; rebuild the bundle")
        self.scale = np.load(directory / Path(entry.scale).name, mmap_mode="r")
        self.offset = np.load(directory / Path(entry.offset).name, mmap_mode="r")
        if self.scale.shape != (n,) or self.offset.shape != (n,):
            raise BundleError(f"{directory}: {entry.scale} or {entry.offset} does not have {n} rows; rebuild "
                              "the bundle")
        self._scorer = Scorer(self.rows, self.scale, self.offset, projection.mean, projection.components,
                              projection.fold)
        self._lengths = projection.lengths

    def files(self) -> list[Path]:
        return [self.path, Path(self.scale.filename), Path(self.offset.filename)]

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def coordinates(self, q: np.ndarray) -> np.ndarray:
        """``q``'s PCA coordinates (float32 [dims]): once a query, for ``projected`` and ``scores``."""
        return self._scorer.coordinates(q)

    def projected(self, qy: np.ndarray) -> np.ndarray:
        """``Projection.apply`` of the query from its coordinates (float32 [dims], unit length): the
        components are the axes times their lengths."""
        v = qy * self._lengths
        n = float(np.linalg.norm(v))
        return (v / n if n > 0 else v).astype(np.float32)

    def scores(self, rows: np.ndarray, q: np.ndarray, qy: np.ndarray | None = None) -> np.ndarray:
        """Estimated cosine of ``q`` (float32 [dim], unit length) with rows ``rows`` (int64); ``qy``: its
        ``coordinates`` when known."""
        return self._scorer.scores(rows, q, qy)

    def stored(self, row: int) -> np.ndarray:
        """Stored row ``row``'s PCA coordinates (float32 [dims]): the query ``coordinates`` gives for it."""
        return self._scorer.stored(row)

    def scores_of_row(self, rows: np.ndarray, row: int) -> np.ndarray:
        """``scores`` of ``rows`` with the item stored at ``row`` as the query."""
        return self._scorer.scores_of_row(rows, row)

    def full(self, rows: np.ndarray) -> np.ndarray:
        raise BundleError(f"{self.path.parent}: its store keeps PCA vectors only (--backend ivfpq); the full "
                          "vectors are not in the bundle")

    def top(self, q: np.ndarray, k: int):
        raise BundleError(f"{self.path.parent}: its store holds PCA vectors, which only approximate search "
                          "with the bundle's index can use; search it with mode ann (or rebuild it)")

    def close(self) -> None:
        self.rows = self.scale = self.offset = None
        self._scorer = None
