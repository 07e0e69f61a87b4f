"""Learning a bundle's projection from its own catalog photos: synthetic views of every item (or of an
even sample of at most ``MAX_ITEMS``), embedded, paired with the item's photo embedding, fitted."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

import numpy as np

from . import views as synth
from .whiten import SHRINK, Learned, PairStats

log = logging.getLogger(__name__)

VIEWS = 6            # views per item: 2 views 0.716, 4 0.744, 6 0.752 hard recall@1 (docs/quality.md)
MAX_ITEMS = 20_000   # a bigger catalog learns from an even sample of this many items
MIN_ITEMS = 2        # fewer items: nothing to tell apart, no projection


def sample_rows(n: int, most: int = MAX_ITEMS) -> np.ndarray:
    """Indices of an even spread of at most ``most`` of ``n`` rows, in order (int64)."""
    if n <= most:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, most).round().astype(np.int64))


RENDER_THREADS = 2   # views of the next items rendered while this item's are embedded (OpenCV, NumPy)


def item_views(extractor, photos: Iterable[tuple[str, np.ndarray]], n_views: int = VIEWS,
               threads: int = RENDER_THREADS):
    """Per photo (``photos``: (item id, RGB uint8 [H, W, 3]) in order), the embeddings of ``n_views``
    synthetic views: yields float32 [n_views, dim], L2-normalised. Keeps the last ``views.OTHERS_KEPT``
    items, small, to put beside the next ones. The views of the next ``threads`` items are rendered in other
    threads while this item's are embedded: the same views, in the same order, as one thread makes."""
    from concurrent.futures import ThreadPoolExecutor

    backgrounds = synth.room_backgrounds()
    others: deque = deque(maxlen=synth.OTHERS_KEPT)

    def embedded(made: list) -> np.ndarray:
        vecs = np.stack([extractor.embed(v) for v in made])
        return (vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="views") as pool:
        pending: deque = deque()
        for item_id, rgb in photos:
            rgba = synth.cut_out(rgb)
            pending.append(pool.submit(synth.views, rgba, list(others), backgrounds,
                                       synth.item_rng(item_id), n_views, extractor.size))
            others.append(synth.shrink(rgba))
            if len(pending) > max(1, threads):
                yield embedded(pending.popleft().result())
        while pending:
            yield embedded(pending.popleft().result())


def view_vectors(extractor, photos: Iterable[tuple[str, np.ndarray]], n_views: int = VIEWS
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``item_views`` gathered: (float32 [m, dim], int64 [m]: the position of each view's photo)."""
    vecs, owners = [], []
    for n, v in enumerate(item_views(extractor, photos, n_views)):
        vecs.append(v)
        owners += [n] * len(v)
    out = np.concatenate(vecs) if vecs else np.empty((0, int(extractor.dim)), np.float32)
    return out, np.asarray(owners, np.int64)


def learn(extractor, items: Iterable[tuple[str, np.ndarray, np.ndarray]], *, n_views: int = VIEWS,
          shrink: float = SHRINK, dims: int | None = None,
          on_item: Callable[[], None] | None = None) -> tuple[Learned | None, dict]:
    """The learned projection of a catalog: ``items`` yields (item id, RGB uint8 [H, W, 3] photo, float32
    [dim] its embedding as indexed). Returns it (None with fewer than ``MIN_ITEMS`` items) and what the
    manifest records of it. Memory: the running sums (``PairStats``), whatever the catalog's size."""
    t0 = time.perf_counter()
    stats = PairStats(int(extractor.dim))
    photos: deque = deque()   # the photos' embeddings, taken in order as their views come back

    def pictures():
        for item_id, rgb, vec in items:
            v = np.asarray(vec, np.float64)
            photos.append(v / max(float(np.linalg.norm(v)), 1e-12))
            yield item_id, rgb

    n = 0
    for views in item_views(extractor, pictures(), n_views):
        stats.add(photos.popleft(), views)
        n += 1
        if on_item:
            on_item()
    if n < MIN_ITEMS:
        return None, {}
    learned = stats.fit(shrink=shrink, dims=dims)
    info = {"type": "whitening", "items": stats.items, "views_per_item": int(n_views),
            "pairs": stats.pairs, "shrinkage": float(shrink), "seconds": round(time.perf_counter() - t0, 2)}
    log.info("learned a %d-d projection from %d views of %d items in %.1f s", learned.dims, stats.pairs,
             stats.items, info["seconds"])
    return learned, info
