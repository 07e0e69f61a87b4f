"""The worker: one thread owns the camera, the extractor and the index, and publishes the latest result."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import notify
from .config import GateConfig, SmoothingConfig
from .errors import ImageError, PiSearchError, SourceError

log = logging.getLogger(__name__)

STAGES = ("capture", "gate", "preprocess", "extract", "search", "encode")
# Histogram bucket upper bounds in seconds, shared by every stage (Prometheus convention).
MAX_HUNG_READS = 3  # abandoned camera reads still blocked after which the watchdog pings stop
WEDGED_RESTART_S = 60.0  # a camera read blocked this long stops the watchdog pings too
FAULT_SHOWN_S = 60.0  # a failed read of the bundle shows in /healthz this long
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class LatestResult:
    """What the page and the API show: the matches for one inferred frame and that frame as one JPEG.

    ``timings_ms`` holds each stage of that frame (capture, gate, preprocess, extract, search, encode) and
    ``latency_ms``: capture time to publication. ``jpeg`` is encoded once and shared by every viewer.
    """

    frame_id: int
    frame_time: float
    published_time: float
    matches: tuple = ()
    timings_ms: dict = field(default_factory=dict)
    latency_ms: float = 0.0
    jpeg: bytes = b""
    width: int = 0
    height: int = 0

    def as_dict(self) -> dict:
        return {
            "frame_id": self.frame_id,
            "frame_time": round(self.frame_time, 3),
            "published_time": round(self.published_time, 3),
            "latency_ms": round(self.latency_ms, 2),
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "frame_size": [self.width, self.height],
            "matches": [m.as_dict() for m in self.matches],
        }


class Histogram:
    """Cumulative latency histogram (seconds) with fixed buckets; read by the /metrics collector."""

    def __init__(self, buckets=BUCKETS):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        i = 0
        while i < len(self.buckets) and seconds > self.buckets[i]:
            i += 1
        self.counts[i] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for b, c in zip(self.buckets, self.counts, strict=False):
            total += c
            out.append((repr(b), total))
        out.append(("+Inf", self.count))
        return out


@dataclass
class Stats:
    """Counters of the worker (read by /metrics and the status line; written only by the worker)."""

    frames: int = 0
    inferences: int = 0
    skipped: int = 0
    source_errors: int = 0
    frame_errors: int = 0
    uploads: int = 0
    viewers: int = 0
    stages: dict = field(default_factory=lambda: {s: Histogram() for s in (*STAGES, "latency")})


class Gate:
    """Skips frames that barely differ from the last inferred one.

    Compares a small grey thumbnail (``size``, area-averaged, so sensor noise averages out) by mean absolute
    difference in grey levels. A frame passes when the difference reaches ``threshold``, when there is no
    reference yet, or after ``refresh_s`` seconds without inference.
    """

    def __init__(self, config: GateConfig):
        self.config = config
        self._ref: np.ndarray | None = None
        self._ref_time = 0.0
        self.last_diff = float("nan")

    def thumb(self, rgb: np.ndarray) -> np.ndarray:
        import cv2

        small = cv2.resize(rgb, tuple(self.config.size), interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.int16)

    def check(self, rgb: np.ndarray, now: float) -> tuple[bool, np.ndarray | None]:
        """``(infer?, thumbnail)``; call ``accept(thumbnail, now)`` once the frame has been inferred."""
        if not self.config.enabled:
            self.last_diff = float("nan")
            return True, None
        t = self.thumb(rgb)
        if self._ref is None or self._ref.shape != t.shape:
            self.last_diff = float("inf")
            return True, t
        self.last_diff = float(np.abs(t - self._ref).mean())
        stale = self.config.refresh_s > 0 and now - self._ref_time >= self.config.refresh_s
        return self.last_diff >= self.config.threshold or stale, t

    def accept(self, thumb: np.ndarray | None, now: float) -> None:
        if thumb is not None:
            self._ref, self._ref_time = thumb, now

    def reset(self) -> None:
        self._ref = None


class Smoother:
    """Exponential moving average of the embeddings of consecutive inferred frames, restarted on a new item.

    ``alpha`` is the newest embedding's weight; a new embedding whose cosine similarity to the running mean
    is below ``reset_below`` restarts the mean (a different item came into view, so no lag). Input and
    output: float32 [dim], L2-normalised.
    """

    def __init__(self, config: SmoothingConfig):
        self.config = config
        self._mean: np.ndarray | None = None
        self.resets = 0

    def update(self, v: np.ndarray) -> np.ndarray:
        a = self.config.alpha
        new_item = self._mean is None or float(v @ self._mean) < self.config.reset_below
        if new_item:
            self.resets += 1
        if new_item or a >= 1.0:
            self._mean = v
            return v
        m = (1.0 - a) * self._mean + a * v
        n = float(np.linalg.norm(m))
        self._mean = (m / n if n > 0 else v).astype(np.float32)
        return self._mean

    def reset(self) -> None:
        self._mean = None


class Agreement:
    """Holds the shown matches until a new best match has led ``agree`` consecutive inferred frames.

    Near-ties (an item that is not in the catalog, or two similar items) would otherwise swap places from
    frame to frame. ``fresh=True`` (a new item came into view) shows the new matches at once.
    """

    def __init__(self, agree: int):
        self.agree = agree
        self._shown: tuple = ()
        self._candidate: str | None = None
        self._streak = 0

    def update(self, matches: tuple, fresh: bool) -> tuple:
        top = matches[0].id if matches else None
        shown_top = self._shown[0].id if self._shown else None
        if fresh or self.agree <= 1 or not self._shown or top == shown_top:
            self._shown, self._candidate, self._streak = matches, None, 0
            return matches
        self._streak = self._streak + 1 if top == self._candidate else 1
        self._candidate = top
        if self._streak >= self.agree:
            self._shown, self._candidate, self._streak = matches, None, 0
            return matches
        # Keep the shown order, with this frame's scores where the items are still among the matches.
        scores = {m.id: m for m in matches}
        return tuple(scores.get(m.id, m) for m in self._shown)

    def reset(self) -> None:
        self._shown, self._candidate, self._streak = (), None, 0


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


class Service:
    """The frame loop and its published state.

    ``source_factory()`` returns a fresh, unstarted FrameSource (called again after a failure, with backoff);
    ``extractor`` has ``.embed`` (RGB uint8 [size, size, 3] -> float32 [dim]) and ``bundle`` has
    ``.search(vector, k)``. Request handlers only call the read-side methods (``latest``, ``wait_for_result``,
    ``health``, ``search_image``); only the worker thread touches the source.
    """

    def __init__(self, source_factory: Callable, extractor, bundle, config, *, source_name: str = "",
                 embed_query: Callable | None = None):
        from . import views

        self.config = config
        self.source_factory = source_factory
        self.source_name = source_name
        self.extractor = extractor
        self.bundle = bundle
        self.embed_query = embed_query or views.embed_query_image
        self.stats = Stats()
        self.gate = Gate(config.gate)
        self.smoother = Smoother(config.smoothing)
        self.agreement = Agreement(config.smoothing.agree)
        self._cond = threading.Condition()
        self._latest: LatestResult | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._source = None
        self._camera_up = False
        self._camera_reason = "not started"
        self._last_frame_time = 0.0
        self._frame_times: deque[float] = deque(maxlen=60)
        self._upload_slots = threading.BoundedSemaphore(2)
        self._reload_lock = threading.Lock()
        self._watchdog_s = notify.watchdog_interval()
        self._last_ping = 0.0
        self._hung: list = []  # GuardedSources whose reader thread is still blocked in the driver
        self._wedged_logged = False
        self.started_time = time.time()

    # ------------------------------------------------------------ lifecycle
    def start(self) -> Service:
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
        """systemd watchdog keep-alive from the worker loop.

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
        if self._watchdog_s and time.monotonic() - self._last_ping >= self._watchdog_s / 3:
            self._last_ping = time.monotonic()
            notify.watchdog()

    def _run(self) -> None:
        from .camera.guard import GuardedSource

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
                self.stats.source_errors += 1
                self._set_camera(False, str(exc))
            except Exception as exc:  # the worker never dies: report and retry
                self.stats.source_errors += 1
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
            self.stats.frames += 1
            try:
                self.process(frame, capture)
            except (PiSearchError, ValueError) as exc:
                self.stats.frame_errors += 1
                log.warning("frame %d skipped: %s", frame.index, exc)

    # ------------------------------------------------------------ one frame
    def process(self, frame, capture_s: float = 0.0) -> LatestResult | None:
        """Gate, preprocess, extract, search and publish one frame; None if the gate skipped it."""
        from . import images

        h = self.stats.stages
        t0 = time.perf_counter()
        now = time.monotonic()
        infer, thumb = self.gate.check(frame.rgb, now)
        t_gate = time.perf_counter() - t0
        if not infer:
            self.stats.skipped += 1
            h["capture"].observe(capture_s)
            h["gate"].observe(t_gate)
            return None
        timed = _TimedExtractor(self.extractor)
        t1 = time.perf_counter()
        vec = self.embed_query(timed, frame.rgb)
        t_embed = time.perf_counter() - t1
        t_extract = timed.seconds
        t_pre = max(0.0, t_embed - t_extract)
        t2 = time.perf_counter()
        resets = self.smoother.resets
        vec = self.smoother.update(vec)
        matches = tuple(self.bundle.search(vec, self.config.index.top_k))
        matches = self.agreement.update(matches, fresh=self.smoother.resets != resets)
        t_search = time.perf_counter() - t2
        t3 = time.perf_counter()
        jpeg = images.encode_jpeg(frame.rgb, self.config.server.jpeg_quality)
        t_encode = time.perf_counter() - t3
        self.gate.accept(thumb, now)
        self.stats.inferences += 1
        published = time.time()
        timings = {"capture": capture_s, "gate": t_gate, "preprocess": t_pre, "extract": t_extract,
                   "search": t_search, "encode": t_encode}
        for k, v in timings.items():
            h[k].observe(v)
        latency = max(0.0, published - frame.t)
        h["latency"].observe(latency)
        result = LatestResult(
            frame_id=frame.index, frame_time=frame.t, published_time=published, matches=matches,
            timings_ms={k: v * 1000.0 for k, v in timings.items()}, latency_ms=latency * 1000.0, jpeg=jpeg,
            width=int(frame.rgb.shape[1]), height=int(frame.rgb.shape[0]))
        with self._cond:
            self._latest = result
            self._cond.notify_all()
        return result

    # ------------------------------------------------------------ read side (request threads)
    def latest(self) -> LatestResult | None:
        return self._latest

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

    def health(self) -> dict:
        """Health of the camera, model and index; ``ok`` is False with reasons when any is down."""
        cam_up, cam_reason = self.camera_state()
        model_up = self.extractor is not None
        cat = self.bundle
        index_up = cat is not None and getattr(cat, "serving", True)
        problem = getattr(cat, "problem", None) if cat is not None else "not loaded"
        fault = getattr(cat, "fault", None)
        fault_age = time.time() - fault[0] if fault else None
        alive = self._thread is not None and self._thread.is_alive()
        reasons = []
        if not cam_up:
            reasons.append(f"camera: {cam_reason}")
        if not alive and self.running:
            reasons.append("worker: not running")
        if self.driver_wedged():
            reasons.append(f"camera: {len(self._hung)} read(s) never returned (driver wedged); "
                           "the daemon restarts under systemd")
        if not model_up:
            reasons.append("model: not loaded")
        if not index_up:
            reasons.append(f"index: {problem or 'not loaded'}")
        elif fault_age is not None and fault_age < FAULT_SHOWN_S:
            reasons.append(f"index: a read failed {fault_age:.0f} s ago: {fault[1]}")
        return {
            "ok": not reasons,
            "reasons": reasons,
            "camera": {"up": cam_up, "reason": cam_reason, "source": self.source_name,
                       "last_frame_age_s": round(time.time() - self._last_frame_time, 3)
                       if self._last_frame_time else None, "fps": round(self.fps(), 2)},
            "model": {"up": model_up, "name": getattr(self.extractor, "name", None),
                      "threads": getattr(self.extractor, "num_threads", None)},
            "index": {"up": index_up, "items": len(cat) if index_up else 0, "problem": problem,
                      "last_fault": None if fault is None else {"age_s": round(fault_age, 1),
                                                                "error": fault[1]}},
            "worker": {"alive": alive},
        }

    def reload_bundle(self) -> dict:
        """Map the bundle now in the bundle's directory (after a rebuild); keep the old one if it is broken.

        The new bundle is opened and checked against the model first: a half-written or mismatched one
        raises BundleError and the bundle in use keeps serving. Searches already running finish on the old
        bundle (it is unmapped once the last of them drops it). Returns ``{"items", "created"}``.
        """
        from .index import Bundle

        with self._reload_lock:
            current = self.bundle
            if hasattr(current, "reload"):  # the live catalog checks and swaps its own state
                current.reload(strict=True)   # BundleError: the bundle in use keeps serving
            else:
                self.bundle = Bundle.open(current.directory, extractor=self.extractor)
            log.info("bundle %s reloaded: %d items, built %s", current.directory, len(self.bundle),
                     self.bundle.manifest.get("created"))
            return {"items": len(self.bundle), "created": self.bundle.manifest.get("created")}

    def search_image(self, rgb: np.ndarray, k: int | None = None) -> tuple[list, dict]:
        """Matches for an uploaded photo (RGB uint8 [H, W, 3]) and timings in ms; never touches the camera.

        Shares the extractor with the worker (its lock serialises the model); at most two uploads run at
        once, others wait up to 10 s and then get ImageError("busy").
        """
        if not self._upload_slots.acquire(timeout=10.0):
            raise ImageError("the appliance is busy with other uploads; try again in a moment")
        try:
            t0 = time.perf_counter()
            vec = self.embed_query(self.extractor, rgb)
            t1 = time.perf_counter()
            matches = self.bundle.search(vec, k or self.config.index.top_k)
            t2 = time.perf_counter()
        finally:
            self._upload_slots.release()
        self.stats.uploads += 1
        return matches, {"embed": (t1 - t0) * 1000.0, "search": (t2 - t1) * 1000.0}
