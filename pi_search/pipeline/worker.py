"""The worker: one thread owns the camera, the extractor and the index, and publishes the latest result."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from .. import images
from ..camera.guard import GuardedSource
from ..errors import PiSearchError, SourceError
from ..model import framing
from ..model import look as looking
from ..model import settle as settling
from .codes import StillCodes
from .gate import Gate
from .result import LatestResult
from .stabilise import Agreement, Smoother
from .stats import Stats

log = logging.getLogger(__name__)

MAX_HUNG_READS = 3  # abandoned camera reads still blocked after which the watchdog pings stop
WEDGED_RESTART_S = 60.0  # a camera read blocked this long stops the watchdog pings too
RECENT_FRAMES = 8  # published results whose JPEGs stay reachable by frame id (/frame.jpg?id=N)


class _TimedExtractor:
    """Wraps an Extractor to add up the time spent inside ``embed`` (the model) for one frame."""

    def __init__(self, extractor):
        self._x = extractor
        self.size = extractor.size
        self.dim = extractor.dim
        self.seconds = 0.0

    def embed(self, rgb224: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            return self._x.embed(rgb224)
        finally:
            self.seconds += time.perf_counter() - t0


class Worker:
    """The frame loop and its published state.

    ``source_factory()`` returns a fresh, unstarted FrameSource (called again after a failure, with backoff);
    ``extractor`` has ``.embed`` (RGB uint8 [size, size, 3] -> float32 [dim]); ``catalog`` is the live
    catalog (``live.catalog.LiveCatalog``: ``search(vector, k)``, ``manifest``). ``keepalive()`` is called
    from the loop at least every ``keepalive_s / 3`` seconds while frames or camera retries go on (the
    systemd watchdog; ``bootstrap`` wires it). Request threads only call the read side (``latest``,
    ``recent``, ``wait_for_result``, ``camera_state``, ``fps``); only the worker thread touches the source.
    """

    settle_enabled = True  # the settled look at the whole frame once the scene is still (``settle``)

    def __init__(self, source_factory: Callable, extractor, catalog, config, *, source_name: str = "",
                 embed_query: Callable | None = None, keepalive: Callable[[], object] | None = None,
                 keepalive_s: float | None = None):
        self.config = config
        self.source_factory = source_factory
        self.source_name = source_name
        self.extractor = extractor
        self.catalog = catalog
        self.embed_query = embed_query or framing.embed_query_image
        self.stats = Stats()
        self.gate = Gate(config.gate)
        self.smoother = Smoother(config.smoothing)
        self.agreement = Agreement(config.smoothing.agree)
        self._cond = threading.Condition()
        self._latest: LatestResult | None = None
        self._recent: deque[LatestResult] = deque(maxlen=RECENT_FRAMES)  # references, no copies
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._source = None
        self._camera_up = False
        self._camera_reason = "not started"
        self._last_frame_time = 0.0
        self._frame_times: deque[float] = deque(maxlen=60)
        self._keepalive = keepalive
        self._keepalive_s = keepalive_s if keepalive is not None else None
        self._last_ping = 0.0
        self._hung: list = []  # GuardedSources whose reader thread is still blocked in the driver
        self._wedged_logged = False
        self.started_time = time.time()
        self._settle_job: dict | None = None  # the settled look under way: last inferred vector, windows done
        self._region: tuple | None = None  # the settled look's window, used by each frame of the same item
        self._region_gain = 0.0  # how much better that window framed the first match than the target box
        self.codes = StillCodes()  # barcodes, read once the scene is still

    # ------------------------------------------------------------ lifecycle
    def start(self) -> Worker:
        if self._thread is not None:
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pi-search-worker", daemon=True)
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Start stopping without waiting: the worker leaves its loop, waiting viewers and pollers wake."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        src = self._source
        if src is not None and hasattr(src, "abort"):
            src.abort()  # a worker waiting on a hung camera returns at once

    def stop(self, timeout: float = 3.0) -> None:
        """Stop the worker and close the camera; wakes every waiting viewer. Safe to call twice."""
        self.request_stop()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
            if t.is_alive():
                log.warning("worker did not stop within %.1f s (blocked in a camera read); "
                            "closing the camera", timeout)
                self._close_source()
        self._thread = None
        self._set_camera(False, "stopped")

    @property
    def running(self) -> bool:
        return not self._stop.is_set()

    @property
    def alive(self) -> bool:
        """The loop's thread runs."""
        t = self._thread
        return t is not None and t.is_alive()

    @property
    def last_frame_time(self) -> float:
        """``time.time()`` of the last camera frame; 0.0 before the first."""
        return self._last_frame_time

    def _close_source(self) -> None:
        src, self._source = self._source, None
        if src is not None:
            try:
                src.stop()
            except Exception as exc:  # closing must not raise on shutdown
                log.warning("closing %s failed: %s", getattr(src, "name", "source"), exc)

    def _set_camera(self, up: bool, reason: str) -> None:
        if up != self._camera_up or reason != self._camera_reason:
            quiet = up or reason in ("stopped", "waiting for the first frame")
            (log.info if quiet else log.warning)("camera %s: %s", "up" if up else "down", reason)
        self._camera_up, self._camera_reason = up, reason

    def read_timeout(self) -> float:
        """Seconds a camera start or read may take before the camera counts as hung and is reopened."""
        cam = self.config.camera
        return max(cam.timeout_s, 3.0 / cam.fps)

    def wedged(self) -> int:
        """Camera reads abandoned after a timeout that are still blocked in the driver."""
        self._hung = [s for s in self._hung if s.stuck]
        return len(self._hung)

    def driver_wedged(self) -> bool:
        """True once ``MAX_HUNG_READS`` camera reads are blocked, or one for ``WEDGED_RESTART_S`` seconds.

        Reopening the camera no longer helps then: only a new process releases the device.
        """
        n = self.wedged()
        oldest = min((s.hung_since for s in self._hung if s.hung_since is not None), default=None)
        return n >= MAX_HUNG_READS or (oldest is not None and time.monotonic() - oldest > WEDGED_RESTART_S)

    def _ping(self) -> None:
        """Keep-alive (the systemd watchdog) from the worker loop.

        A stuck frame loop stops the pings, and so does a wedged camera driver (``driver_wedged``): systemd
        then restarts the daemon.
        """
        if self.driver_wedged():
            if not self._wedged_logged:
                self._wedged_logged = True
                log.error("%d camera read(s) never returned: stopping the watchdog pings so systemd restarts "
                          "the daemon", len(self._hung))
            return
        self._wedged_logged = False
        if self._keepalive_s and time.monotonic() - self._last_ping >= self._keepalive_s / 3:
            self._last_ping = time.monotonic()
            self._keepalive()

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            if self.wedged() >= MAX_HUNG_READS:  # no more reader threads for a wedged driver
                self._stop.wait(1.0)
                continue
            frames_before, src = self.stats.frames, None
            try:
                src = GuardedSource(self.source_factory(), self.read_timeout())
                self.source_name = getattr(src, "name", self.source_name)
                self._source = src
                src.start()
                self._set_camera(False, "waiting for the first frame")
                self._frames(src)
            except SourceError as exc:
                if self._stop.is_set():
                    break  # stop() woke a read: not a camera failure
                self.stats.add("source_errors")
                self._set_camera(False, str(exc))
            except Exception as exc:  # the worker never dies: report and retry
                self.stats.add("source_errors")
                log.exception("frame source failed")
                self._set_camera(False, f"{type(exc).__name__}: {exc}")
            finally:
                if src is not None and src.hung:
                    self._hung.append(src)
                self._close_source()
            if self._stop.is_set():
                break
            if self.stats.frames > frames_before:
                backoff = 0.5  # the camera worked for a while: retry soon again
            if self._camera_reason != "stopped":
                log.info("reopening the camera in %.1f s", backoff)
            self.gate.reset()
            self.smoother.reset()
            self.agreement.reset()
            self._ping()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)
        self._set_camera(False, "stopped")

    def _frames(self, src) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            frame = src.read()
            capture = time.perf_counter() - t0
            if getattr(frame, "rgb", None) is None:
                raise SourceError(f"{getattr(src, 'name', 'source')}: the camera returned no frame")
            if self._stop.is_set():
                return
            self._last_frame_time = time.time()
            self._frame_times.append(time.monotonic())
            self._set_camera(True, "ok")
            self._ping()
            self.stats.add("frames")
            try:
                self.process(frame, capture)
            except (PiSearchError, ValueError) as exc:
                self.stats.add("frame_errors")
                log.warning("frame %d skipped: %s", frame.index, exc)

    # ------------------------------------------------------------ one frame
    def process(self, frame, capture_s: float = 0.0) -> LatestResult | None:
        """Gate, preprocess, extract, search and publish one frame; None if the gate skipped it.

        Frames skipped after an inference (the scene is still) get the settled look (``settle``, a slice per
        frame, published on its own; still None here), once per inference, when ``settle_enabled``. When that
        look found the item in a window, the following frames of the same item (until the smoothing restarts)
        embed that window too, scored like the settled look (``settling.search_mean``): two model passes.
        """
        stats = self.stats
        t0 = time.perf_counter()
        now = time.monotonic()
        infer, thumb = self.gate.check(frame.rgb, now)
        t_gate = time.perf_counter() - t0
        if not infer:
            self.stats.add("skipped_frames")
            stats.observe("capture", capture_s)
            stats.observe("gate", t_gate)
            if self.codes.due:   # the still scene's barcodes first: one read, then the settled look
                self._read_codes(frame)
            elif self.settle_enabled and self._settle_job is not None:
                self.settle(frame)
            return None
        timed = _TimedExtractor(self.extractor)
        t1 = time.perf_counter()
        vec = self.embed_query(timed, frame.rgb)
        region = self._region  # where the settled look found this item: that window too (a second pass)
        rv = timed.embed(framing.window_input(frame.rgb, region, self.extractor.size)) if region else None
        t_embed = time.perf_counter() - t1
        t_extract = timed.seconds
        t_pre = max(0.0, t_embed - t_extract)
        t2 = time.perf_counter()
        resets = self.smoother.resets
        vec = self.smoother.update(vec)
        fresh = self.smoother.resets != resets
        if fresh:  # a new item: the settled look's window no longer applies
            self._region = region = None
        k = self.config.index.top_k
        if region is None:
            matches = tuple(self.catalog.search(vec, k))
        else:  # the mean of the two scores is the score of the mean vector: one search
            matches = tuple(settling.search_mean(self.catalog, vec, rv, k))
        matches = self.agreement.update(matches, fresh=fresh)
        self.codes.inferred(fresh)
        matches, codes = self.codes.apply(self.catalog, matches, k)   # the same item keeps its codes
        t_search = time.perf_counter() - t2
        t3 = time.perf_counter()
        jpeg = images.encode_jpeg(frame.rgb, self.config.server.jpeg_quality)
        t_encode = time.perf_counter() - t3
        self.gate.accept(thumb, now)
        self.stats.add("inferences")
        published = time.time()
        timings = {"capture": capture_s, "gate": t_gate, "preprocess": t_pre, "extract": t_extract,
                   "search": t_search, "encode": t_encode}
        for k, v in timings.items():
            stats.observe(k, v)
        latency = max(0.0, published - frame.t)
        stats.observe("latency", latency)
        fh, fw = frame.rgb.shape[:2]
        target = framing.target_box(fw, fh)
        gain = self._region_gain if region else 0.0  # as the settled look measured it
        guide = {"hint": settling.hint(matches[0].score if matches else None, region, target, gain,
                                       settling.thresholds(getattr(self.catalog, "manifest", None))),
                 "target": list(target), "region": list(region) if region else None}
        result = LatestResult(
            frame_id=frame.index, frame_time=frame.t, published_time=published, matches=matches,
            timings_ms={k: v * 1000.0 for k, v in timings.items()}, latency_ms=latency * 1000.0, jpeg=jpeg,
            width=int(fw), height=int(fh), guide=guide, codes=codes)
        self._settle_job = {"vec": vec, "done": [], "seconds": 0.0}  # a new look once the scene is still
        with self._cond:
            self._latest = result
            self._recent.append(result)
            self._cond.notify_all()
        return result

    def settle(self, frame) -> LatestResult | None:
        """The settled look, a slice at a time: windows over the whole still frame, fused with the last
        inferred matches once every window is done.

        Called on frames the gate skips after an inference (the scene is still). Each call embeds and
        searches windows of this frame for at most ``settle.SETTLE_SLICE_S`` (at least one window), so a frame
        that changes waits at most one slice; the next inference drops an unfinished look. When the last
        window is done, publishes the fused matches, the picked window as the guide's ``region`` and
        ``settle_ms`` (model and search time of all windows), keeping the last preview JPEG and timings (the
        frame looks the same; reachable by the new frame id too), and returns that result; otherwise None.
        """
        job, last = self._settle_job, self._latest
        if job is None or last is None:
            return None
        t0 = time.perf_counter()
        fh, fw = frame.rgb.shape[:2]
        k = self.config.index.top_k
        depth = looking.depth(k)
        if "boxes" not in job:   # the same windows as an upload or a query of this image (model.look)
            job["boxes"] = looking.windows_for(frame.rgb)
        boxes = job["boxes"]
        while len(job["done"]) < len(boxes):
            box = boxes[len(job["done"])]
            v = looking.embed_window(self.extractor, frame.rgb, box)
            job["done"].append((box, self.catalog.search(v, depth)))
            if time.perf_counter() - t0 >= settling.SETTLE_SLICE_S:
                break
        if len(job["done"]) < len(boxes):
            job["seconds"] += time.perf_counter() - t0
            return None
        fused = looking.fuse(self.catalog, job["vec"], job["done"], k)
        if fused is None:   # another bundle came in meanwhile: look again, on it only
            job["done"], job["seconds"] = [], 0.0
            return None
        matches, region, gain = fused
        self._settle_job = None
        self._region, self._region_gain = region, gain
        self.agreement.update(tuple(matches), fresh=True)  # the settled matches are the ones shown now
        matches, codes = self.codes.apply(self.catalog, matches, k)
        t_settle = job["seconds"] + time.perf_counter() - t0
        self.stats.add("settled")
        target = framing.target_box(fw, fh)
        guide = {"hint": settling.hint(matches[0].score if matches else None, region, target, gain,
                                       settling.thresholds(getattr(self.catalog, "manifest", None))),
                 "target": list(target), "region": list(region) if region else None}
        result = LatestResult(
            frame_id=frame.index, frame_time=frame.t, published_time=time.time(), matches=tuple(matches),
            timings_ms=last.timings_ms, latency_ms=last.latency_ms, jpeg=last.jpeg, width=int(fw),
            height=int(fh), guide=guide, settle_ms=t_settle * 1000.0, codes=codes)
        with self._cond:
            self._latest = result
            self._recent.append(result)
            self._cond.notify_all()
        return result

    def _read_codes(self, frame) -> LatestResult | None:
        """Read the barcodes of a still frame; when there are any, publish the last result again with the
        items they name first (same preview and timings, reachable by this frame's id too)."""
        last = self._latest
        before = self.codes.codes
        codes = self.codes.read(frame.rgb)
        self.stats.add("code_reads")
        if last is None or codes == before:
            return None
        visual = tuple(m for m in last.matches if m.via != "barcode")
        matches, info = self.codes.apply(self.catalog, visual, self.config.index.top_k)
        result = replace(last, frame_id=frame.index, frame_time=frame.t, published_time=time.time(),
                         matches=matches, codes=info)
        with self._cond:
            self._latest = result
            self._recent.append(result)
            self._cond.notify_all()
        return result

    # ------------------------------------------------------------ read side (request threads)
    def latest(self) -> LatestResult | None:
        return self._latest

    def recent(self, frame_id: int) -> LatestResult | None:
        """The published result of ``frame_id`` among the last ``RECENT_FRAMES`` (None once it is gone)."""
        with self._cond:
            recent = tuple(self._recent)
        for result in reversed(recent):
            if result.frame_id == frame_id:
                return result
        return None

    def wait_for_result(self, after: LatestResult | None, timeout: float) -> LatestResult | None:
        """The newest result other than ``after``, waiting up to ``timeout`` s; None on timeout or stop."""
        with self._cond:
            self._cond.wait_for(lambda: self._stop.is_set() or (self._latest is not None
                                                                 and self._latest is not after), timeout)
            if self._stop.is_set() or self._latest is after:
                return None
            return self._latest

    def fps(self) -> float:
        """Camera frames per second over the last few seconds (0 when frames stopped coming)."""
        ts = list(self._frame_times)
        if len(ts) < 2 or time.monotonic() - ts[-1] > max(2.0, 3.0 / self.config.camera.fps):
            return 0.0
        return (len(ts) - 1) / (ts[-1] - ts[0]) if ts[-1] > ts[0] else 0.0

    def camera_state(self) -> tuple[bool, str]:
        """``(up, reason)``; a camera that stopped delivering frames for ``camera.timeout_s`` is down."""
        up, reason = self._camera_up, self._camera_reason
        if up and self._last_frame_time:
            age = time.time() - self._last_frame_time
            if age > self.config.camera.timeout_s:
                return False, f"no frame for {age:.1f} s"
        return up, reason
