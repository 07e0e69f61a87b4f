"""Runs the app under waitress: bind, serve in the calling thread, close (bootstrap owns the signals)."""

from __future__ import annotations

import errno
import logging
import socket

from ..errors import PiSearchError
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


def listen(app, *, host: str, port: int, max_viewers: int):
    """A waitress server for ``app`` bound to host:port, not serving yet; a busy port raises PiSearchError
    (one line, no traceback) before anything starts."""
    try:
        return make_server(app, host=host, port=port, max_viewers=max_viewers,
                           max_body_bytes=max_body_bytes(app))
    except OSError as exc:
        raise bind_error(host, port, exc) from None


def url_of(server, host: str) -> str:
    """The page's address on ``server`` (the port it really bound, for ``port=0``)."""
    return f"http://{_url_host(host)}:{server.effective_port}/"


def serve(server, url: str) -> None:
    """Answer requests in this thread until the server is closed or an exception (a signal handler's
    SystemExit) ends the loop."""
    log.info("serving on %s (%s threads per lane, at most %d connections)", url,
             server.task_dispatcher.sizes(), server.max_connections)
    server.run()


def close(server) -> None:
    """Stop the request threads (open previews end once the frame loop stops) and the listening socket."""
    try:
        server.task_dispatcher.shutdown(timeout=1.0)
        server.close()
    except Exception as exc:  # closing on shutdown must not mask the exit
        log.warning("closing the server: %s", exc)


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
