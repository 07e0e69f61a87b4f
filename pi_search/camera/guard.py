"""A frame source run in its own thread, so a start or a read that hangs cannot stall the worker."""

from __future__ import annotations

import logging
import queue
import threading
import time

from ..errors import SourceError

log = logging.getLogger(__name__)

_STOP = object()


class SourceHung(SourceError):
    """A camera call did not return within its timeout (a loose cable, a wedged driver)."""


class GuardedSource:
    """Wraps a FrameSource: ``start`` and ``read`` run in a reader thread and time out after ``timeout_s``.

    A call that times out raises ``SourceHung``; the reader thread is then left behind (it may still return
    later) and ``stuck`` stays True while it is blocked. ``stop`` never blocks longer than ``timeout_s``;
    ``abort`` wakes a waiting caller at once (shutdown).
    Frames pass through unchanged (RGB uint8 [H, W, 3], read-only).
    """

    def __init__(self, inner, timeout_s: float):
        self.inner = inner
        self.timeout_s = float(timeout_s)
        self.hung = False
        self.hung_since: float | None = None  # time.monotonic() when a call first timed out
        self._reply: queue.SimpleQueue | None = None
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=f"camera-reader {self.name}", daemon=True)
        self._thread.start()

    @property
    def name(self) -> str:
        return getattr(self.inner, "name", "source")

    @property
    def stuck(self) -> bool:
        """True while a call that timed out is still blocked inside the source."""
        return self.hung and self._thread.is_alive()

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            fn, reply = job
            try:
                reply.put((True, fn()))
            except BaseException as exc:  # handed to the caller, which decides
                reply.put((False, exc))

    def _call(self, fn, what: str):
        if self.hung:
            raise SourceHung(f"{self.name}: the camera stopped answering; reopening it")
        reply: queue.SimpleQueue = queue.SimpleQueue()
        self._reply = reply
        self._jobs.put((fn, reply))
        try:
            ok, value = reply.get(timeout=self.timeout_s)
        except queue.Empty:
            self.hung, self.hung_since = True, time.monotonic()
            raise SourceHung(f"{self.name}: {what} took over {self.timeout_s:g} s (camera hung or "
                             "disconnected); reopening it") from None
        if not ok:
            raise value
        return value

    def abort(self) -> None:
        """Make a ``start`` or ``read`` waiting in another thread raise SourceError now (shutting down)."""
        reply = self._reply
        if reply is not None:
            self.hung = True
            reply.put((False, SourceError(f"{self.name}: stopped")))

    def start(self) -> None:
        self._call(self.inner.start, "opening the camera")

    def read(self):
        return self._call(self.inner.read, "reading a frame")

    def stop(self) -> None:
        """Close the source; a hung one is closed from a helper thread, waiting at most ``timeout_s``."""
        if not self.hung:
            try:
                self._call(self.inner.stop, "closing the camera")
            except SourceHung:
                log.warning("%s: closing the camera hung; leaving it behind", self.name)
            finally:
                self._jobs.put(_STOP)
            return
        self._jobs.put(_STOP)
        closer = threading.Thread(target=self._stop_quietly, name=f"camera-closer {self.name}", daemon=True)
        closer.start()
        closer.join(min(self.timeout_s, 2.0))
        if closer.is_alive():
            log.warning("%s: closing the hung camera did not return; leaving it behind", self.name)

    def _stop_quietly(self) -> None:
        try:
            self.inner.stop()
        except Exception as exc:  # closing must never raise: the source is being abandoned anyway
            log.warning("%s: closing failed: %s", self.name, exc)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
