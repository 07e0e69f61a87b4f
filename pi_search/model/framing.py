"""How a camera frame or a product photo becomes model input: cropping, padding, resizing, windows."""

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
    views.append(to_model_input(cv2.LUT(sq, _tint_table()), size))
    return views


def _tint_table() -> np.ndarray:
    """``CATALOG_TINT`` as a lookup table, uint8 [256, 1, 3] for ``cv2.LUT``: level v of channel c becomes
    uint8(clip(float32(v) * float32(tint[c]), 0, 255)), the same bytes as that formula applied to the whole
    photo, without its full-size float32 copies (a third of a catalog photo's framing time)."""
    levels = np.arange(256, dtype=np.float32)[:, None] * np.array(CATALOG_TINT, np.float32)
    return np.clip(levels, 0, 255).astype(np.uint8)[:, None, :]


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

def target_box(width: int, height: int, crop: float = QUERY_CROP) -> tuple[float, float, float, float]:
    """The kept framing's square (the centre square zoomed to ``crop``) as fractions (x0, y0, x1, y1)."""
    side = min(width, height) * crop
    x0, y0 = (width - side) / 2 / width, (height - side) / 2 / height
    return (round(x0, 4), round(y0, 4), round(1 - x0, 4), round(1 - y0, 4))


def window_input(rgb: np.ndarray, box: tuple[float, float, float, float], size: int = 224) -> np.ndarray:
    """One window (fractions) of a frame (RGB uint8 [H, W, 3]) as a model input, RGB uint8 [size, size, 3]."""
    import cv2

    h, w = rgb.shape[:2]
    x0, y0 = int(round(box[0] * w)), int(round(box[1] * h))
    x1, y1 = max(x0 + 1, int(round(box[2] * w))), max(y0 + 1, int(round(box[3] * h)))
    crop = rgb[y0:y1, x0:x1]
    interp = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)
