"""The Annoy backend: random-projection trees in one memory-mapped file (the default)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from ...errors import BundleError

FILE = "index.ann"
_CHUNK = 65_536


class Annoy:
    name = "annoy"

    def build(self, directory: Path, vectors, options) -> dict:
        dim = int(vectors.shape[1])
        ann = AnnoyIndex(dim, "angular")
        ann.set_seed(1)
        for i in range(0, vectors.shape[0], _CHUNK):
            block = np.ascontiguousarray(vectors[i:i + _CHUNK], dtype=np.float32)
            for j, v in enumerate(block):
                ann.add_item(i + j, v)
        ann.build(options.n_trees, n_jobs=-1)
        ann.save(str(directory / FILE))
        ann.unload()
        return {"backend": self.name, "file": FILE, "metric": "angular", "dim": dim,
                "n_trees": options.n_trees}

    def open(self, directory: Path, entry: dict, items: int, search) -> _Opened:
        return _Opened(directory / Path(entry["file"]).name, int(entry["dim"]), items, int(search.search_k))


class _Opened:
    def __init__(self, path: Path, dim: int, items: int, search_k: int):
        self.path, self.search_k = path, search_k
        self._ann = AnnoyIndex(dim, "angular")
        try:
            self._ann.load(str(path), prefault=False)
        except OSError as exc:
            raise BundleError(f"{path}: Annoy cannot map it ({exc}); rebuild the bundle") from exc
        if self._ann.get_n_items() != items:
            n = self._ann.get_n_items()
            self.close()
            raise BundleError(f"{path}: {n} items, manifest says {items}; rebuild the bundle")

    def candidates(self, q: np.ndarray, n: int) -> np.ndarray:
        return np.asarray(self._ann.get_nns_by_vector(q, n, search_k=self.search_k), dtype=np.int64)

    def files(self) -> list[Path]:
        return [self.path]

    def close(self) -> None:
        if self._ann is not None:
            self._ann.unload()
            self._ann = None
