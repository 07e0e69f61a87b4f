"""The projection a bundle learned from its catalog, as stored in it: its two files, loaded and applied."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BundleError
from .manifest import LEARNED_MATRIX_FILE, LEARNED_MEAN_FILE
from .projection import normalise


@dataclass(frozen=True)
class Learned:
    """``y = normalise((x - mean) @ matrix.T)``; tensor contract: x float32 [..., dim] (L2-normalised
    embeddings) -> y float32 [..., dims], L2-normalised. Fitted by ``pi_search.learn``; kept in a bundle as
    ``learned_mean.npy`` and ``learned_matrix.npy``."""

    mean: np.ndarray     # float32 [dim]
    matrix: np.ndarray   # float32 [dims, dim]

    @property
    def dims(self) -> int:
        return int(self.matrix.shape[0])

    def apply(self, x: np.ndarray) -> np.ndarray:
        y = (np.asarray(x, np.float32) - self.mean) @ self.matrix.T
        return normalise(y)

    def save(self, mean_path: Path, matrix_path: Path) -> None:
        np.save(mean_path, self.mean.astype(np.float32))
        np.save(matrix_path, self.matrix.astype(np.float32))

    @classmethod
    def load(cls, mean_path: Path, matrix_path: Path, dim: int) -> Learned:
        mean = np.load(mean_path, allow_pickle=False)
        matrix = np.load(matrix_path, allow_pickle=False)
        if mean.shape != (dim,) or matrix.ndim != 2 or matrix.shape[1] != dim:
            raise BundleError(f"{matrix_path.parent}: learned projection of shapes {mean.shape} and "
                              f"{matrix.shape} does not fit {dim}-d embeddings; rebuild the bundle")
        return cls(mean.astype(np.float32), np.ascontiguousarray(matrix, np.float32))


def manifest_entry(learned: Learned, info: dict | None = None, *, folded: bool = False) -> dict:
    """The manifest's ``learned`` entry for ``learned`` written beside it (``info``: how it was learned);
    ``folded``: it is part of the PCA (``projection.fold_learned``) and has no files of its own."""
    if folded:
        kept = {k: v for k, v in (info or {}).items() if k not in ("mean", "matrix")}
        return {**kept, "dims": learned.dims, "folded": "pca"}
    return {**(info or {}), "dims": learned.dims, "mean": LEARNED_MEAN_FILE, "matrix": LEARNED_MATRIX_FILE}
