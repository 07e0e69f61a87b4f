"""Fakes of the project's own interfaces: a picamera2 module with the real calls, frame sources that fail on
cue, and the worker as the web app sees it (``FakeWorker``)."""

from __future__ import annotations

import threading
import time
import types

import numpy as np

from pi_search import images
from pi_search.camera import BaseSource, Frame
from pi_search.errors import SourceError
from pi_search.model.framing import embed_query_image
from pi_search.pipeline.result import LatestResult
from pi_search.pipeline.stats import STAGES, Stats


# ---------------------------------------------------------------- picamera2
class FakeCameraState:
    """What the fake camera was asked to do, and the scene it shows (RGB uint8 [H, W, 3] at full size)."""

    def __init__(self, scene: np.ndarray, *, stride_pad: int = 32, fail_start: Exception | None = None,
                 fail_capture_after: int | None = None):
        self.scene = scene
        self.stride_pad = stride_pad
        self.fail_start = fail_start
        self.fail_capture_after = fail_capture_after
        self.calls: list[tuple] = []
        self.config: dict | None = None
        self.captures = 0
        self.open_cameras = 0


def fake_picamera2_module(state: FakeCameraState) -> types.ModuleType:
    """A stand-in for ``picamera2`` (install with ``monkeypatch.setitem(sys.modules, "picamera2", ...)``).

    Like libcamera, ``RGB888`` frames hold B,G,R bytes and ``BGR888`` frames hold R,G,B bytes; rows are
    padded to a multiple of ``stride_pad`` pixels with junk, as the ISP's row stride does.
    """

    class Picamera2:
        def __init__(self, camera_num: int = 0):
            state.calls.append(("__init__", camera_num))
            state.open_cameras += 1
            self._started = False

        def create_video_configuration(self, main=None, lores=None, raw=None, transform=None,
                                       colour_space=None, buffer_count=6, controls=None, display="main",
                                       encode="main", queue=True, **kwargs):
            state.calls.append(("create_video_configuration", {"main": main, "buffer_count": buffer_count,
                                                               "controls": controls}))
            if kwargs:
                raise TypeError(f"unexpected arguments {sorted(kwargs)}")
            return {"use_case": "video", "main": dict(main or {}), "buffer_count": buffer_count,
                    "controls": dict(controls or {})}

        def configure(self, config):
            state.calls.append(("configure", config))
            fmt = config["main"].get("format")
            if fmt not in ("RGB888", "BGR888", "XRGB8888", "XBGR8888", "YUV420"):
                raise RuntimeError(f"unsupported format {fmt}")
            state.config = config

        def start(self, config=None, show_preview=False):
            state.calls.append(("start",))
            if state.fail_start is not None:
                raise state.fail_start
            if state.config is None:
                raise RuntimeError("Camera has not been configured")
            self._started = True

        def capture_array(self, name="main", wait=None, signal_function=None):
            state.calls.append(("capture_array", name))
            if not self._started:
                raise RuntimeError("Camera is not running")
            if state.fail_capture_after is not None and state.captures >= state.fail_capture_after:
                raise RuntimeError("Device or resource busy: frame dequeue failed")
            state.captures += 1
            import cv2

            w, h = state.config["main"]["size"]
            rgb = cv2.resize(state.scene, (w, h), interpolation=cv2.INTER_AREA)
            fmt = state.config["main"]["format"]
            pixels = rgb[:, :, ::-1] if fmt == "RGB888" else rgb  # RGB888 is B,G,R in memory
            stride = -(-w // state.stride_pad) * state.stride_pad
            out = np.full((h, stride, 3), 77, np.uint8)  # junk in the padding
            out[:, :w] = pixels
            return out

        def stop(self):
            state.calls.append(("stop",))
            self._started = False

        def close(self):
            state.calls.append(("close",))
            state.open_cameras -= 1

    mod = types.ModuleType("picamera2")
    mod.Picamera2 = Picamera2
    return mod


# ---------------------------------------------------------------- sources
class ListSource(BaseSource):
    """Replays RGB uint8 frames from a list (optionally with per-frame noise), then fails or loops.

    ``fail_reads``: frame numbers (counted over this source's life) at which ``read`` raises SourceError;
    ``crash_reads``: at which it raises RuntimeError (a bug in a driver); ``fps=None`` means no pacing.
    """

    def __init__(self, frames, *, fps: float | None = None, loop: bool = True, fail_reads=(), crash_reads=(),
                 noise: float = 0.0, seed: int = 0, name: str = "list"):
        super().__init__(fps or 1.0)
        self.frames = list(frames)
        self.paced = fps is not None
        self.loop = loop
        self.fail_reads, self.crash_reads = set(fail_reads), set(crash_reads)
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.name = name
        self.started = self.stopped = 0
        self.reads = 0
        self.running = False

    def start(self) -> None:
        self.started += 1
        self.running = True

    def read(self) -> Frame:
        if not self.running:
            raise SourceError(f"{self.name}: not started")
        n = self.reads
        self.reads += 1
        if n in self.fail_reads:
            raise SourceError(f"{self.name}: read error at frame {n}")
        if n in self.crash_reads:
            raise RuntimeError(f"{self.name}: driver crashed at frame {n}")
        if n >= len(self.frames) and not self.loop:
            raise SourceError(f"{self.name}: end of the frames")
        rgb = self.frames[n % len(self.frames)]
        if self.noise:
            noisy = rgb.astype(np.float32) + self.rng.normal(0.0, self.noise, rgb.shape)
            rgb = np.clip(noisy, 0, 255).astype(np.uint8)
        if self.paced:
            self._pace()
        else:
            time.sleep(0.001)  # yields the GIL, like a camera wait
        return self._frame(rgb)

    def stop(self) -> None:
        self.stopped += 1
        self.running = False


class SourceFactory:
    """Makes sources for the worker: the first ``failing_starts`` ones fail to start; records them all."""

    def __init__(self, make, *, failing_starts: int = 0):
        self.make = make
        self.failing_starts = failing_starts
        self.made: list = []
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            n = len(self.made)
            src = self.make(n)
            if n < self.failing_starts:
                src = _FailingStart(src, f"camera {n} not found")
            self.made.append(src)
            return src


class _FailingStart(BaseSource):
    def __init__(self, inner, reason: str):
        super().__init__()
        self.inner, self.reason, self.name = inner, reason, "failing"
        self.stopped = 0

    def start(self) -> None:
        raise SourceError(self.reason)

    def read(self) -> Frame:
        raise SourceError("not started")

    def stop(self) -> None:
        self.stopped += 1


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` s pass; returns its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# ---------------------------------------------------------------- fault injection
class FaultyCamera:
    """A camera whose behaviour the test switches while the daemon runs (one per test, shared by opens).

    ``mode``: ``"ok"`` (frames), ``"fail"`` (start and read raise SourceError: cable pulled), ``"empty"``
    (read returns None: a driver that hands back nothing), ``"hang"`` (start and read block until the mode
    changes: a wedged driver). ``opens`` counts sources made; ``blocked`` counts calls blocked right now.
    """

    def __init__(self, frames, fps: float = 30.0):
        self.frames = list(frames)
        self.fps = fps
        self.mode = "ok"
        self.opens = 0
        self.blocked = 0
        self._changed = threading.Condition()

    def set(self, mode: str) -> None:
        with self._changed:
            self.mode = mode
            self._changed.notify_all()

    def _wait_while_hung(self) -> None:
        with self._changed:
            self.blocked += 1
            try:
                self._changed.wait_for(lambda: self.mode != "hang")
            finally:
                self.blocked -= 1

    def __call__(self) -> BaseSource:
        self.opens += 1
        return _FaultySource(self)


class _FaultySource(ListSource):
    def __init__(self, cam: FaultyCamera):
        super().__init__(cam.frames, fps=cam.fps, name="faulty")
        self.cam = cam

    def start(self) -> None:
        if self.cam.mode == "hang":
            self.cam._wait_while_hung()
        if self.cam.mode == "fail":
            raise SourceError("faulty: camera not found (cable unplugged?)")
        super().start()

    def read(self):
        mode = self.cam.mode
        if mode == "hang":
            self.cam._wait_while_hung()
            mode = self.cam.mode
        if mode == "fail":
            raise SourceError("faulty: read error (cable unplugged?)")
        if mode == "empty":
            time.sleep(0.01)
            return None
        return super().read()


def serve_command(exe, frames, bundle_dir, port: int, fps: float = 5) -> list[str]:
    """The ``pi-search serve`` command line that replays ``frames`` against ``bundle_dir`` on ``port``."""
    return [str(exe), "serve", "--source", f"folder:{frames}", "--bundle", str(bundle_dir),
            "--port", str(port), "--fps", str(fps)]


# ---------------------------------------------------------------- HTTP from a test
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request_json(url: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None):
    """``(status, JSON body)`` of one request; ``(None, None)`` when nothing answers."""
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except (OSError, ValueError):
        return None, None


def multipart(fields: list[tuple[str, str | tuple[str, bytes]]],
              content_type: str = "application/octet-stream") -> tuple[bytes, dict]:
    """A multipart/form-data body and its header: ``(name, text)`` fields and ``(name, (filename, bytes))``
    files (each file part sent as ``content_type``)."""
    import uuid

    boundary = uuid.uuid4().hex
    out = []
    for name, value in fields:
        if isinstance(value, tuple):
            head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                    f'filename="{value[0]}"\r\nContent-Type: {content_type}\r\n\r\n')
            out.append(head.encode() + value[1] + b"\r\n")
        else:
            out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
                       .encode())
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


class FakeWorker:
    """The frame loop as the appliance sees it (``app.FrameLoop``), driven by the test: no thread, no camera.

    ``publish(rgb)`` does what one inferred frame does for the page (the real model and the real live
    catalog give the matches; the JPEG, timings and counters are published); ``start``/``stop`` only move the
    camera state. Everything the appliance reads (``latest``, ``recent``, ``wait_for_result``,
    ``camera_state``, ``stats``...) behaves like ``pipeline.worker.Worker``'s read side. ``kiosk(loop)``
    wraps it in the real port for ``create_app``.
    """

    def __init__(self, catalog, extractor, config, source_name: str = "fake"):
        self.catalog, self.extractor, self.config, self.source_name = catalog, extractor, config, source_name
        self.stats = Stats()
        self._cond = threading.Condition()
        self._results: list = []
        self._camera = (False, "not started")
        self._stopped = threading.Event()
        self._frames = 0
        self.last_frame_time = 0.0

    # -------------------------------------------------------------- driven by the test
    def start(self) -> FakeWorker:
        self._camera = (True, "ok")
        return self

    def publish(self, rgb: np.ndarray):
        """One inferred camera frame (RGB uint8 [H, W, 3]) published with its real matches."""
        t0 = time.time()
        matches = tuple(self.catalog.search(embed_query_image(self.extractor, rgb), self.config.index.top_k))
        timings = {s: 0.001 for s in STAGES}
        for stage, seconds in timings.items():
            self.stats.observe(stage, seconds)
        self.stats.add("frames")
        self.stats.add("inferences")
        h, w = rgb.shape[:2]
        ms = {k: v * 1000 for k, v in timings.items()}
        result = LatestResult(self._frames, t0, time.time(), matches, ms, (time.time() - t0) * 1000,
                              images.encode_jpeg(rgb), w, h)
        self._frames += 1
        self._camera = (True, "ok")
        self.last_frame_time = time.time()
        with self._cond:
            self._results = (self._results + [result])[-8:]
            self._cond.notify_all()
        return result

    # -------------------------------------------------------------- what the appliance reads
    @property
    def running(self) -> bool:
        return not self._stopped.is_set()

    @property
    def alive(self) -> bool:
        return self.running

    def request_stop(self) -> None:
        self._stopped.set()
        with self._cond:
            self._cond.notify_all()

    def stop(self, timeout: float = 3.0) -> None:
        self.request_stop()
        self._camera = (False, "stopped")

    def latest(self):
        return self._results[-1] if self._results else None

    def recent(self, frame_id: int):
        return next((r for r in reversed(self._results) if r.frame_id == frame_id), None)

    def wait_for_result(self, after, timeout: float):
        with self._cond:
            self._cond.wait_for(lambda: self._stopped.is_set() or (self._results and self._results[-1]
                                                                   is not after), timeout)
            latest = self.latest()
            return None if self._stopped.is_set() or latest is after else latest

    def fps(self) -> float:
        return 15.0 if self._camera[0] else 0.0

    def camera_state(self) -> tuple[bool, str]:
        return self._camera

    def wedged(self) -> int:
        return 0

    def driver_wedged(self) -> bool:
        return False


def kiosk(loop):
    """The real port (``app.Kiosk``) over ``loop`` (a ``Worker`` or a ``FakeWorker``), with its catalog,
    extractor and config: what ``create_app`` serves."""
    from pi_search.app import Kiosk

    return Kiosk(loop, loop.catalog, loop.extractor, loop.config)


def signed_kiosk(tmp_path, bundle_dir, extractor) -> tuple[dict, object, dict, object]:
    """A kiosk that trusts one key: ``bundle_dir`` signed as versions 5 and 7 (``tmp_path/v5``, ``v7``) by
    ``tmp_path/keys/shop.key``, version 5 installed at ``tmp_path/live``, and ``tmp_path/config.toml`` naming
    that bundle and ``shop.pub``. Returns ``(signed {version: dir}, live, trusted keys, config path)``."""
    import shutil

    from pi_search.bundle import signing
    from pi_search.updates.install import install_bundle

    keys = tmp_path / "keys"
    signing.keygen(keys, "shop")
    signed = {}
    for v in (5, 7):
        signed[v] = tmp_path / f"v{v}"
        shutil.copytree(bundle_dir, signed[v])
        signing.sign(signed[v], keys / "shop.key", version=v)
    live = tmp_path / "live"
    trusted = signing.load_trusted([keys / "shop.pub"])
    install_bundle(signed[5], live, trusted=trusted, extractor=extractor)
    conf = tmp_path / "config.toml"
    conf.write_text(f'[index]\nbundle = "{live}"\ntrusted_keys = ["{keys / "shop.pub"}"]\n')
    return signed, live, trusted, conf
