"""The full-vector store (``vectors.npy``): written in chunks, memory-mapped, scored exactly or by rows."""

from __future__ import annotations

import contextlib
import mmap
from pathlib import Path

import numpy as np

from ..errors import BundleError
from .manifest import STORE_FILE, STORE_SCALE_FILE, StoreEntry
from .projection import normalise

STORE_DTYPES = ("float32", "float16", "int8")
_CHUNK = 65_536
_EXACT_CHUNK = 8192


def write_store(directory: Path, vectors: np.ndarray, dtype: str, chunk: int = _CHUNK) -> StoreEntry:
    """Write float32 [n, dim] ``vectors`` (a memory map is read in chunks) as the store of ``dtype``.

    float32/float16 rows are the L2-normalised vectors; int8 rows are ``round(v * 127 / max|v|)`` with the
    per-row factor ``max|v| / 127`` in ``vectors_scale.npy`` (float32 [n]).
    """
    n, dim = vectors.shape
    out = np.lib.format.open_memmap(directory / STORE_FILE, mode="w+", dtype=dtype, shape=(n, dim))
    scale = np.ones(n, np.float32) if dtype == "int8" else None
    for i in range(0, n, chunk):
        v = normalise(vectors[i:i + chunk])
        if dtype == "int8":
            m = np.abs(v).max(axis=1)
            m = np.where(m > 0, m, 1.0)
            out[i:i + chunk] = np.round(v * (127.0 / m[:, None])).astype(np.int8)
            scale[i:i + chunk] = m / 127.0
        else:
            out[i:i + chunk] = v.astype(dtype)
    out.flush()
    del out
    if scale is not None:
        np.save(directory / STORE_SCALE_FILE, scale)
    return StoreEntry(STORE_FILE, dtype, STORE_SCALE_FILE if scale is not None else None)


def advise_random(array: np.ndarray) -> None:
    """Tell the kernel a memory-mapped array is read at random (keeps the resident set to the rows used)."""
    mm = getattr(array, "_mmap", None)
    if mm is not None and hasattr(mmap, "MADV_RANDOM"):
        with contextlib.suppress(OSError, ValueError):
            mm.madvise(mmap.MADV_RANDOM)


class VectorStore:
    """A bundle's stored vectors, memory-mapped: ``rows`` float32/float16/int8 [n, dim] (+ int8 ``scale``)."""

    def __init__(self, directory: Path, entry: StoreEntry, n: int, dim: int, *, random_access: bool):
        self.entry = entry
        self.path = directory / Path(entry.file).name
        self.rows = np.load(self.path, mmap_mode="r")
        if random_access:
            advise_random(self.rows)  # re-ranking reads scattered rows: no read-ahead around them
        if self.rows.shape != (n, dim):
            raise BundleError(f"{directory}: vector store is {self.rows.shape}, manifest says {n} x {dim}; "
                              "rebuild the bundle")
        self.scale = np.load(directory / Path(entry.scale).name, mmap_mode="r") if entry.scale else None

    def files(self) -> list[Path]:
        return [self.path] + ([Path(self.scale.filename)] if self.scale is not None else [])

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def scores(self, rows: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Cosine similarity of ``q`` (float32 [dim], normalised) with stored rows ``rows`` (sorted int64)."""
        s = self.rows[rows].astype(np.float32) @ q
        if self.scale is not None:
            s *= self.scale[rows]
        return s

    def full(self, rows: np.ndarray) -> np.ndarray:
        """Stored rows back as float32 [m, dim] (int8 rows times their scale)."""
        block = np.asarray(self.rows[rows], dtype=np.float32)
        if self.scale is not None:
            block *= np.asarray(self.scale[rows], dtype=np.float32)[:, None]
        return block

    def top(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over every row: int64 [k] row ids and float32 [k] scores, best first."""
        n = len(self)
        if self.rows.dtype == np.float32 and self.scale is None:
            s = np.asarray(self.rows) @ q
        else:
            s = np.empty(n, np.float32)
            for i in range(0, n, _EXACT_CHUNK):
                block = self.rows[i:i + _EXACT_CHUNK].astype(np.float32) @ q
                if self.scale is not None:
                    block *= self.scale[i:i + _EXACT_CHUNK]
                s[i:i + _EXACT_CHUNK] = block
        k = min(k, n)
        top = np.argpartition(-s, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.argsort(-s[top], kind="stable")]
        return top, s[top]

    def close(self) -> None:
        self.rows = None
        self.scale = None
