"""``Kiosk``: the one implementation of the web port: the frame loop, live catalog and uploads composed."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..bundle.trust import Trust
from ..errors import BundleError, BundleRefused, Busy, NoCatalog
from ..live.teaching import Teaching
from ..model import look as looking
from ..model import settle as settling
from ..model.extractor import Extractor
from ..updates import install as updates
from . import health
from .port import FrameLoop
from .relearn import RelearnJob

log = logging.getLogger(__name__)

UPLOAD_SLOTS = 2   # photos decoded and embedded at once (bounds the memory and CPU uploads take)


class Kiosk:
    """The running appliance as the web sees it (``port.Appliance``).

    ``loop`` runs the frames (``pipeline.worker.Worker``; only it touches the camera); ``catalog`` is the live
    catalog it searches; ``extractor`` the model both share (its lock serialises inference, so an upload
    waits for the model at most one frame's inference, never for the frame loop). Uploads, health, reloads,
    bundle installs and relearning are served here, on request threads, without going through the loop.
    """

    def __init__(self, loop: FrameLoop, catalog, extractor, config, *, embed_query: Callable | None = None):
        self.loop = loop
        self.config = config
        self.extractor = extractor
        self._catalog = catalog
        self.embed_query = embed_query
        self._upload_slots = threading.BoundedSemaphore(UPLOAD_SLOTS)
        self._reload_lock = threading.Lock()
        self._relearning = RelearnJob()

    # ------------------------------------------------------------ the frame loop's read side
    @property
    def running(self) -> bool:
        return self.loop.running

    @property
    def stats(self):
        return self.loop.stats

    @property
    def source_name(self) -> str:
        return self.loop.source_name

    @property
    def model_name(self) -> str | None:
        return getattr(self.extractor, "name", None)

    def latest(self):
        return self.loop.latest()

    def recent(self, frame_id: int):
        return self.loop.recent(frame_id)

    def wait_for_result(self, after, timeout: float):
        return self.loop.wait_for_result(after, timeout)

    def fps(self) -> float:
        return self.loop.fps()

    def camera_state(self) -> tuple[bool, str]:
        return self.loop.camera_state()

    # ------------------------------------------------------------ the catalog
    @property
    def catalog(self):
        return self._catalog

    @property
    def teaching(self) -> Teaching:
        return self._catalog.teaching   # the one teaching service (live/teaching.py)

    def health(self) -> dict:
        return health.report(self.loop, self.extractor, self._catalog)

    def likeness(self) -> list[float]:
        return settling.likeness(getattr(self._catalog, "manifest", None))

    def reload_bundle(self) -> dict:
        """Map the bundle now in the bundle's directory (after a rebuild); keep the old one if it is broken.

        The live catalog opens and checks the new bundle against the model first: a half-written or
        mismatched one raises BundleRefused and the bundle in use keeps serving (NoCatalog when there was none
        to keep). Searches already running finish on the old bundle (it is unmapped once the last of them
        drops it). Returns ``{"items", "created"}``.
        """
        with self._reload_lock:
            cat = self._catalog
            serving = cat.serving
            try:
                cat.reload(strict=True)
            except BundleError as exc:
                if serving:
                    raise BundleRefused(f"kept the bundle in use: {exc}") from exc
                raise NoCatalog(f"no bundle could be loaded, so there is still no catalog: {exc}") from exc
            created = cat.manifest.created if cat.manifest is not None else None
            log.info("bundle %s reloaded: %d items, built %s", cat.directory, len(cat), created)
            return {"items": len(cat), "created": created}

    def install_bundle(self, staged: Path, allow_downgrade: bool = False) -> dict:
        """Install the files gathered at ``staged`` as the configured bundle, checked as ``index install``
        checks it (signatures with ``[index] trusted_keys``, a self-check on a model of its own: the loop's
        is busy with frames); the watcher then maps it. Returns the install report."""
        config = self.config
        trust = Trust.from_paths(config.index.trusted_keys)
        extractor = Extractor(config.model.path or None, num_threads=1, runtime=config.model.runtime or None)
        trusted = trust.keys if trust else None
        return updates.install_bundle(staged, Path(config.index.bundle), trusted=trusted,
                                      allow_downgrade=allow_downgrade, extractor=extractor)

    def relearn(self) -> bool:
        cat = self._catalog
        return self._relearning.start(cat.directory, on_done=cat.reload)

    def relearn_status(self) -> dict:
        return self._relearning.status()

    # ------------------------------------------------------------ uploads
    @contextlib.contextmanager
    def upload_slot(self, wait: float = 10.0):
        """Hold one of the upload slots while a photo is decoded and embedded (bounds the memory and CPU that
        uploads take); ``Busy`` (HTTP 503) when none frees up within ``wait`` seconds."""
        if not self._upload_slots.acquire(timeout=wait):
            raise Busy("the appliance is busy with other uploads; try again in a moment")
        try:
            yield
        finally:
            self._upload_slots.release()

    def search_image(self, image: np.ndarray | Callable[[], np.ndarray], k: int | None = None
                     ) -> tuple[list, dict]:
        """Matches for an uploaded photo and timings in ms; never touches the camera.

        ``image`` is RGB uint8 [H, W, 3], or a function returning one (it decodes the upload): it is called
        only once an upload slot is held, so no more than two photos are ever decoded at once. The photo gets
        the look a still camera frame gets (``model.look``); others wait up to 10 s for a slot and then get
        ``Busy`` (HTTP 503).
        """
        with self.upload_slot():
            t0 = time.perf_counter()
            rgb = image() if callable(image) else image
            t1 = time.perf_counter()
            seen = looking.look(self.extractor, rgb, self.embed_query)   # as a still camera frame
            t2 = time.perf_counter()
            matches = looking.search(self._catalog, seen, k or self.config.index.top_k)[0]
            t3 = time.perf_counter()
        self.stats.add("uploads")
        return matches, {"decode": (t1 - t0) * 1000.0, "embed": (t2 - t1) * 1000.0,
                         "search": (t3 - t2) * 1000.0}
