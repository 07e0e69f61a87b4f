"""The usearch backend: an HNSW graph in float16, viewed from its file (catalogs of 100k items and more)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import BundleError
from .base import Backend

FILE = "index.usearch"
_CHUNK = 65_536


def _index_class():
    """usearch's Index, imported on first use: an optional extra (``pi-search[usearch]``)."""
    try:
        from usearch.index import Index
    except ImportError as exc:
        raise BundleError("the usearch backend needs the usearch package: pip install 'pi-search[usearch]' "
                          "(or build with --backend annoy)") from exc
    return Index


def build_index(path: Path, vectors, dtype: str = "f16") -> None:
    """Write the HNSW graph of ``vectors`` (float32 [n, d] rows, L2-normalised; row i gets key i) to ``path``
    with its vectors stored as ``dtype`` (``f16``, ``i8``, ...)."""
    idx = _index_class()(ndim=int(vectors.shape[1]), metric="cos", dtype=dtype)
    for i in range(0, vectors.shape[0], _CHUNK):
        block = np.ascontiguousarray(vectors[i:i + _CHUNK], dtype=np.float32)
        idx.add(np.arange(i, i + len(block), dtype=np.uint64), block, threads=0)
    idx.save(str(path))


class USearch(Backend):
    name = "usearch"
    rank = 1

    def build(self, directory: Path, vectors, options) -> dict:
        build_index(directory / FILE, vectors, "f16")
        return {"backend": self.name, "file": FILE, "metric": "cos", "dim": int(vectors.shape[1]),
                "dtype": "f16"}

    def open(self, directory: Path, entry: dict, items: int, search) -> _Opened:
        path = directory / Path(entry["file"]).name
        return _Opened(path, _index_class().restore(str(path), view=True))


class _Opened:
    def __init__(self, path: Path, index):
        self.path, self._index = path, index

    def candidates(self, q: np.ndarray, n: int) -> np.ndarray:
        return np.asarray(self._index.search(q, n).keys, dtype=np.int64)

    def files(self) -> list[Path]:
        return [self.path]

    def close(self) -> None:
        self._index = None
