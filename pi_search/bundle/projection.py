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
class Fold:
    """What a PCA fitted in a learned space ``z = W (x - m)`` keeps of that space once ``W`` is folded into
    it (``fold_learned``): enough to score in the learned space without ``W``.

    ``lengths`` float32 [dims]: each component's length in the learned space (1, or 1 / sqrt(variance)
    when whitened), so ``components / lengths`` are unit axes there; ``origin`` float32 [dims]: the learned
    space's origin (``z = 0``) in the PCA coordinates; ``rest``: its squared distance from their span;
    ``residual``: the mean squared length of a row's part outside the kept axes (``|z - mu|^2`` less the
    kept coordinates' share), which every row's reconstruction lacks on average.
    """

    lengths: np.ndarray
    origin: np.ndarray
    rest: float
    residual: float = 0.0


@dataclass(frozen=True)
class Projection:
    """PCA fitted on catalog embeddings: ``y = normalise((x - mean) @ components.T)``.

    Tensor contract: x float32 [..., dim] -> y float32 [..., dims], L2-normalised; whitening (division by
    the square root of each component's variance) is folded into ``components`` when ``whiten``. ``fold``:
    a learned projection is folded in too (the PCA was fitted on its output, ``fold_learned``).
    """

    mean: np.ndarray         # float32 [dim]
    components: np.ndarray   # float32 [dims, dim]
    whiten: bool
    explained: float         # fraction of the variance kept
    fold: Fold | None = None

    @property
    def lengths(self) -> np.ndarray:
        """The components' lengths (float32 [dims]) in the space the PCA was fitted in."""
        if self.fold is not None:
            return self.fold.lengths
        return np.linalg.norm(self.components, axis=1).astype(np.float32)

    @property
    def dims(self) -> int:
        return int(self.components.shape[0])

    def apply(self, x: np.ndarray) -> np.ndarray:
        y = (np.asarray(x, dtype=np.float32) - self.mean) @ self.components.T
        n = np.linalg.norm(y, axis=-1, keepdims=True)
        return (y / np.where(n > 0, n, 1.0)).astype(np.float32)


def fit_pca(vectors: np.ndarray, dims: int, *, whiten: bool = False, chunk: int = 65_536) -> Projection:
    """Fit PCA on float32 [n, dim] vectors (a memory map is read in chunks) keeping ``dims`` components
    (all ``dim`` of them: a rotation to the main axes, whitened or not)."""
    n, dim = vectors.shape
    if not 0 < dims <= dim:
        raise BundleError(f"--dims {dims}: must be between 1 and {dim} (the embedding has {dim} dims)")
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


def fold_learned(pca: Projection, learned, residual: float = 0.0) -> Projection:
    """One projection doing ``learned`` (``bundle.Learned``: ``z = W (x - m)``, W float32 [k, dim]) and then
    ``pca`` (fitted on the rows ``z``, not normalised in between): components ``C W`` and a mean m' with
    ``(x - m') @ (C W).T == (z - mu) @ C.T``, i.e. ``W (m' - m) = mu`` (solved by least squares and
    checked). The query then pays one [dims, dim] product instead of W's [k, dim] and the PCA's.
    ``residual``: the rows' mean squared length outside the kept axes (``Fold.residual``)."""
    w = np.asarray(learned.matrix, np.float64)
    mu = np.asarray(pca.mean, np.float64)
    c = np.asarray(pca.components, np.float64)
    delta = np.linalg.lstsq(w, mu, rcond=None)[0]
    if np.linalg.norm(w @ delta - mu) > 1e-4 * max(float(np.linalg.norm(mu)), 1e-3):
        raise BundleError("the learned projection cannot be folded into the PCA (its mean is out of reach); "
                          "rebuild with --no-learn")
    lengths = np.linalg.norm(c, axis=1)
    a = (c / np.where(lengths > 0, lengths, 1.0)[:, None]) @ mu
    fold = Fold(lengths.astype(np.float32), (-a).astype(np.float32), float(max(mu @ mu - a @ a, 0.0)),
                float(residual))
    return Projection((np.asarray(learned.mean, np.float64) + delta).astype(np.float32),
                      (c @ w).astype(np.float32), pca.whiten, pca.explained, fold)


def outside(rows: np.ndarray, pca: Projection, chunk: int = 65_536) -> float:
    """The mean squared length of ``rows``' (float32 [n, dim]) parts outside ``pca``'s kept axes."""
    u = pca.components / np.linalg.norm(pca.components, axis=1, keepdims=True)
    total = 0.0
    for i in range(0, len(rows), chunk):
        c = np.asarray(rows[i:i + chunk], np.float32) - pca.mean
        total += float((c * c).sum()) - float(((c @ u.T) ** 2).sum())
    return max(total / max(len(rows), 1), 0.0)


def save_fold(path: Path, fold: Fold) -> None:
    """``pca_fold.npy``: float32 [2, dims], lengths and origin (``fold.rest`` goes in the manifest)."""
    np.save(path, np.stack([fold.lengths, fold.origin]).astype(np.float32))


def load_projection(directory: Path, entry) -> Projection:
    """The projection a manifest's ``projection`` entry names, checked against its shapes."""
    mean = np.load(directory / Path(entry.mean).name)
    comps = np.load(directory / Path(entry.components).name)
    if mean.ndim != 1 or comps.shape != (int(entry.dims), mean.shape[0]):
        raise BundleError(f"{directory}: projection shapes differ from the manifest; rebuild it")
    fold = None
    if entry.fold:
        f = np.load(directory / Path(entry.fold).name, allow_pickle=False)
        if f.shape != (2, int(entry.dims)) or not np.all(np.isfinite(f)) or not np.all(f[0] > 0):
            raise BundleError(f"{directory / Path(entry.fold).name}: does not fit the projection; copy the "
                              "whole bundle again or rebuild it")
        fold = Fold(f[0].astype(np.float32), f[1].astype(np.float32), float(entry.fold_rest),
                    float(entry.fold_residual))
    return Projection(mean.astype(np.float32), comps.astype(np.float32), bool(entry.whiten),
                      float(entry.explained_variance), fold)


class ProjectedView:
    """A lazily projected view of [n, dim] vectors: slicing yields float32 [rows, dims], L2-normalised."""

    def __init__(self, vectors: np.ndarray, projection: Projection):
        self._v, self._p = vectors, projection
        self.shape = (vectors.shape[0], projection.dims)

    def __getitem__(self, sl):
        return self._p.apply(normalise(self._v[sl]))
