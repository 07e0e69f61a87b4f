"""Staff relearning the served bundle: `pi-search index relearn` in a process of its own, progress read."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

_TOTAL = re.compile(r"relearning from views of (\d+) items")
_DONE = re.compile(r"relearned from (\d+)/(\d+) items")
TAIL_LINES = 20   # the last lines of its output kept, for an error


class RelearnJob:
    """At most one relearn at a time; ``status`` says how far it is. ``on_done`` runs after a success (the
    catalog's reload: the new bundle generation is served)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._state = {"running": False, "done": 0, "total": 0, "error": None, "since": None,
                       "finished": None}

    def status(self) -> dict:
        with self._lock:
            return dict(self._state)

    def start(self, bundle_dir: Path, on_done=None, views: int | None = None) -> bool:
        """Start relearning ``bundle_dir`` unless a relearn runs; True if started. Never waits for it."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return False
            self._state = {"running": True, "done": 0, "total": 0, "error": None, "since": time.time(),
                           "finished": None}
            self._thread = threading.Thread(target=self._run, args=(Path(bundle_dir), on_done, views),
                                            name="pi-search-relearn", daemon=True)
            self._thread.start()
            return True

    def _set(self, **kw) -> None:
        with self._lock:
            self._state.update(kw)

    def _run(self, bundle_dir: Path, on_done, views: int | None) -> None:
        cmd = [sys.executable, "-c", "from pi_search.cli import main; main()", "index", "relearn",
               str(bundle_dir), "--threads", "1", *(["--views", str(views)] if views else [])]
        tail: list[str] = []
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
            for line in proc.stderr:
                tail = (tail + [line.rstrip()])[-TAIL_LINES:]
                if m := _TOTAL.search(line):
                    self._set(total=int(m.group(1)))
                elif m := _DONE.search(line):
                    self._set(done=int(m.group(1)), total=int(m.group(2)))
            code = proc.wait()
        except OSError as exc:
            self._set(running=False, error=f"could not start the relearn ({exc})", finished=time.time())
            return
        if code != 0:
            last = next((x for x in reversed(tail) if x.strip()), f"exit status {code}")
            log.warning("relearn of %s failed: %s", bundle_dir, last)
            self._set(running=False, error=last, finished=time.time())
            return
        try:
            if on_done is not None:
                on_done()
        except Exception as exc:  # the new generation is on disk; the daemon's own reload will find it
            log.warning("relearned %s, but reloading it failed: %s", bundle_dir, exc)
        log.info("relearned %s", bundle_dir)
        self._set(running=False, finished=time.time())
