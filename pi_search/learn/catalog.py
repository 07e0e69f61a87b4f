"""Learning a bundle's projection from its own catalog photos: synthetic views of every item (or of an
even sample of at most ``MAX_ITEMS``), embedded, paired with the item's photo embedding, fitted."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

import numpy as np

from ..model import settle
from . import views as synth
from .whiten import SHRINK, Learned, PairStats

log = logging.getLogger(__name__)

VIEWS = 6            # views per item: 2 views 0.716, 4 0.744, 6 0.752 hard recall@1 (docs/quality.md)
DIMS = 384           # the projection's output dims: the Pi 4's cost per query within 0.3 ms (docs/quality.md)
MAX_ITEMS = 20_000   # a bigger catalog learns from an even sample of this many items
MIN_ITEMS = 2        # fewer items: nothing to tell apart, no projection


def sample_rows(n: int, most: int = MAX_ITEMS) -> np.ndarray:
    """Indices of an even spread of at most ``most`` of ``n`` rows, in order (int64)."""
    if n <= most:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, most).round().astype(np.int64))


RENDER_THREADS = 2   # views of the next items rendered while this item's are embedded (OpenCV, NumPy)


CALIBRATION_PAIRS = 2048   # held-out (view, photo) pairs that carry the guide's thresholds over
HELD_EVERY = 4             # one item in this many gets a held-out view (a quarter of a view per item)


def calibrate(learned: Learned, pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """The guide's thresholds (``settle.HINT_SCORE``, ``settle.HINT_GAIN``, set on the model's own cosines)
    in the learned space, where cosines run lower: ``hint_score`` is the learned cosine of a held-out view
    with its photo at the share of pairs whose plain cosine is below HINT_SCORE; ``hint_gain`` is HINT_GAIN
    scaled by the ratio of the two cosines' spreads; ``likeness``: the page's words (``settle.LIKENESS``)
    carried over as ``hint_score`` is. From the catalog's own views only, none of them fitted
    (views the fit saw score too high to calibrate with)."""
    if not pairs:
        return {}
    p = np.concatenate([np.repeat(ph[None, :], len(v), axis=0) for ph, v in pairs])
    v = np.concatenate([v for _, v in pairs])
    plain = np.sum(p * v, axis=1)
    mine = np.sum(learned.apply(p) * learned.apply(v), axis=1)
    share = float(np.mean(plain < settle.HINT_SCORE))
    spread = float(np.std(plain))
    return {"hint_score": round(float(np.quantile(mine, share)), 4),
            "hint_gain": round(settle.HINT_GAIN * float(np.std(mine)) / spread, 4) if spread > 0 else
            settle.HINT_GAIN,
            "likeness": [round(float(np.quantile(mine, np.mean(plain < t))), 4) for t in settle.LIKENESS]}


def item_views(extractor, photos: Iterable[tuple[str, np.ndarray]], n_views: int = VIEWS,
               threads: int = RENDER_THREADS, held_every: int = 0,
               backgrounds: list[np.ndarray] | None = None, noise_once: bool = False, salt: int = 0, *,
               first: int = 0, others: Iterable = ()):
    """Per photo (``photos``: (item id, RGB uint8 [H, W, 3]) in order), the embeddings of ``n_views``
    synthetic views: yields float32 [n_views, dim], L2-normalised. Keeps the last ``views.OTHERS_KEPT``
    items, small, to put beside the next ones (``others``: the items before the first photo, cut out and
    shrunk or as ``views.Stamp``s; a photo given as None is an item that failed: it yields nothing but
    keeps its place among them, as ``views.Stamp.missing``). The views of the next ``threads`` items are
    rendered in other threads while this item's are embedded: the same views, in the same order, as one
    thread makes.
    ``held_every``: every so many items (by their place in the learning sample, counted from ``first``:
    the first, then every ``held_every``-th) get one view more, the last row (a view the fit never sees,
    to calibrate with). ``backgrounds``: the rooms (RGB uint8), by default the packaged ones
    (``views.rooms``). ``noise_once``: the views' sensor noise drawn once (``views.SensorNoise``), else
    afresh for each view. ``salt``: another sample of views (``views.item_rng``; 0, the build's)."""
    from concurrent.futures import ThreadPoolExecutor

    backgrounds = list(synth.rooms()) if backgrounds is None else backgrounds
    noise = synth.SensorNoise(extractor.size) if noise_once else None
    pool: deque = deque(others, maxlen=synth.OTHERS_KEPT)

    def embedded(made: list) -> np.ndarray:
        vecs = np.stack([extractor.embed(v) for v in made])
        return (vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="views") as ex:
        pending: deque = deque()
        for place, (item_id, rgb) in enumerate(photos, start=first):
            if rgb is None:   # an item whose photo failed: no views, but it keeps its place among the others
                pool.append(synth.Stamp.missing())
                continue
            rgba = synth.cut_out(rgb)
            extra = 1 if held_every and place % held_every == 0 else 0
            pending.append(ex.submit(synth.views, rgba, list(pool), backgrounds,
                                     synth.item_rng(item_id, salt), n_views + extra, extractor.size, noise))
            pool.append(synth.shrink(rgba))
            if len(pending) > max(1, threads):
                yield embedded(pending.popleft().result())
        while pending:
            yield embedded(pending.popleft().result())


def view_vectors(extractor, photos: Iterable[tuple[str, np.ndarray]], n_views: int = VIEWS,
                 noise_once: bool = False, salt: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``item_views`` gathered: (float32 [m, dim], int64 [m]: the position of each view's photo)."""
    vecs, owners = [], []
    for n, v in enumerate(item_views(extractor, photos, n_views, noise_once=noise_once, salt=salt)):
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
    photos: deque = deque()   # the photos' embeddings, taken in order as their views come back

    def pictures():
        for item_id, rgb, vec in items:
            photos.append(vec)
            yield item_id, rgb

    pairs = ((photos.popleft(), views)
             for views in item_views(extractor, pictures(), n_views, held_every=HELD_EVERY))
    return fit_views(int(extractor.dim), pairs, n_views=n_views, shrink=shrink, dims=dims, on_item=on_item)


def fit_views(dim: int, pairs: Iterable[tuple[np.ndarray, np.ndarray]], *, n_views: int = VIEWS,
              shrink: float = SHRINK, dims: int | None = None,
              on_item: Callable[[], None] | None = None) -> tuple[Learned | None, dict]:
    """The learned projection from the views of the learning sample, in its order: ``pairs`` yields (float32
    [dim] an item's photo embedding as indexed, float32 [n_views (+1), dim] its views, the last row held out
    when there is one more: see ``item_views``). Returns it (None with fewer than ``MIN_ITEMS`` items) and
    the manifest's record."""
    t0 = time.perf_counter()
    stats = PairStats(dim)
    n = 0
    held: list[tuple[np.ndarray, np.ndarray]] = []   # (photo, a view the fit never sees), for the guide
    for vec, views in pairs:
        v = np.asarray(vec, np.float64)
        photo = v / max(float(np.linalg.norm(v)), 1e-12)
        stats.add(photo, views[:n_views])
        if len(views) > n_views and len(held) < CALIBRATION_PAIRS:
            held.append((photo.astype(np.float32), views[n_views:]))
        n += 1
        if on_item:
            on_item()
    if n < MIN_ITEMS:
        return None, {}
    learned = stats.fit(shrink=shrink, dims=dims)
    info = {"type": "whitening", "items": stats.items, "views_per_item": int(n_views),
            "pairs": stats.pairs, "shrinkage": float(shrink),
            "seconds": round(time.perf_counter() - t0, 2), **calibrate(learned, held)}
    log.info("learned a %d-d projection from %d views of %d items in %.1f s", learned.dims, stats.pairs,
             stats.items, info["seconds"])
    return learned, info
