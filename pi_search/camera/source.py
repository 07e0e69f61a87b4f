"""The frame-source protocol, the frame type and the plumbing every source shares."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from ..errors import SourceError


@dataclass(frozen=True)
class Frame:
    """One captured frame.

    ``rgb``: RGB uint8 [H, W, 3] (rows may be strided views), read-only: shared, never copied.
    ``t``: wall-clock capture time (``time.time()``); ``index``: counts frames from 0 since ``start``.
    """

    rgb: np.ndarray
    t: float
    index: int


@runtime_checkable
class FrameSource(Protocol):
    """A camera or a replay. ``start`` opens it, ``read`` blocks until the next frame, ``stop`` closes it.

    Every failure (device gone, read error, end of a non-looping replay) raises ``SourceError``; ``stop`` is
    safe to call twice and after a failed ``start``. Sources are context managers (start on enter).
    """

    name: str

    def start(self) -> None: ...

    def read(self) -> Frame: ...

    def stop(self) -> None: ...

    def __enter__(self) -> FrameSource: ...

    def __exit__(self, *exc) -> None: ...


SOURCES: dict[str, type[BaseSource]] = {}   # spec kind -> source class, in the order they were defined


class BaseSource:
    """Shared plumbing: context manager, frame counter, pacing to a frame rate, read-only frames.

    A subclass with a ``kind`` registers itself: ``open_source("KIND:ARG")`` builds it with ``from_spec``;
    ``specs`` lists how its specs are written and what they are (``(("opencv:N", "webcam"), ...)``);
    ``rank`` orders the kinds where they are listed.
    """

    name = "source"
    kind: ClassVar[str] = ""
    specs: ClassVar[tuple[tuple[str, str], ...]] = ()
    rank: ClassVar[int] = 100

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.kind:
            SOURCES[cls.kind] = cls

    @classmethod
    def from_spec(cls, arg: str, *, width: int, height: int, fps: float, loop: bool) -> BaseSource | None:
        """The source for ``KIND:arg`` (not yet started), or None when ``arg`` does not fit this kind."""
        raise NotImplementedError

    def __init__(self, fps: float = 15.0):
        self.fps = float(fps)
        self._count = 0
        self._next_due = 0.0

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def _pace(self) -> None:
        """Sleep until the next frame is due at ``fps`` (replays; cameras pace themselves)."""
        now = time.monotonic()
        if self._next_due > now:
            time.sleep(self._next_due - now)
            now = self._next_due
        # Never build up a backlog: a slow consumer gets the next frame at once, then the normal rate.
        self._next_due = max(now, self._next_due) + 1.0 / self.fps

    def _frame(self, rgb: np.ndarray, t: float | None = None) -> Frame:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise SourceError(f"{self.name}: expected an RGB uint8 [H, W, 3] frame, got {rgb.dtype} "
                              f"{rgb.shape}")
        rgb.flags.writeable = False  # shared by the worker and the preview: never written, never copied
        f = Frame(rgb, time.time() if t is None else t, self._count)
        self._count += 1
        return f
