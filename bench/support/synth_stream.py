"""Streamed synthetic embeddings for the big-catalog benchmark: never all in memory, made per block."""

from __future__ import annotations

import time

import numpy as np
from bench_scale import DIM, embedding_shape

K = 10
CHUNK = 10_000


class Synth:
    """Lazy float32 [n, 1280] L2-normalised vectors shaped like the model's embeddings.

    The same Gaussian mixture as ``bench_scale.synthetic()`` (mean and covariance from real embeddings,
    cluster centres with 60% of the variance, about 50 items per cluster), but each block of ``CHUNK`` rows
    comes from its own seed ``(seed, block)``: any block can be made again, in any order, without the others,
    so ten million vectors (51 GB as float32) need neither memory nor disk. Slicing (``x[a:b]``) and row lists
    (``x[[i, j]]``) return float32 arrays; ``observers`` are called with ``(start, block)`` for every block
    made (the benchmark's streamed ground truth rides along the build's passes).
    """

    def __init__(self, n: int, real: np.ndarray | None, seed: int = 0):
        rng = np.random.default_rng(seed)
        mean, self.basis = embedding_shape(real, rng)
        self.n, self.seed = int(n), seed
        self.clusters = max(1, n // 50)
        self.centres = np.empty((self.clusters, DIM), np.float32)
        for i in range(0, self.clusters, 50_000):
            m = min(50_000, self.clusters - i)
            z = rng.standard_normal((m, DIM), dtype=np.float32)
            self.centres[i:i + m] = mean + np.sqrt(0.6, dtype=np.float32) * (z @ self.basis)
        self.shape = (self.n, DIM)
        self.ndim, self.dtype = 2, np.dtype(np.float32)
        self.observers: list = []
        self.seconds = 0.0      # time spent making blocks
        self.blocks_made = 0

    def __len__(self) -> int:
        return self.n

    @property
    def blocks(self) -> int:
        return -(-self.n // CHUNK)

    def block(self, j: int) -> np.ndarray:
        """Rows ``j * CHUNK ...`` (float32 [<= CHUNK, 1280], L2-normalised), the same every time."""
        t0 = time.perf_counter()
        start = j * CHUNK
        m = min(CHUNK, self.n - start)
        rng = np.random.default_rng([self.seed, j])
        c = rng.integers(0, self.clusters, m)
        x = rng.standard_normal((m, DIM), dtype=np.float32) @ self.basis
        x *= np.sqrt(0.4, dtype=np.float32)
        x += self.centres[c]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        self.seconds += time.perf_counter() - t0
        self.blocks_made += 1
        for f in self.observers:
            f(start, x)
        return x

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            a, b, step = key.indices(self.n)
            if step != 1:
                return self[np.arange(a, b, step)]
            if b <= a:
                return np.empty((0, DIM), np.float32)
            parts = []
            for j in range(a // CHUNK, (b - 1) // CHUNK + 1):
                blk = self.block(j)
                lo, hi = max(a - j * CHUNK, 0), min(b - j * CHUNK, len(blk))
                parts.append(blk[lo:hi])
            return parts[0] if len(parts) == 1 else np.concatenate(parts)
        idx = np.asarray(key, dtype=np.int64)
        if idx.ndim == 0:
            return self[int(idx):int(idx) + 1][0]
        out = np.empty((len(idx), DIM), np.float32)
        blocks = idx // CHUNK
        for j in np.unique(blocks):
            sel = np.nonzero(blocks == j)[0]
            out[sel] = self.block(int(j))[idx[sel] - j * CHUNK]
        return out

    def __array__(self, dtype=None, copy=None):
        raise TypeError("Synth is streamed: slice it (x[a:b]) instead of converting it whole")


class StreamedTopK:
    """Exact cosine top-k of fixed queries over rows seen block by block (each block counted once).

    ``q``: float32 [nq, 1280] normalised queries. Feed ``(start, block)`` pairs (``Synth.observers``); when
    every row of ``n`` was seen, ``result()`` is int64 [nq, k], best first.
    """

    def __init__(self, q: np.ndarray, n: int, k: int = K):
        self.q, self.n, self.k = np.ascontiguousarray(q, dtype=np.float32), n, k
        self.best_s = np.full((len(q), k), -np.inf, np.float32)
        self.best_i = np.zeros((len(q), k), np.int64)
        self.seen: set[int] = set()
        self.rows = 0
        self.seconds = 0.0

    def __call__(self, start: int, block: np.ndarray) -> None:
        if start in self.seen:
            return
        t0 = time.perf_counter()
        self.seen.add(start)
        self.rows += len(block)
        s = self.q @ block.T
        k = min(self.k, s.shape[1])
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        cand_s = np.concatenate([self.best_s, np.take_along_axis(s, top, 1)], 1)
        cand_i = np.concatenate([self.best_i, top + start], 1)
        o = np.argsort(-cand_s, axis=1, kind="stable")[:, :self.k]
        self.best_s, self.best_i = np.take_along_axis(cand_s, o, 1), np.take_along_axis(cand_i, o, 1)
        self.seconds += time.perf_counter() - t0

    @property
    def complete(self) -> bool:
        return self.rows >= self.n

    def result(self) -> np.ndarray:
        if not self.complete:
            raise RuntimeError(f"ground truth saw {self.rows} of {self.n} rows")
        return self.best_i
