"""The learned projection: whitening of the differences between an item's camera views and its photo
(Radenović et al.'s learned whitening), then the main axes of the whitened catalog."""

from __future__ import annotations

import numpy as np

from ..bundle import Learned

SHRINK = 0.2   # Cw + SHRINK * trace(Cw) / dim * I: 0.1-0.3 measured alike, 0.01 worse (docs/quality.md)


class PairStats:
    """Running sums of matching pairs (an item's camera views and its photo embedding): float64 [dim, dim]
    three times and a buffer of ``batch`` items, whatever the catalog's size."""

    def __init__(self, dim: int, batch: int = 256):
        self.dim, self.batch = dim, batch
        self.cw = np.zeros((dim, dim))       # sum of (view - photo)(view - photo)^T
        self.pairs = 0
        self.sum_pairs = np.zeros(dim)       # sum of views and photos, once per pair each
        self.cat_sum, self.cat_sq, self.items = np.zeros(dim), np.zeros((dim, dim)), 0
        self.view_sum, self.view_sq = np.zeros(dim), np.zeros((dim, dim))
        self._photos: list[np.ndarray] = []
        self._views: list[np.ndarray] = []

    def add(self, photo: np.ndarray, views: np.ndarray) -> None:
        """One item: ``photo`` float32 [dim], ``views`` float32 [m, dim] (both L2-normalised)."""
        self._photos.append(np.asarray(photo, np.float32).reshape(self.dim))
        self._views.append(np.asarray(views, np.float32).reshape(-1, self.dim))
        if len(self._photos) >= self.batch:
            self._flush()

    def _flush(self) -> None:
        """Fold the buffered items into the sums (three matrix products per batch, float32)."""
        if not self._photos:
            return
        p = np.stack(self._photos)
        v = np.concatenate(self._views)
        own = np.repeat(np.arange(len(p)), [len(x) for x in self._views])
        d = v - p[own]
        self.cw += d.T @ d
        self.pairs += len(v)
        self.sum_pairs += v.sum(axis=0, dtype=np.float64) + p[own].sum(axis=0, dtype=np.float64)
        self.cat_sum += p.sum(axis=0, dtype=np.float64)
        self.cat_sq += p.T @ p
        self.items += len(p)
        self.view_sum += v.sum(axis=0, dtype=np.float64)
        self.view_sq += v.T @ v
        self._photos, self._views = [], []

    def fit(self, *, shrink: float = SHRINK, dims: int | None = None, lda: bool = False) -> Learned:
        """mean m = mean of the pairs' views and photos; Cw = covariance of (view - photo), shrunk towards
        a multiple of the identity; whitening by Cw^-1/2 (in Cw's eigenbasis: a rotation away, the same
        cosines); then the main axes of the whitened catalog and views (``lda``: of the items alone,
        keeping ``items - 1`` of them: plain linear discriminant analysis), keeping ``dims`` (None: all).
        One BLAS thread: on busy cores a second one spins and makes the decompositions several times
        slower."""
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            return self._fit(shrink, dims, lda)

    def _fit(self, shrink: float, dims: int | None, lda: bool) -> Learned:
        self._flush()
        dim = self.dim
        mean = self.sum_pairs / max(2 * self.pairs, 1)
        cw = self.cw / max(self.pairs, 1)
        cw[np.diag_indices(dim)] += shrink * np.trace(cw) / dim
        evals, evecs = np.linalg.eigh(cw)
        wt = (evecs / np.sqrt(np.maximum(evals, 1e-12))).T.astype(np.float32)   # [dim, dim]: rows = axes
        if dims is None and not lda:   # all axes kept: turning to them changes no cosine, so it is left out
            return Learned(mean.astype(np.float32), np.ascontiguousarray(wt))
        n, s, sq = self.items, self.cat_sum, self.cat_sq
        if not lda:
            n, s, sq = n + self.pairs, s + self.view_sum, sq + self.view_sq
        cov = sq / max(n, 1)
        ms = np.outer(s / max(n, 1), mean)
        cov -= ms + ms.T
        cov += np.outer(mean, mean)
        cb = wt @ cov.astype(np.float32) @ wt.T
        bvals, bvecs = np.linalg.eigh(cb.astype(np.float64))
        order = np.argsort(bvals)[::-1]
        keep = dims or dim
        if lda:
            keep = min(keep, max(1, self.items - 1))
        axes = bvecs[:, order[:keep]].T.astype(np.float32)
        return Learned(mean.astype(np.float32), np.ascontiguousarray(axes @ wt))


def fit(views: np.ndarray, photos: np.ndarray, catalog: np.ndarray, *, shrink: float = SHRINK,
        dims: int | None = None, lda: bool = False) -> Learned:
    """``PairStats.fit`` of pairs held in memory: row i of ``views`` (float32 [m, dim]) is a camera view of
    the item whose photo embedding is row i of ``photos`` (float32 [m, dim]); ``catalog`` (float32 [n, dim])
    holds every item once."""
    st = PairStats(views.shape[1])
    v, p, c = (np.asarray(a, np.float32) for a in (views, photos, catalog))
    d = v - p
    st.cw, st.pairs = (d.T @ d).astype(np.float64), len(v)
    st.sum_pairs = v.sum(axis=0, dtype=np.float64) + p.sum(axis=0, dtype=np.float64)
    st.cat_sum, st.cat_sq, st.items = c.sum(axis=0, dtype=np.float64), (c.T @ c).astype(np.float64), len(c)
    st.view_sum, st.view_sq = v.sum(axis=0, dtype=np.float64), (v.T @ v).astype(np.float64)
    return st.fit(shrink=shrink, dims=dims, lda=lda)
