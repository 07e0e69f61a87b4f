"""Replays a folder of images as camera frames at a set rate (demo, tests, benchmarks)."""

from __future__ import annotations

import bisect
import logging
import os
import stat
from pathlib import Path

import numpy as np

from .. import images
from ..errors import ImageError, SourceError
from .source import BaseSource, Frame

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

    Frames are RGB uint8, shrunk to fit ``width`` x ``height``. Unreadable images are skipped with one
    warning each (again only once the file changes); a folder with no readable image raises SourceError.
    Every read checks the folder (one ``stat``): a folder removed or emptied while replaying raises
    SourceError on the next frame, with the same message ``start`` gives, so the camera shows as down (one
    log line) and comes back when the folder does. Files added or removed are picked up on the next frame.
    """

    kind = "folder"
    specs = (("folder:DIR", "images"),)
    rank = 2

    @classmethod
    def from_spec(cls, arg, *, width, height, fps, loop):
        return cls(arg, width=width, height=height, fps=fps, loop=loop) if arg else None

    def __init__(self, directory, *, width: int = 640, height: int = 480, fps: float = 15.0,
                 loop: bool = True):
        super().__init__(fps)
        self.directory = Path(directory)
        self.name = f"folder:{self.directory}"
        self.width, self.height, self.loop = int(width), int(height), bool(loop)
        self._paths: list[Path] = []
        self._stamp: tuple | None = None       # (device, inode, mtime) of the folder when last listed
        self._cache: dict[Path, np.ndarray] = {}
        self._cached_bytes = 0
        self._bad: dict[Path, tuple] = {}      # unreadable files (and their size, mtime) already warned about
        self._pos = 0
        self._running = False

    def _folder_stamp(self) -> tuple:
        """The folder's identity and mtime; SourceError when it is gone or not a folder."""
        try:
            st = os.stat(self.directory)
        except OSError:
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise SourceError(f"{self.directory}: no such folder of images for the folder: source")
        return (st.st_dev, st.st_ino, st.st_mtime_ns)

    def _scan(self) -> None:
        """List the folder's images (name order); SourceError when it is gone or holds none."""
        stamp = self._folder_stamp()
        try:
            paths = sorted(p for p in self.directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        except OSError as exc:
            raise SourceError(f"{self.directory}: cannot list the folder ({exc.strerror or exc})") from None
        if not paths:
            raise SourceError(f"{self.directory}: no images (JPEG, PNG, WebP) to replay")
        listed = set(paths)
        for gone in [p for p in self._cache if p not in listed]:
            self._cached_bytes -= self._cache.pop(gone).nbytes
        self._bad = {p: v for p, v in self._bad.items() if p in listed}
        if self._paths and self._pos < len(self._paths):  # carry on after the image shown last
            self._pos = bisect.bisect_left(paths, self._paths[self._pos])
        self._paths, self._stamp = paths, stamp

    def start(self) -> None:
        self._paths, self._pos = [], 0
        self._scan()
        self._pos, self._count, self._next_due = 0, 0, 0.0
        self._running = True
        log.info("replaying %d image(s) from %s at %.1f fps", len(self._paths), self.directory, self.fps)

    def _file_stamp(self, path: Path) -> tuple | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_size, st.st_mtime_ns)

    def _load(self, path: Path) -> np.ndarray | None:
        rgb = self._cache.get(path)
        if rgb is not None:
            return rgb
        stamp = self._file_stamp(path)
        if stamp is None or self._bad.get(path) == stamp:
            return None  # gone (the next listing drops it) or unreadable and unchanged since the warning
        try:
            rgb = images.read(path, min_side=max(self.width, self.height))  # decoded no larger than needed
            rgb = fit_within(rgb, self.width, self.height)
        except ImageError as exc:
            if self._file_stamp(path) is not None:
                log.warning("skipping %s", exc)
                self._bad[path] = stamp
            return None
        self._bad.pop(path, None)
        rgb = np.ascontiguousarray(rgb)
        rgb.flags.writeable = False
        if self._cached_bytes + rgb.nbytes <= CACHE_BYTES:
            self._cache[path] = rgb
            self._cached_bytes += rgb.nbytes
        return rgb

    def read(self) -> Frame:
        if not self._running:
            raise SourceError(f"{self.name}: read before start (or after stop)")
        if self._folder_stamp() != self._stamp:
            self._scan()
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
        self._folder_stamp()  # a folder removed during this pass says so rather than "none could be read"
        raise SourceError(f"{self.directory}: none of the images could be read")

    def stop(self) -> None:
        self._running = False
        self._cache.clear()
        self._cached_bytes = 0
