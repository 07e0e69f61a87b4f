"""Frame sources behind one small protocol, chosen by a spec string: picamera2, opencv:N|PATH, folder:DIR.

Each module here may define ``BaseSource`` subclasses with a ``kind``; they register themselves when the
module is loaded, and every module of this package is loaded here (a new camera is one module).
"""

from __future__ import annotations

import importlib
import logging
import pkgutil

from ..errors import SourceError
from .source import SOURCES, BaseSource, Frame, FrameSource

__all__ = ["BaseSource", "Frame", "FrameSource", "SOURCES", "known_specs", "open_source"]

log = logging.getLogger(__name__)

_SHARED = {"source", "guard"}   # plumbing, not sources


def _load_all() -> None:
    """Import every source module of this package (each registers its sources when they are defined)."""
    for mod in pkgutil.iter_modules(__path__):
        if mod.name not in _SHARED and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


_load_all()


def known_specs() -> str:
    """How every registered source is written: "picamera2, opencv:N (webcam), ... or folder:DIR (images)"."""
    parts = [f"{spec} ({what})" if what else spec
             for cls in sorted(SOURCES.values(), key=lambda c: c.rank) for spec, what in cls.specs]
    return ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else "".join(parts)


def open_source(spec: str, *, width: int = 640, height: int = 480, fps: float = 15.0,
                loop: bool = True) -> FrameSource:
    """A frame source (not yet started) for ``spec``.

    ``picamera2``: the Pi camera; ``opencv:N``: USB webcam number N; ``opencv:PATH``: a video file;
    ``folder:DIR``: replays the images of DIR in name order at ``fps``; any other registered ``KIND:ARG``.
    ``width`` x ``height`` is the frame size asked from cameras (replays are shrunk to fit it).
    """
    kind, _, arg = spec.partition(":")
    cls = SOURCES.get(kind)
    source = cls.from_spec(arg, width=width, height=height, fps=fps, loop=loop) if cls else None
    if source is None:
        raise SourceError(f"unknown source {spec!r}: use {known_specs()}")
    return source
