"""Read leases on memory-mapped bundle files: the kernel warns before another process writes one in place."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import queue
import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

# fcntl(2) commands (Linux); the fcntl module does not name all of them.
F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)
F_GETLEASE = getattr(fcntl, "F_GETLEASE", 1025)

_lock = threading.Lock()
_leases: set[Leases] = set()
_wakeups: queue.SimpleQueue = queue.SimpleQueue()   # put() is safe from a signal handler
_enabled = False
ENV = "PI_SEARCH_LEASES"


class LeaseBusy(OSError):
    """A file is open for writing by another process right now (a copy in progress)."""


def enable() -> bool:
    """Handle lease breaks in this process (call once, from the main thread, before ``take``).

    The kernel signals a lease break with SIGIO, whose default action ends the process: only a process that
    called this may take leases. Returns False where leases cannot work (no SIGIO, not the main thread) or
    are turned off (``PI_SEARCH_LEASES=0`` in the environment: a file system whose leases misbehave).
    """
    global _enabled
    if _enabled:
        return True
    if os.environ.get(ENV, "").strip().lower() in ("0", "off", "no", "false"):
        log.info("read leases are off (%s); bundles are served from private copies", ENV)
        return False
    if not hasattr(signal, "SIGIO") or threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGIO, lambda _signum, _frame: _wakeups.put(None))
    threading.Thread(target=_dispatch, name="pi-search-leases", daemon=True).start()
    _enabled = True
    return True


def enabled() -> bool:
    return _enabled


def _dispatch() -> None:
    while True:
        _wakeups.get()
        with _lock:
            held = list(_leases)
        for lease in held:
            if lease.breaking():
                try:
                    lease.on_break(lease)
                except Exception:  # a failing callback must not stop the others from being told
                    log.exception("handling a lease break failed")
                finally:
                    lease.release()


class Leases:
    """Read leases on ``paths``: ``on_break(self)`` runs (in a helper thread) when another process opens one
    of them for writing or truncates it; that process waits until ``release`` (or the kernel's
    lease-break-time, 45 s by default), so the callback must stop every read of the files and return.

    Files whose lease the kernel refuses (another owner without CAP_LEASE, a file system without leases) are
    listed in ``unguarded``; LeaseBusy if a file is open for writing now.
    """

    def __init__(self, paths: Iterable[Path], on_break: Callable[[Leases], None]):
        self.on_break = on_break
        self.unguarded: list[Path] = []
        self._fds: list[int] = []
        try:
            for path in paths:
                self._take(Path(path))
        except BaseException:
            self.release()
            raise
        if self._fds:
            with _lock:
                _leases.add(self)

    def _take(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.fcntl(fd, F_SETLEASE, fcntl.F_RDLCK)
        except OSError as exc:
            os.close(fd)
            if exc.errno == errno.EAGAIN:
                raise LeaseBusy(exc.errno, f"{path} is open for writing by another process") from None
            self.unguarded.append(path)
            return
        self._fds.append(fd)

    def breaking(self) -> bool:
        """True once another process asked to write one of the files."""
        for fd in list(self._fds):
            try:
                if fcntl.fcntl(fd, F_GETLEASE) != fcntl.F_RDLCK:
                    return True
            except OSError:
                return True
        return False

    def held(self) -> bool:
        """True while every lease is still held and no other process has asked to write a file."""
        return bool(self._fds) and not self.breaking()

    def release(self) -> None:
        """Give the leases back (the waiting writer goes on). Safe to call twice."""
        with _lock:
            _leases.discard(self)
            fds, self._fds = self._fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
