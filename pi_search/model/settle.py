"""The settled look at a still scene (windows over the whole frame, fused with the kept framing) and the
guide shown on the preview (docs/hard-shots.md)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

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




def fuse(kept: list, windows: list[tuple[tuple, list]], k: int) -> tuple[list, tuple | None, float]:
    """Each item's score in the kept framing plus its best score over the windows, halved; first ``k``.

    ``kept``: matches (``index.Match``: ``id``, ``score``) of the kept framing; ``windows``: (box, matches)
    per window, each list best first. An item missing from a list gets that list's lowest score (the most it
    can have there). Returns the fused matches (their ``score`` the fused one), the window whose score
    counted for the first match (None without windows) and how much that window's score for it exceeds the
    kept framing's (0.0 without windows).
    """
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


def one_generation(*lists: list) -> bool:
    """True when every match in ``lists`` was found in the same bundle (``Match.generation``)."""
    return len({getattr(m, "generation", 0) for ms in lists for m in ms}) <= 1


def search_mean(bundle, a: np.ndarray, b: np.ndarray, k: int) -> list:
    """Matches scored by the mean of two embeddings' cosine scores (as ``fuse`` scores one window), with one
    search: the mean score is the cosine with the mean vector times its length. ``a``, ``b``: float32 [dim],
    L2-normalised."""
    if hasattr(bundle, "search_mean"):   # a bundle or the live catalog: the mean in its stored rows' space
        return list(bundle.search_mean(np.stack([a, b]), k))
    m = (np.asarray(a, np.float32) + np.asarray(b, np.float32)) / 2
    n = float(np.linalg.norm(m))
    if n <= 1e-6:
        return list(bundle.search(a, k))
    return [replace(x, score=x.score * n) for x in bundle.search(m / n, k)]


def thresholds(manifest) -> tuple[float, float]:
    """(HINT_SCORE, HINT_GAIN) for a bundle's scores: a bundle with a learned projection carries its own
    (``learn.catalog.calibrate``: its cosines run lower than the model's own); None or none: the defaults."""
    learned = getattr(manifest, "learned", None) or {}
    return float(learned.get("hint_score", HINT_SCORE)), float(learned.get("hint_gain", HINT_GAIN))


# The page's words for a match and its bar, on the model's own cosines (web/static/common.js): the bar's
# empty end, "Possible match", "Good match", "Strong match", the bar's full end.
LIKENESS = (0.15, 0.4, 0.5, 0.65, 0.85)


def likeness(manifest) -> list[float]:
    """``LIKENESS`` for a bundle's scores: a bundle with a learned projection carries its own, calibrated
    like the guide's thresholds (``learn.catalog.calibrate``); None or none: the model's own."""
    learned = getattr(manifest, "learned", None) or {}
    scale = learned.get("likeness")
    return [float(x) for x in scale] if scale and len(scale) == len(LIKENESS) else list(LIKENESS)


def hint(top_score: float | None, region: tuple | None, target: tuple, gain: float = 0.0,
         limits: tuple[float, float] = (HINT_SCORE, HINT_GAIN)) -> str | None:
    """The guide's sentence, or None: when the best match is weak, or when it was found in a window outside
    the target box that frames it clearly better than the box does (``gain``, from ``fuse``). No matches at
    all (no catalog loaded, or an empty one) is not the holder's fault: no hint."""
    if top_score is None:
        return None
    if top_score < limits[0]:
        return HINT
    if region is not None and gain >= limits[1]:
        cx, cy = (region[0] + region[2]) / 2, (region[1] + region[3]) / 2
        if not (target[0] <= cx <= target[2] and target[1] <= cy <= target[3]):
            return HINT
    return None
