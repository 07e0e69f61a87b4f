"""The one look at a still image that every way in shares (still camera frame, upload, ``pi-search query``,
``pi-search eval``): the kept framing, then windows over the whole image, fused (docs/hard-shots.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import framing
from . import settle as settling


@dataclass(frozen=True)
class Look:
    """The embeddings of one look at an image: ``kept`` float32 [dim] (the kept framing, L2-normalised) and
    ``windows`` (box as fractions (x0, y0, x1, y1), float32 [dim] L2-normalised) per window."""

    kept: np.ndarray
    windows: tuple[tuple[tuple[float, float, float, float], np.ndarray], ...]


def windows_for(rgb: np.ndarray) -> list[tuple[float, float, float, float]]:
    """The windows a look embeds besides the kept framing: none for a product photo on white (a window would
    cut the item; it is framed whole), else the settled look's windows over the whole frame."""
    if framing.on_plain_white(rgb):
        return []
    h, w = rgb.shape[:2]
    return settling.settle_windows(w, h)


def embed_window(extractor, rgb: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """One window of ``rgb`` (RGB uint8 [H, W, 3]) embedded: float32 [dim]."""
    return extractor.embed(framing.window_input(rgb, box, extractor.size))


def look(extractor, rgb: np.ndarray, embed_query=None) -> Look:
    """Embed the kept framing and every window of ``rgb`` (RGB uint8 [H, W, 3]); 1 + len(windows) model
    passes (8 on a camera frame, 1 on a product photo on white)."""
    kept = (embed_query or framing.embed_query_image)(extractor, rgb)
    return Look(kept, tuple((box, embed_window(extractor, rgb, box)) for box in windows_for(rgb)))


def depth(k: int) -> int:
    """Matches asked of the catalog per list before fusing."""
    return max(int(k), settling.SETTLE_DEPTH)


def fuse(catalog, kept: np.ndarray, done: list, k: int) -> tuple[list, tuple | None, float] | None:
    """The fused matches of a look whose windows were searched already (``done``: (box, matches) each):
    the kept framing searched, then ``settle.fuse``. Returns (matches, picked window or None, its gain), or
    None when another bundle came in between the searches (matches of two bundles are never combined)."""
    kept_matches = catalog.search(kept, depth(k))
    if not settling.one_generation(kept_matches, *(ms for _, ms in done)):
        return None
    return settling.fuse(kept_matches, done, k)


def search(catalog, seen: Look, k: int) -> tuple[list, tuple | None, float]:
    """First ``k`` matches of a look: each window searched, fused with the kept framing's matches (searched
    again, all on one bundle, if a bundle came in meanwhile)."""
    while True:
        done = [(box, catalog.search(v, depth(k))) for box, v in seen.windows]
        fused = fuse(catalog, seen.kept, done, k)
        if fused is not None:
            return fused


def look_and_search(extractor, catalog, rgb: np.ndarray, k: int, embed_query=None) -> list:
    """The matches (best first, at most ``k``) of one still image: ``look`` then ``search``."""
    return search(catalog, look(extractor, rgb, embed_query), k)[0]
