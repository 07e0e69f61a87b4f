"""Runs the app under waitress in the main thread; SIGTERM/SIGINT stop it, SIGHUP reloads the bundle."""

from __future__ import annotations

import logging
import signal
import threading

from .. import notify

log = logging.getLogger(__name__)


def server_options(app) -> dict:
    """waitress settings: a body larger than the upload limit is refused before it is buffered to disk."""
    limit = app.config.get("MAX_CONTENT_LENGTH") or 8 * 1024 * 1024
    return {"channel_timeout": 30, "ident": "pi-search", "max_request_body_size": limit + 64 * 1024,
            "connection_limit": 200}


def run(app, service, *, host: str, port: int, threads: int) -> None:
    """Serve ``app`` on host:port until SIGTERM or SIGINT; then stop ``service`` (closing the camera).

    Tells systemd READY=1 once the socket is bound and the worker runs, STOPPING=1 on the way out.
    """
    from waitress import create_server

    server = create_server(app, host=host, port=port, threads=threads, **server_options(app))
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
    notify.ready(f"serving on http://{host}:{server.effective_port}/")
    service.start()
    log.info("serving on http://%s:%s/ (%d threads)", host, server.effective_port, threads)
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


def _reload(service) -> None:
    """SIGHUP: map the bundle rebuilt in place; a broken one is logged and the old one keeps serving."""
    from ..errors import PiSearchError

    try:
        info = service.reload_bundle()
        log.warning("SIGHUP: bundle reloaded, %d items (built %s)", info["items"], info["created"])
    except PiSearchError as exc:
        log.error("SIGHUP: keeping the bundle in use: %s", exc)
    except Exception:  # a reload must never take the daemon down
        log.exception("SIGHUP: reloading the bundle failed; keeping the bundle in use")
