"""SIGTERM as an ordinary exit for long commands, so their cleanup (finally blocks) runs."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

log = logging.getLogger(__name__)

EXIT_TERMINATED = 128 + signal.SIGTERM  # the shell's status for "terminated"


@contextlib.contextmanager
def terminate_as_exit():
    """While inside, SIGTERM raises SystemExit(143) in the main thread instead of killing the process.

    Temporary files and directories are then removed by the code's own ``finally`` blocks, as on Ctrl+C.
    Outside the main thread this does nothing (signals can only be handled there).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _on_term(signum, _frame):
        log.warning("%s: stopping and cleaning up", signal.Signals(signum).name)
        raise SystemExit(EXIT_TERMINATED)

    old = signal.signal(signal.SIGTERM, _on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
