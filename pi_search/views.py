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


# ------------------------------------------------------------------ hard shots (docs/hard-shots.md)
# When the scene settles (the gate skips a frame after an inference), the worker looks at the whole frame
# once: square windows spread over it and the whole centre square, each embedded and searched; an item's
# score is then the mean of its kept-framing score and its best window score (``fuse``;
# bench/retrieval_hard.py, docs/hard-shots.md).
# SETTLE_GRID is (columns, rows, side as a fraction of the frame height).
SETTLE_GRID = ((3, 2, 0.6),)
SETTLE_CENTRE = True  # and the whole centre square as one more window
SETTLE_DEPTH = 20  # matches asked of the bundle per window
SETTLE_SLICE_S = 0.03  # model time per skipped frame: a frame that changes waits at most this (+ one window)
# The guide shown on the preview: the hint fires when the best match scores below HINT_SCORE, or when the
# settled look found it in a window outside the kept framing's box that scores HINT_GAIN more than the box.
# Measured (docs/hard-shots.md): about 9-12% of standard shots, 13-22% of hard ones, 90-93% of empty scenes.
HINT_SCORE = 0.5
HINT_GAIN = 0.1
HINT = "Hold the item closer, inside the box"


def target_box(width: int, height: int, crop: float = QUERY_CROP) -> tuple[float, float, float, float]:
    """The kept framing's square (the centre square zoomed to ``crop``) as fractions (x0, y0, x1, y1)."""
    side = min(width, height) * crop
    x0, y0 = (width - side) / 2 / width, (height - side) / 2 / height
    return (round(x0, 4), round(y0, 4), round(1 - x0, 4), round(1 - y0, 4))


def settle_windows(width: int, height: int, grid=SETTLE_GRID,
                   centre: bool = SETTLE_CENTRE) -> list[tuple[float, float, float, float]]:
    """Square windows (x0, y0, x1, y1 as fractions of the frame) spread edge to edge over the frame, then
    (``centre``) the frame's whole centre square."""
    out = []
    for nx, ny, side in grid:
        sw, sh = side * height / width, side
        for y in (np.linspace(0, 1 - sh, ny) if ny > 1 else [(1 - sh) / 2]):
            for x in (np.linspace(0, 1 - sw, nx) if nx > 1 else [(1 - sw) / 2]):
                out.append((round(float(x), 4), round(float(y), 4), round(float(x + sw), 4),
                            round(float(y + sh), 4)))
    if centre:
        side = min(width, height)
        x0, y0 = (width - side) / 2 / width, (height - side) / 2 / height
        out.append((round(x0, 4), round(y0, 4), round(1 - x0, 4), round(1 - y0, 4)))
    return out


def window_input(rgb: np.ndarray, box: tuple[float, float, float, float], size: int = 224) -> np.ndarray:
    """One window (fractions) of a frame (RGB uint8 [H, W, 3]) as a model input, RGB uint8 [size, size, 3]."""
    import cv2

    h, w = rgb.shape[:2]
    x0, y0 = int(round(box[0] * w)), int(round(box[1] * h))
    x1, y1 = max(x0 + 1, int(round(box[2] * w))), max(y0 + 1, int(round(box[3] * h)))
    crop = rgb[y0:y1, x0:x1]
    interp = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def fuse(kept: list, windows: list[tuple[tuple, list]], k: int) -> tuple[list, tuple | None, float]:
    """Each item's score in the kept framing plus its best score over the windows, halved; first ``k``.

    ``kept``: matches (``index.Match``: ``id``, ``score``) of the kept framing; ``windows``: (box, matches)
    per window, each list best first. An item missing from a list gets that list's lowest score (the most it
    can have there). Returns the fused matches (their ``score`` the fused one), the window whose score
    counted for the first match (None without windows) and how much that window's score for it exceeds the
    kept framing's (0.0 without windows).
    """
    from dataclasses import replace

    def table(matches: list) -> tuple[dict, float]:
        return {m.id: m for m in matches}, min((m.score for m in matches), default=0.0)

    k_tab, k_floor = table(kept)
    w_tabs = [(box, *table(ms)) for box, ms in windows]
    items = dict(k_tab)
    for _, tab, _ in w_tabs:
        for i, m in tab.items():
            items.setdefault(i, m)
    fused = []
    for i, m in items.items():
        sk = k_tab[i].score if i in k_tab else k_floor
        per_window = [(tab[i].score if i in tab else floor, n) for n, (_, tab, floor) in enumerate(w_tabs)]
        sw, box = max(per_window) if per_window else (sk, -1)
        fused.append((replace(m, score=(sk + sw) / 2), box, sw - sk))
    fused.sort(key=lambda mb: -mb[0].score)
    fused = fused[:k]
    if not fused or fused[0][1] < 0:
        return [m for m, _, _ in fused], None, 0.0
    return [m for m, _, _ in fused], w_tabs[fused[0][1]][0], float(fused[0][2])


def search_mean(bundle, a: np.ndarray, b: np.ndarray, k: int) -> list:
    """Matches scored by the mean of two embeddings' cosine scores (as ``fuse`` scores one window), with one
    search: the mean score is the cosine with the mean vector times its length. ``a``, ``b``: float32 [dim],
    L2-normalised."""
    from dataclasses import replace

    m = (np.asarray(a, np.float32) + np.asarray(b, np.float32)) / 2
    n = float(np.linalg.norm(m))
    if n <= 1e-6:
        return list(bundle.search(a, k))
    return [replace(x, score=x.score * n) for x in bundle.search(m / n, k)]


def hint(top_score: float | None, region: tuple | None, target: tuple, gain: float = 0.0) -> str | None:
    """The guide's sentence, or None: when the best match is weak, or when it was found in a window outside
    the target box that frames it clearly better than the box does (``gain``, from ``fuse``). No matches at
    all (no catalog loaded, or an empty one) is not the holder's fault: no hint."""
    if top_score is None:
        return None
    if top_score < HINT_SCORE:
        return HINT
    if region is not None and gain >= HINT_GAIN:
        cx, cy = (region[0] + region[2]) / 2, (region[1] + region[3]) / 2
        if not (target[0] <= cx <= target[2] and target[1] <= cy <= target[3]):
            return HINT
    return None
