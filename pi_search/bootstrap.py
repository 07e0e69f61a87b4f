"""The one composition root: builds the source, extractor, live catalog, worker, port and app from a config;
serves them with the signals (SIGTERM/SIGINT stop, SIGHUP reloads) and systemd notifications wired here."""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask

from .app import Appliance, Kiosk
from .bundle.trust import Trust
from .camera import open_source
from .config import Config, check_bind
from .errors import BundleRefused, ConfigError, PiSearchError
from .live import leases
from .live.catalog import LiveCatalog
from .model.extractor import Extractor
from .ops import limits, notify
from .pipeline.worker import Worker
from .web import create_app
from .web import server as http_server

log = logging.getLogger(__name__)


def single_threaded_blas() -> bool:
    """Run numpy's BLAS on one thread in this process; True if it could be set.

    The daemon's products are small (one query against a few thousand rows), and waking BLAS threads for each
    costs far more than it saves: on a busy 2-core machine a 10,000 x 256 product took 16 ms threaded and
    0.44 ms on one thread (bench/bench_taught.py).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        log.warning("threadpoolctl is missing: BLAS keeps its threads (slower searches on a busy machine)")
        return False
    threadpool_limits(limits=1, user_api="blas")
    return True


def open_catalog(config: Config, extractor: Extractor) -> LiveCatalog:
    """The bundle with its change store (taught items), watched for changes and for bundles put in place.

    A bundle that is missing, half-copied or broken does not stop the daemon: it serves nothing, says why on
    the page and /healthz, and maps a good bundle as soon as one is in place. The bundle's files are guarded
    with read leases, so copying over them in place lets the bundle go instead of crashing the process.
    """
    leases.enable()
    ix = config.index
    trust = Trust.from_paths(ix.trusted_keys)   # signed bundles only: a compaction here could not be signed
    return LiveCatalog.open(ix.bundle, extractor=extractor, compact_after=0 if trust else ix.compact_after,
                            compact_every_s=0.0 if trust else ix.compact_every_s, wait=True, guard=True,
                            trust=trust).watch()


def frame_loop(source_factory: Callable, extractor, catalog, config: Config, *,
               source_name: str = "") -> Worker:
    """The frame loop, its keep-alive going to systemd's watchdog (when the unit has one, WATCHDOG_USEC)."""
    return Worker(source_factory, extractor, catalog, config, source_name=source_name,
                  keepalive=notify.watchdog, keepalive_s=notify.watchdog_interval())


@dataclass
class Daemon:
    """The wired appliance: serve it with ``run``; ``close`` releases the catalog."""

    config: Config
    extractor: Extractor
    catalog: LiveCatalog
    worker: Worker
    appliance: Kiosk
    app: Flask

    def run(self, on_serving: Callable[[str], None] | None = None) -> None:
        """Serve under waitress until SIGTERM/SIGINT; ``on_serving(url)`` once the page is served."""
        server = self.config.server
        try:
            with limits.out_of_memory_as_error("starting the server"):
                serve(self.app, self.worker, self.appliance, host=server.host, port=server.port,
                      max_viewers=server.max_viewers, on_serving=on_serving)
        finally:
            self.close()

    def close(self) -> None:
        self.catalog.close()


def serve(app, worker: Worker, appliance: Appliance, *, host: str, port: int, max_viewers: int,
          on_serving: Callable[[str], None] | None = None) -> None:
    """Serve ``app`` on host:port in this (the main) thread until SIGTERM or SIGINT; then stop ``worker``
    (closing the camera). SIGHUP reloads the bundle (``appliance.reload_bundle``) meanwhile.

    Tells systemd READY=1 once the socket is bound, then starts the worker (its watchdog pings follow READY,
    never precede it), and STOPPING=1 on the way out; ``on_serving(url)`` is called once serving. A busy port
    raises PiSearchError (one line, no traceback) before any signal handler or thread is set up.
    """
    server = http_server.listen(app, host=host, port=port, max_viewers=max_viewers)
    stopping = threading.Event()

    def _on_signal(signum, _frame):
        if stopping.is_set():
            return
        stopping.set()
        log.info("%s: stopping", signal.Signals(signum).name)
        worker.request_stop()  # open previews and long polls end now, so the server threads finish at once
        raise SystemExit(0)

    def _on_hangup(_signum, _frame):
        threading.Thread(target=_reload, args=(appliance,), name="pi-search-reload", daemon=True).start()

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    old[signal.SIGHUP] = signal.signal(signal.SIGHUP, _on_hangup)
    try:
        url = http_server.url_of(server, host)
        notify.ready(f"serving on {url}")
        worker.start()
        if on_serving is not None:
            on_serving(url)
        http_server.serve(server, url)
    except SystemExit:
        pass
    finally:
        stopping.set()
        notify.stopping("closing the camera")
        worker.stop(timeout=2.5)
        http_server.close(server)
        for s, h in old.items():
            signal.signal(s, h)
        log.info("stopped")


def _reload(appliance: Appliance) -> None:
    """SIGHUP: map the bundle rebuilt in place; a broken one is logged and the old one keeps serving."""
    try:
        info = appliance.reload_bundle()
        log.warning("SIGHUP: bundle reloaded, %d items (built %s)", info["items"], info["created"])
    except BundleRefused as exc:
        log.error("SIGHUP: keeping the bundle in use: %s", exc.__cause__ or exc)
    except PiSearchError as exc:   # "no bundle could be loaded, so there is still no catalog: ..."
        log.error("SIGHUP: %s", exc)
    except Exception:  # a reload must never take the daemon down
        log.exception("SIGHUP: reloading the bundle failed; keeping the bundle in use")


def build_daemon(config: Config) -> Daemon:
    """Wire the concrete parts named by ``config``: check the bind, the memory the bundle needs against
    what this process may use, and the camera spec; load the model, open the live catalog (waiting for a
    good bundle if there is none yet), make the worker and the app. MemoryLimitError (one line, exit 3)
    when memory is short, before anything large is loaded."""
    with contextlib.suppress(OSError, ValueError, AttributeError):   # no stderr file: nothing to write to
        faulthandler.enable(sys.__stderr__)   # a crash in a native library leaves its stacks in the journal
    check_bind(config.server)  # a daemon open to the network needs a token
    if not config.index.bundle:
        raise ConfigError("no bundle to search: pass --bundle DIR or set [index] bundle in the config "
                          "(make one with: pi-search index build CATALOG --out DIR)")
    limits.cap_daemon()
    limits.check_start(limits.bundle_memory(config.index.bundle))
    with limits.out_of_memory_as_error("loading the model and the bundle"):
        return _wire(config)


def _wire(config: Config) -> Daemon:
    cam = config.camera

    def source():
        return open_source(cam.source, width=cam.width, height=cam.height, fps=cam.fps, loop=cam.loop)

    source()  # checks the spec now (opens nothing until started)
    extractor = Extractor(config.model.path or None, num_threads=config.model.threads,
                          runtime=config.model.runtime or None)
    single_threaded_blas()
    catalog = open_catalog(config, extractor)
    worker = frame_loop(source, extractor, catalog, config, source_name=cam.source)
    appliance = Kiosk(worker, catalog, extractor, config)
    return Daemon(config, extractor, catalog, worker, appliance, create_app(appliance, config))
