"""Frame sources behind one small protocol, chosen by a spec string: picamera2, opencv:N|PATH, folder:DIR."""

from __future__ import annotations

import logging

from ..errors import SourceError
from .files import FolderSource
from .opencv import OpenCVSource
from .picam import PicameraSource
from .source import BaseSource, Frame, FrameSource

__all__ = ["BaseSource", "Frame", "FrameSource", "open_source"]

log = logging.getLogger(__name__)


def open_source(spec: str, *, width: int = 640, height: int = 480, fps: float = 15.0,
                loop: bool = True) -> FrameSource:
    """A frame source (not yet started) for ``spec``.

    ``picamera2``: the Pi camera; ``opencv:N``: USB webcam number N; ``opencv:PATH``: a video file;
    ``folder:DIR``: replays the images of DIR in name order at ``fps``. ``width`` x ``height`` is the frame
    size asked from cameras (replays are shrunk to fit it).
    """
    kind, _, arg = spec.partition(":")
    if kind == "picamera2":
        return PicameraSource(width=width, height=height, fps=fps)
    if kind == "opencv" and arg:
        return OpenCVSource(arg, width=width, height=height, fps=fps, loop=loop)
    if kind == "folder" and arg:
        return FolderSource(arg, width=width, height=height, fps=fps, loop=loop)
    raise SourceError(f"unknown source {spec!r}: use picamera2, opencv:N (webcam), opencv:PATH (video file) "
                      "or folder:DIR (images)")
