"""The Annoy backend: random-projection trees in one memory-mapped file (the default)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import BundleError
from .base import Backend, option

FILE = "index.ann"
DEFAULT_TREES = 50
DEFAULT_SEARCH_K = 10_000    # Annoy nodes inspected per query
_CHUNK = 65_536


def _annoy_index(dim: int):
    """An empty angular ``AnnoyIndex`` of ``dim`` dims (annoy imported on first use)."""
    from annoy import AnnoyIndex

    return AnnoyIndex(dim, "angular")


@dataclass(frozen=True)
class AnnoyOptions:
    """Build options of the Annoy backend."""

    n_trees: int = option(DEFAULT_TREES, flag="--trees", help=f"Annoy trees (default {DEFAULT_TREES}; why: "
                                                              "docs/scale.md#the-defaults-and-why).")
    search_k: int = option(DEFAULT_SEARCH_K, flag="--search-k", help="Annoy nodes searched per query.")


class Annoy(Backend):
    name = "annoy"
    rank = 0
    Options = AnnoyOptions

    def options_of(self, entry: dict, search) -> AnnoyOptions:
        return AnnoyOptions(n_trees=int(entry.get("n_trees") or DEFAULT_TREES), search_k=int(search.search_k))

    def search_settings(self, options: AnnoyOptions) -> dict:
        return {"search_k": options.search_k}

    def build(self, directory: Path, vectors, options: AnnoyOptions) -> dict:
        dim = int(vectors.shape[1])
        ann = _annoy_index(dim)
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

    def describe(self, entry: dict, pca: str, store_dtype: str) -> str:
        trees = f" {entry['n_trees']} trees" if entry.get("n_trees") else ""
        return f"{self.name}{trees} over {pca}, re-ranked on the {store_dtype} full vectors"


class _Opened:
    def __init__(self, path: Path, dim: int, items: int, search_k: int):
        self.path, self.search_k = path, search_k
        self._ann = _annoy_index(dim)
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
