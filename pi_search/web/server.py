"""Runs the app under waitress in the main thread; SIGTERM/SIGINT stop it, SIGHUP reloads the bundle."""

from __future__ import annotations

import errno
import logging
import signal
import socket
import threading
from collections.abc import Callable

from ..errors import PiSearchError
from ..ops import notify
from .errors import FORM_BYTES
from .http import adjustments, make_server

log = logging.getLogger(__name__)


def max_body_bytes(app) -> int:
    """A body larger than the upload limit (plus the form's own bytes) is refused before it is buffered."""
    limit = app.config.get("MAX_CONTENT_LENGTH") or 8 * 1024 * 1024
    return limit + FORM_BYTES


def server_options(app) -> dict:
    """waitress settings (for a plain ``waitress.create_server``); ``run`` adds lanes and eviction."""
    return adjustments(max_body_bytes(app))


def bind_error(host: str, port: int, exc: OSError) -> PiSearchError:
    """The one-line error for an address that cannot be bound."""
    if exc.errno == errno.EADDRINUSE:
        return PiSearchError(f"{host}:{port} is already in use (another pi-search?); pass --port N or stop "
                             f"the other program (ss -ltnp 'sport = :{port}')")
    if exc.errno == errno.EACCES:
        return PiSearchError(f"{host}:{port}: permission denied; use a port above 1023 (--port N)")
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(exc, socket.gaierror):
        return PiSearchError(f"{host}:{port}: not an address of this machine; pass --host 127.0.0.1")
    return PiSearchError(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


def check_address(host: str, port: int) -> None:
    """Raise the one-line error now if host:port cannot be bound (before the model loads for seconds)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
            sock.bind(addr)
    except OSError as exc:
        raise bind_error(host, port, exc) from None


def run(app, service, *, host: str, port: int, max_viewers: int,
        on_serving: Callable[[str], None] | None = None) -> None:
    """Serve ``app`` on host:port until SIGTERM or SIGINT; then stop ``service`` (closing the camera).

    Tells systemd READY=1 once the socket is bound and the worker runs, STOPPING=1 on the way out;
    ``on_serving(url)`` is called then too. A busy port raises PiSearchError (one line, no traceback).
    """
    try:
        server = make_server(app, host=host, port=port, max_viewers=max_viewers,
                             max_body_bytes=max_body_bytes(app))
    except OSError as exc:
        raise bind_error(host, port, exc) from None
    stopping = threading.Event()

    def _on_signal(signum, _frame):
        if stopping.is_set():
            return
        stopping.set()
        log.info("%s: stopping", signal.Signals(signum).name)
        service.request_stop()  # open previews and long polls end now, so the server threads finish at once
        raise SystemExit(0)

    def _on_hangup(_signum, _frame):
        threading.Thread(target=_reload, args=(service,), name="pi-search-reload", daemon=True).start()

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    old[signal.SIGHUP] = signal.signal(signal.SIGHUP, _on_hangup)
    # READY=1 first: the socket is bound and the model and the bundle are loaded; the worker's watchdog pings
    # then follow it, never precede it.
    url = f"http://{_url_host(host)}:{server.effective_port}/"
    notify.ready(f"serving on {url}")
    service.start()
    log.info("serving on %s (%s threads per lane, at most %d connections)", url,
             server.task_dispatcher.sizes(), server.max_connections)
    if on_serving is not None:
        on_serving(url)
    try:
        server.run()
    except SystemExit:
        pass
    finally:
        stopping.set()
        notify.stopping("closing the camera")
        service.stop(timeout=2.5)
        try:
            server.task_dispatcher.shutdown(timeout=1.0)  # viewers end once the service stops
            server.close()
        except Exception as exc:  # closing on shutdown must not mask the exit
            log.warning("closing the server: %s", exc)
        for s, h in old.items():
            signal.signal(s, h)
        log.info("stopped")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def machine_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback, one per interface that has one (Linux; else [])."""
    import fcntl
    import struct

    siocgifaddr = 0x8915  # Linux ioctl: the IPv4 address of the named interface
    found: list[str] = []
    try:
        names = [name for _, name in socket.if_nameindex()]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for name in names:
                try:
                    packed = fcntl.ioctl(sock.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
                except OSError:  # no IPv4 address on this interface
                    continue
                addr = socket.inet_ntoa(packed[20:24])
                if not addr.startswith("127.") and addr not in found:
                    found.append(addr)
    except OSError:
        return []
    return found


def page_urls(url: str) -> list[str]:
    """Where to open the page served at ``url``: ``url`` itself, or for a bind to every address (0.0.0.0,
    ::) http://127.0.0.1:PORT/ on this machine and then this machine's other addresses (for a phone)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.hostname not in ("0.0.0.0", "::", ""):
        return [url]
    return [f"http://{host}:{parts.port}/" for host in ("127.0.0.1", *machine_addresses())]


def _reload(service) -> None:
    """SIGHUP: map the bundle rebuilt in place; a broken one is logged and the old one keeps serving."""
    try:
        info = service.reload_bundle()
        log.warning("SIGHUP: bundle reloaded, %d items (built %s)", info["items"], info["created"])
    except PiSearchError as exc:
        log.error("SIGHUP: keeping the bundle in use: %s", exc)
    except Exception:  # a reload must never take the daemon down
        log.exception("SIGHUP: reloading the bundle failed; keeping the bundle in use")
