"""When to fold the changes into a new bundle: on request, after enough changes, or on a schedule."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Compaction:
    """Runs ``fold`` (``compact.compact`` then a reload; returns its report) at most once at a time.

    ``after`` pending changes (0: never) or ``every_s`` seconds with pending changes (0: never) start it in a
    background thread; ``last`` is the last run's report or ``{"error"}``, with the time it ``finished``.
    """

    def __init__(self, fold: Callable[[], dict], *, after: int = 0, every_s: float = 0.0):
        self._fold = fold
        self.after = after
        self.every_s = every_s
        self.last: dict | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._since = time.monotonic()   # the last start (or creation): ``every_s`` counts from it

    def run(self) -> dict:
        """Fold now, in this thread; returns the compaction report (errors raised)."""
        self._since = time.monotonic()
        report = self._fold()
        self.last = {**report, "finished": time.time()}
        return report

    def start(self) -> bool:
        """Start ``run`` in a thread unless one runs; True if started."""
        with self._lock:
            if self.running:
                return False
            self._since = time.monotonic()
            self._thread = threading.Thread(target=self._run_quietly, name="pi-search-compact", daemon=True)
            self._thread.start()
            return True

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        """Wait for a background run to end (if one was started)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _run_quietly(self) -> None:
        try:
            self.run()
        except Exception as exc:  # the live catalog keeps serving; the changes stay in the store
            log.warning("background compaction failed: %s", exc)
            self.last = {"error": str(exc), "finished": time.time()}

    def after_change(self, pending: int) -> None:
        """A change was made and ``pending`` changes are not folded yet: start a run if ``after`` is
        reached."""
        if self.after and pending >= self.after:
            self.start()

    def tick(self, pending: int) -> None:
        """The watcher's turn: start a run when ``every_s`` has passed and changes are pending."""
        if self.every_s > 0 and time.monotonic() - self._since >= self.every_s and pending:
            self.start()
