"""Pure functions from an RGB frame to the extractor's input tensor (centre crop, resize)."""

from __future__ import annotations

import numpy as np


def centre_crop(rgb: np.ndarray, fraction: float = 1.0) -> np.ndarray:
    """The largest centred square of ``rgb`` scaled by ``fraction`` (0 < fraction <= 1); a view, no copy."""
    h, w = rgb.shape[:2]
    side = max(1, int(round(min(h, w) * fraction)))
    top, left = (h - side) // 2, (w - side) // 2
    return rgb[top : top + side, left : left + side]


def to_model_input(rgb: np.ndarray, size: int = 224, crop: float = 1.0) -> np.ndarray:
    """RGB uint8 [H, W, 3] to the model's input: RGB uint8 [size, size, 3], NHWC without the batch axis.

    Centre-crops to a square (``crop`` < 1 zooms in), then resizes with area interpolation when shrinking.
    """
    import cv2

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected RGB uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")
    sq = centre_crop(rgb, crop)
    if sq.shape[0] == size:
        return np.ascontiguousarray(sq)
    interp = cv2.INTER_AREA if sq.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(sq, (size, size), interpolation=interp)


def pad_to_square(rgb: np.ndarray, value: int = 255) -> np.ndarray:
    """Pad ``rgb`` to a square with ``value`` (white), keeping the whole object in view (catalog photos)."""
    h, w = rgb.shape[:2]
    side = max(h, w)
    if h == w:
        return rgb
    out = np.full((side, side, 3), value, dtype=rgb.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = rgb
    return out
