"""How an image becomes model inputs: catalog photos and camera queries are framed differently."""

from __future__ import annotations

import numpy as np

from .preprocess import pad_to_square, to_model_input

# Measured on the public benchmark (README, "Retrieval"; bench/retrieval.py): a camera frame shows the item
# in the middle of a room, so zooming in on the centre square drops most of the room and raises recall@1
# far more than anything else tried; crops from 0.55 to 0.7 are within about 1.5 points of each other.
QUERY_CROP = 0.65
# A query that is itself a product photo on white (an upload from a shop listing) is framed like a catalog
# photo instead: zooming in would cut the item. It is recognised by its border: at least PLAIN_SHARE of the
# pixels in the outer PLAIN_BORDER of the image are near-white (every channel >= PLAIN_LEVEL).
PLAIN_BORDER = 0.03
PLAIN_LEVEL = 235
PLAIN_SHARE = 0.99
# Catalog photos are embedded as the mean of a few camera-like views (the whole item, zoomed in, tilted
# both ways, dimmer and warmer light): it costs build time only, never per-frame time.
CATALOG_ZOOM = 0.8
CATALOG_TILT = 15.0
CATALOG_TINT = (0.8, 0.72, 0.6)


def catalog_inputs(rgb: np.ndarray, size: int = 224) -> list[np.ndarray]:
    """Model inputs (RGB uint8 [size, size, 3] each) for one catalog photo: padded white, five views."""
    import cv2

    sq = pad_to_square(rgb)
    side = sq.shape[0]
    views = [to_model_input(sq, size), to_model_input(sq, size, CATALOG_ZOOM)]
    for angle in (-CATALOG_TILT, CATALOG_TILT):
        m = cv2.getRotationMatrix2D((side / 2, side / 2), angle, 1.0)
        tilted = cv2.warpAffine(sq, m, (side, side), flags=cv2.INTER_LINEAR, borderValue=(255, 255, 255))
        views.append(to_model_input(tilted, size))
    dim = np.clip(sq.astype(np.float32) * np.array(CATALOG_TINT, np.float32), 0, 255).astype(np.uint8)
    views.append(to_model_input(dim, size))
    return views


def on_plain_white(rgb: np.ndarray) -> bool:
    """True when ``rgb`` (RGB uint8 [H, W, 3]) looks like a product photo on white, judged by its border."""
    h, w = rgb.shape[:2]
    band = max(1, round(PLAIN_BORDER * min(h, w)))
    step = max(1, band // 3)  # about three lines of each border band, every other pixel: cheap per frame
    strips = (rgb[:band:step, ::2], rgb[h - band::step, ::2], rgb[::2, :band:step], rgb[::2, w - band::step])
    allowed = (1 - PLAIN_SHARE) * sum(s.shape[0] * s.shape[1] for s in strips)  # dark pixels tolerated
    dark = 0
    for strip in strips:  # top strip first: a camera frame is usually rejected after one strip
        dark += int((strip.min(axis=2) < PLAIN_LEVEL).sum())
        if dark > allowed:
            return False
    return True


def query_inputs(rgb: np.ndarray, size: int = 224) -> list[np.ndarray]:
    """Model inputs (RGB uint8 [size, size, 3] each) for one camera frame or uploaded photo: one input (one
    model pass per frame, as the baseline): the centre square zoomed to ``QUERY_CROP`` of its side, or the
    whole photo padded white when it is a product photo on white."""
    if on_plain_white(rgb):
        return [to_model_input(pad_to_square(rgb), size)]
    return [to_model_input(rgb, size, QUERY_CROP)]


def embed(extractor, inputs: list[np.ndarray]) -> np.ndarray:
    """Mean of the inputs' embeddings, L2-normalised: float32 [dim]."""
    vecs = np.stack([extractor.embed(x) for x in inputs])
    v = vecs.mean(axis=0)
    n = float(np.linalg.norm(v))
    return (v / n if n > 0 else v).astype(np.float32)


def embed_catalog_image(extractor, rgb: np.ndarray) -> np.ndarray:
    """Catalog photo RGB uint8 [H, W, 3] -> float32 [dim], L2-normalised."""
    return embed(extractor, catalog_inputs(rgb, extractor.size))


def embed_query_image(extractor, rgb: np.ndarray) -> np.ndarray:
    """Camera frame or photo RGB uint8 [H, W, 3] -> float32 [dim], L2-normalised."""
    return embed(extractor, query_inputs(rgb, extractor.size))
