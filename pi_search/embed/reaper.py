"""Ends what a run started (a local Ray instance) as soon as the run's process is gone, however it ended.

Ray's core processes share the fate of the process that started them, but its dashboard and runtime-env
processes notice a killed run only a minute or more later. ``watch()`` starts a small watcher process that
notes the run's descendants every ``PERIOD_S`` and, once the run's process has ended (its pipe
closes: exit, crash or SIGKILL), ends those still running (SIGTERM, then SIGKILL after ``GRACE_S``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

PERIOD_S = 0.5
GRACE_S = 3.0


def _table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time in clock ticks) of every process (Linux /proc)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(d.name)] = (int(fields[1]), fields[19])
        except (OSError, IndexError, ValueError):
            continue
    return out


def _descendants(root: int, table: dict[int, tuple[int, str]]) -> dict[int, str]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid != os.getpid():
            found[pid] = table[pid][1]
        todo.extend(children.get(pid, []))
    return found


def _still(known: dict[int, str]) -> list[int]:
    table = _table()
    return [pid for pid, start in known.items() if pid in table and table[pid][1] == start]


def _serve(root: int) -> None:
    """The watcher: note ``root``'s descendants until stdin closes, then end the ones still running."""
    known: dict[int, str] = {}
    closed = threading.Event()

    def wait_eof():
        try:
            sys.stdin.buffer.read()
        finally:
            closed.set()

    threading.Thread(target=wait_eof, daemon=True).start()
    while not closed.wait(PERIOD_S):
        known.update(_descendants(root, _table()))
    left = _still(known)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        end = time.monotonic() + GRACE_S
        while left and time.monotonic() < end:
            time.sleep(0.1)
            left = _still(known)
        if not left:
            break


def watch() -> subprocess.Popen | None:
    """Start the watcher for this process (Linux only; None elsewhere). Keep the returned handle: closing its
    stdin (``stop``) or this process ending lets it clean up and exit."""
    if not Path("/proc/self/stat").exists():
        return None
    return subprocess.Popen([sys.executable, __file__, str(os.getpid())], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            close_fds=True)


def stop(watcher: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """This run is over: the watcher ends what is left of it now, and exits."""
    if watcher is None:
        return
    try:
        watcher.stdin.close()
        watcher.wait(timeout)
    except (OSError, subprocess.TimeoutExpired):
        log.warning("the clean-up watcher (pid %d) did not finish in %.0f s", watcher.pid, timeout)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
