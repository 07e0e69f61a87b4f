"""Replays a folder of images as camera frames at a set rate (demo, tests, benchmarks)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import ImageError, SourceError
from . import BaseSource, Frame

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
CACHE_BYTES = 256 << 20  # decoded frames kept in memory; larger folders are decoded on each pass


def fit_within(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Shrink RGB uint8 [H, W, 3] to fit inside width x height, keeping the aspect ratio (never enlarges)."""
    import cv2

    h, w = rgb.shape[:2]
    scale = min(width / w, height / h)
    if scale >= 1.0:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


class FolderSource(BaseSource):
    """``folder:DIR``: the images of DIR (JPEG, PNG, WebP, BMP) in name order, ``fps`` frames per second.

    Frames are RGB uint8, shrunk to fit ``width`` x ``height``. Unreadable images are skipped with a
    warning; a folder with no readable image raises SourceError.
    """

    def __init__(self, directory, *, width: int = 640, height: int = 480, fps: float = 15.0,
                 loop: bool = True):
        super().__init__(fps)
        self.directory = Path(directory)
        self.name = f"folder:{self.directory}"
        self.width, self.height, self.loop = int(width), int(height), bool(loop)
        self._paths: list[Path] = []
        self._cache: dict[Path, np.ndarray] = {}
        self._cached_bytes = 0
        self._pos = 0
        self._running = False

    def start(self) -> None:
        if not self.directory.is_dir():
            raise SourceError(f"{self.directory}: no such folder of images for the folder: source")
        self._paths = sorted(p for p in self.directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._paths:
            raise SourceError(f"{self.directory}: no images (JPEG, PNG, WebP) to replay")
        self._pos, self._count, self._next_due = 0, 0, 0.0
        self._running = True
        log.info("replaying %d image(s) from %s at %.1f fps", len(self._paths), self.directory, self.fps)

    def _load(self, path: Path) -> np.ndarray | None:
        from .. import images

        rgb = self._cache.get(path)
        if rgb is not None:
            return rgb
        try:
            rgb = images.read(path, min_side=max(self.width, self.height))  # decoded no larger than needed
            rgb = fit_within(rgb, self.width, self.height)
        except ImageError as exc:
            log.warning("skipping %s", exc)
            return None
        rgb = np.ascontiguousarray(rgb)
        rgb.flags.writeable = False
        if self._cached_bytes + rgb.nbytes <= CACHE_BYTES:
            self._cache[path] = rgb
            self._cached_bytes += rgb.nbytes
        return rgb

    def read(self) -> Frame:
        if not self._running:
            raise SourceError(f"{self.name}: read before start (or after stop)")
        for _ in range(len(self._paths)):
            if self._pos >= len(self._paths):
                if not self.loop:
                    raise SourceError(f"{self.name}: end of the replay (set camera.loop = true to repeat)")
                self._pos = 0
            path = self._paths[self._pos]
            self._pos += 1
            rgb = self._load(path)
            if rgb is not None:
                self._pace()
                return self._frame(rgb)
        raise SourceError(f"{self.directory}: none of the images could be read")

    def stop(self) -> None:
        self._running = False
        self._cache.clear()
        self._cached_bytes = 0
