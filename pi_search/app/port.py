"""The port the web talks to (``Appliance``) and what its implementation needs of the frame loop."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..live.catalog import LiveCatalog
from ..live.teaching import Teaching
from ..pipeline.result import LatestResult
from ..pipeline.stats import Stats


class FrameLoop(Protocol):
    """The frame loop as the appliance composes it (``pipeline.worker.Worker``): it alone owns the camera and
    publishes results; everything here is safe to call from request threads."""

    stats: Stats
    source_name: str

    @property
    def running(self) -> bool: ...   # False once stopping: waiting viewers and pollers leave

    @property
    def alive(self) -> bool: ...     # its thread runs

    @property
    def last_frame_time(self) -> float: ...   # time.time() of the last camera frame, 0.0 before the first

    def start(self) -> Any: ...
    def request_stop(self) -> None: ...
    def stop(self, timeout: float = 3.0) -> None: ...
    def latest(self) -> LatestResult | None: ...
    def recent(self, frame_id: int) -> LatestResult | None: ...
    def wait_for_result(self, after: LatestResult | None, timeout: float) -> LatestResult | None: ...
    def fps(self) -> float: ...
    def camera_state(self) -> tuple[bool, str]: ...
    def wedged(self) -> int: ...
    def driver_wedged(self) -> bool: ...


class Appliance(Protocol):
    """Everything the web uses of the running appliance, and nothing more.

    Results come from the frame loop (``latest``, ``recent``, ``wait_for_result``); ``search_image`` is the
    one look at an uploaded photo; ``catalog`` is the live catalog's read side and ``teaching`` what teaching
    items changes; errors are raised by type (``pi_search.errors``) and the web maps them to statuses.
    """

    @property
    def running(self) -> bool: ...   # False once the daemon is stopping

    @property
    def catalog(self) -> LiveCatalog: ...   # read side: serving, problem, manifest, len, thumbnail, search

    @property
    def teaching(self) -> Teaching: ...

    @property
    def stats(self) -> Stats: ...   # counters and stage histograms (/metrics, the status line)

    @property
    def source_name(self) -> str: ...

    @property
    def model_name(self) -> str | None: ...

    def latest(self) -> LatestResult | None: ...
    def recent(self, frame_id: int) -> LatestResult | None: ...
    def wait_for_result(self, after: LatestResult | None, timeout: float) -> LatestResult | None: ...
    def fps(self) -> float: ...
    def camera_state(self) -> tuple[bool, str]: ...

    def upload_slot(self, wait: float = 10.0) -> AbstractContextManager[None]:
        """One of the few upload slots (decoding and embedding a photo); Busy when none frees up in time."""
        ...

    def search_image(self, image: np.ndarray | Callable[[], np.ndarray], k: int | None = None
                     ) -> tuple[list, dict]:
        """Matches for a photo (RGB uint8 [H, W, 3], or a function decoding one) and timings in ms."""
        ...

    def health(self) -> dict:
        """Camera, model and index health (/healthz)."""
        ...

    def likeness(self) -> list[float]:
        """The score scale the page's words and bar use: the served bundle's own (a learned projection
        calibrates one) or the model's."""
        ...

    def reload_bundle(self) -> dict:
        """Map the bundle now in place: ``{"items", "created"}``; BundleRefused (the one in use keeps
        serving) or NoCatalog (none could be loaded)."""
        ...

    def install_bundle(self, staged: Path, allow_downgrade: bool = False) -> dict:
        """Install the bundle files gathered at ``staged`` as the served bundle (as ``index install``)."""
        ...

    def relearn(self) -> bool:
        """Start relearning the served bundle's projection in a process of its own; False if one runs."""
        ...

    def relearn_status(self) -> dict:
        """How far the relearn is: ``{"running", "done", "total", "error", "since", "finished"}``."""
        ...
