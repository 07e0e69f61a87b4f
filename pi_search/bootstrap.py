"""The one composition root: builds the source, extractor, live catalog, worker and app from a config."""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask

from .bundle.trust import Trust
from .camera import open_source
from .config import Config, check_bind
from .errors import ConfigError
from .live import leases
from .live.catalog import LiveCatalog
from .model.extractor import Extractor
from .ops import limits
from .pipeline.worker import Worker
from .web import create_app
from .web.server import run

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


@dataclass
class Daemon:
    """The wired appliance: serve it with ``run``; ``close`` releases the catalog."""

    config: Config
    extractor: Extractor
    catalog: LiveCatalog
    worker: Worker
    app: Flask

    def run(self, on_serving: Callable[[str], None] | None = None) -> None:
        """Serve under waitress until SIGTERM/SIGINT; ``on_serving(url)`` once the page is served."""
        server = self.config.server
        try:
            with limits.out_of_memory_as_error("starting the server"):
                run(self.app, self.worker, host=server.host, port=server.port, max_viewers=server.max_viewers,
                    on_serving=on_serving)
        finally:
            self.close()

    def close(self) -> None:
        self.catalog.close()


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
    worker = Worker(source, extractor, catalog, config, source_name=cam.source)
    return Daemon(config, extractor, catalog, worker, create_app(worker, config))
