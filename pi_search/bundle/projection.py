"""PCA projection of embeddings for the approximate index (the store keeps the full vectors)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BundleError


def normalise(v: np.ndarray) -> np.ndarray:
    """Rows of ``v`` scaled to unit length (float32; zero rows stay zero)."""
    v = np.asarray(v, dtype=np.float32)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n > 0, n, 1.0)


@dataclass(frozen=True)
class Projection:
    """PCA fitted on catalog embeddings: ``y = normalise((x - mean) @ components.T)``.

    Tensor contract: x float32 [..., dim] -> y float32 [..., dims], L2-normalised; whitening (division by
    the square root of each component's variance) is folded into ``components`` when ``whiten``.
    """

    mean: np.ndarray         # float32 [dim]
    components: np.ndarray   # float32 [dims, dim]
    whiten: bool
    explained: float         # fraction of the variance kept

    @property
    def dims(self) -> int:
        return int(self.components.shape[0])

    def apply(self, x: np.ndarray) -> np.ndarray:
        y = (np.asarray(x, dtype=np.float32) - self.mean) @ self.components.T
        n = np.linalg.norm(y, axis=-1, keepdims=True)
        return (y / np.where(n > 0, n, 1.0)).astype(np.float32)


def fit_pca(vectors: np.ndarray, dims: int, *, whiten: bool = False, chunk: int = 65_536) -> Projection:
    """Fit PCA on float32 [n, dim] vectors (a memory map is read in chunks) keeping ``dims`` components."""
    n, dim = vectors.shape
    if not 0 < dims < dim:
        raise BundleError(f"--dims {dims}: must be between 1 and {dim - 1} (the embedding has {dim} dims)")
    total = np.zeros(dim, np.float64)
    for i in range(0, n, chunk):
        total += vectors[i:i + chunk].astype(np.float64).sum(axis=0)
    mean = total / max(n, 1)
    cov = np.zeros((dim, dim), np.float64)
    for i in range(0, n, chunk):
        c = vectors[i:i + chunk].astype(np.float64) - mean
        cov += c.T @ c
    cov /= max(n - 1, 1)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1][:dims]
    evals, comps = np.clip(evals[order], 0.0, None), evecs[:, order].T
    explained = float(evals.sum() / max(np.clip(np.linalg.eigvalsh(cov), 0, None).sum(), 1e-12))
    if whiten:
        comps = comps / np.sqrt(np.maximum(evals, 1e-4 * max(evals[0], 1e-12)))[:, None]
    return Projection(mean.astype(np.float32), comps.astype(np.float32), whiten, explained)


def load_projection(directory: Path, entry) -> Projection:
    """The projection a manifest's ``projection`` entry names, checked against its shapes."""
    mean = np.load(directory / Path(entry.mean).name)
    comps = np.load(directory / Path(entry.components).name)
    if mean.ndim != 1 or comps.shape != (int(entry.dims), mean.shape[0]):
        raise BundleError(f"{directory}: projection shapes differ from the manifest; rebuild it")
    return Projection(mean.astype(np.float32), comps.astype(np.float32), bool(entry.whiten),
                      float(entry.explained_variance))


class ProjectedView:
    """A lazily projected view of [n, dim] vectors: slicing yields float32 [rows, dims], L2-normalised."""

    def __init__(self, vectors: np.ndarray, projection: Projection):
        self._v, self._p = vectors, projection
        self.shape = (vectors.shape[0], projection.dims)

    def __getitem__(self, sl):
        return self._p.apply(normalise(self._v[sl]))
