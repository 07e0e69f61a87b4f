"""systemd notifications (sd_notify) over the ``NOTIFY_SOCKET`` datagram socket; no-ops outside systemd."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def _address() -> str | None:
    """The socket address from ``NOTIFY_SOCKET``: a path, or ``@name`` for the abstract namespace."""
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr:
        return None
    if addr.startswith("@"):
        return "\0" + addr[1:]
    if addr.startswith("/"):
        return addr
    log.debug("NOTIFY_SOCKET=%r is not a unix socket address; notifications are off", addr)
    return None


def notify(state: str) -> bool:
    """Send one ``KEY=value`` message (lines separated by newlines) to systemd.

    Returns True when it was sent, False when not running under a notify unit. A failed send is logged,
    never raised: the service keeps working when systemd goes away.
    """
    addr = _address()
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(state.encode("utf-8"))
    except OSError as exc:
        log.warning("could not notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def ready(status_text: str | None = None) -> bool:
    """Tell systemd the service is up (after the model and the bundle are loaded)."""
    msg = "READY=1"
    if status_text:
        msg += "\nSTATUS=" + _one_line(status_text)
    return notify(msg)


def watchdog() -> bool:
    """Keep-alive ping for ``WatchdogSec=``; send it from the frame loop."""
    return notify("WATCHDOG=1")


def stopping(status_text: str | None = None) -> bool:
    """Tell systemd the service is shutting down."""
    msg = "STOPPING=1"
    if status_text:
        msg += "\nSTATUS=" + _one_line(status_text)
    return notify(msg)


def status(text: str) -> bool:
    """A one-line status shown by ``systemctl status``."""
    return notify("STATUS=" + _one_line(text))


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds from ``WATCHDOG_USEC`` (ping at least twice as often), or None.

    None when no watchdog is set, or when ``WATCHDOG_PID`` names another process.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 1_000_000


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
