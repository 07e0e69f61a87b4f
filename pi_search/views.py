"""How an image becomes model inputs: catalog photos and camera queries are framed differently."""

from __future__ import annotations

import numpy as np

from .preprocess import pad_to_square, to_model_input

# Measured on the public benchmark (README, "Retrieval"; bench/retrieval.py): a camera frame shows the item
# in the middle of a room, so zooming in on the centre square drops most of the room and raises recall@1
# far more than anything else tried; crops from 0.55 to 0.7 are within about 1.5 points of each other.
QUERY_CROP = 0.65
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


def query_inputs(rgb: np.ndarray, size: int = 224) -> list[np.ndarray]:
    """Model inputs (RGB uint8 [size, size, 3] each) for one camera frame or uploaded photo: one input, the
    centre square zoomed to ``QUERY_CROP`` of its side (one model pass per frame, as the baseline)."""
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
