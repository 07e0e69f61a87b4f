"""The worker with the real model and bundle: gate, smoothing, publication, failures, health and shutdown."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import camera_view, load_photo
from fakes import ListSource, SourceFactory, kiosk, wait_until

from pi_search.config import load_config
from pi_search.pipeline.gate import Gate
from pi_search.pipeline.stabilise import Smoother
from pi_search.pipeline.stats import Stats
from pi_search.pipeline.worker import Worker


@pytest.fixture(scope="module")
def shots():
    """Camera-like frames (RGB uint8) of three catalog items, by catalog id."""
    return {i: camera_view(load_photo(s)) for i, s in
            [("coffee", "skimage:coffee"), ("cat", "skimage:chelsea"), ("rocket", "skimage:rocket")]}


def make_service(extractor, catalog, factory, **overrides):
    config = load_config(None, overrides)
    return Worker(factory, extractor, catalog, config, source_name="test")


def test_worker_publishes_matches_timings_and_one_jpeg(extractor, catalog, shots):
    factory = SourceFactory(lambda n: ListSource([shots["coffee"]], loop=True))
    svc = make_service(extractor, catalog, factory).start()
    try:
        assert wait_until(lambda: svc.latest() is not None)
        r = svc.latest()
    finally:
        svc.stop()
    assert r.matches[0].id == "coffee"
    assert len(r.matches) == 5
    assert set(r.timings_ms) == {"capture", "gate", "preprocess", "extract", "search", "encode"}
    assert all(v >= 0 for v in r.timings_ms.values()) and r.timings_ms["extract"] > 0
    assert r.jpeg[:2] == b"\xff\xd8" and r.jpeg[-2:] == b"\xff\xd9"
    assert (r.width, r.height) == (shots["coffee"].shape[1], shots["coffee"].shape[0])
    d = r.as_dict()
    assert d["matches"][0] == {"id": "coffee", "title": "Cup of coffee", "price": "3.20",
                               "score": pytest.approx(r.matches[0].score, abs=1e-5), "photo": 0,
                               "via": "image"}
    assert "jpeg" not in d and d["frame_id"] == r.frame_id


def test_a_still_scene_is_inferred_once(extractor, catalog, shots):
    src = ListSource([shots["cat"]], loop=True, noise=2.0)  # sensor noise on a still scene
    svc = make_service(extractor, catalog, lambda: src, **{"gate.refresh_s": 0.0})
    svc.start()
    try:
        assert wait_until(lambda: svc.stats.frames >= 30)
    finally:
        svc.stop()
    assert svc.stats.inferences == 1
    assert svc.stats.skipped == svc.stats.frames - 1
    assert svc.latest().matches[0].id == "cat"


def test_a_new_item_is_inferred_at_once(extractor, catalog, shots):
    svc = make_service(extractor, catalog, None)
    frames = ListSource([shots["cat"]] * 3 + [shots["rocket"]] * 3, loop=False)
    frames.start()
    published = [svc.process(frames.read()) for _ in range(6)]
    assert [p is not None for p in published] == [True, False, False, True, False, False]
    assert published[0].matches[0].id == "cat"
    assert published[3].matches[0].id == "rocket"  # no smoothing lag across items


def test_gate_disabled_infers_every_frame(extractor, catalog, shots):
    svc = make_service(extractor, catalog, None, **{"gate.enabled": False})
    src = ListSource([shots["cat"]])
    src.start()
    assert all(svc.process(src.read()) is not None for _ in range(4))
    assert svc.stats.inferences == 4 and svc.stats.skipped == 0


def test_gate_thresholds_on_mean_difference():
    gate = Gate(load_config(None, {"gate.threshold": 5.0, "gate.refresh_s": 10.0}).gate)
    base = np.full((48, 64, 3), 100, np.uint8)
    ok, t = gate.check(base, 0.0)
    assert ok
    gate.accept(t, 0.0)
    assert gate.check(base + 3, 1.0)[0] is False and gate.last_diff == pytest.approx(3.0)
    assert gate.check(base + 6, 1.0)[0] is True
    assert gate.check(base, 11.0)[0] is True  # refresh after 10 s of skipping


def test_smoother_damps_noise_and_restarts_on_a_new_item():
    rng = np.random.default_rng(1)
    sm = Smoother(load_config(None, {"smoothing.alpha": 0.3, "smoothing.reset_below": 0.8}).smoothing)

    def unit(v):
        return (v / np.linalg.norm(v)).astype(np.float32)

    a, b = unit(rng.normal(size=64)), unit(rng.normal(size=64))
    noisy = [unit(a + rng.normal(0, 0.03, 64)) for _ in range(20)]
    out = [sm.update(v) for v in noisy]
    raw_err = np.mean([1 - v @ a for v in noisy[5:]])
    smooth_err = np.mean([1 - v @ a for v in out[5:]])
    assert smooth_err < raw_err
    assert sm.update(b) @ b == pytest.approx(1.0)  # a different item replaces the mean at once
    assert sm.resets == 2


@pytest.mark.slow
def test_source_that_fails_to_start_is_retried(extractor, catalog, shots):
    factory = SourceFactory(lambda n: ListSource([shots["coffee"]]), failing_starts=2)
    svc = make_service(extractor, catalog, factory).start()
    try:
        assert wait_until(lambda: svc.latest() is not None)
        assert svc.camera_state() == (True, "ok")
    finally:
        svc.stop()
    assert svc.stats.source_errors == 2
    assert len(factory.made) == 3
    assert all(s.stopped >= 1 for s in factory.made)


@pytest.mark.parametrize("failure", ["fail_reads", "crash_reads"])
def test_read_errors_and_driver_crashes_reopen_the_camera(extractor, catalog, shots, failure):
    factory = SourceFactory(lambda n: ListSource([shots["coffee"]], **({failure: {2}} if n == 0 else {})))
    svc = make_service(extractor, catalog, factory).start()
    try:
        assert wait_until(lambda: len(factory.made) >= 2 and factory.made[1].reads > 3)
        assert kiosk(svc).health()["worker"]["alive"]
    finally:
        svc.stop()
    assert svc.stats.source_errors == 1
    assert factory.made[0].stopped == 1  # the failed camera was closed before reopening


def test_health_reports_the_camera_reason(extractor, catalog, shots):
    factory = SourceFactory(lambda n: ListSource([shots["coffee"]], loop=False), failing_starts=99)
    svc = make_service(extractor, catalog, factory)
    h = kiosk(svc).health()
    assert h["ok"] is False and h["camera"]["reason"] == "not started"
    svc.start()
    try:
        assert wait_until(lambda: "not found" in kiosk(svc).health()["camera"]["reason"])
        h = kiosk(svc).health()
        assert h["ok"] is False and h["reasons"][0].startswith("camera: camera")
        update = h["index"].pop("update")
        assert update["slot"] is None and update["signatures_required"] is False   # a plain bundle folder
        assert h["model"]["up"] and h["index"] == {"up": True, "items": len(catalog), "problem": None,
                                                   "refused": None, "last_fault": None}
    finally:
        svc.stop()


def test_camera_without_frames_for_timeout_counts_as_down(extractor, catalog, shots):
    blocked = threading.Event()

    class Stalls(ListSource):
        def read(self):
            if self.reads >= 2:
                blocked.wait(30)  # a camera that stops delivering frames without an error
            return super().read()

    svc = make_service(extractor, catalog, lambda: Stalls([shots["cat"]]), **{"camera.timeout_s": 0.3})
    svc.start()
    try:
        assert wait_until(lambda: svc.stats.frames >= 2)
        assert wait_until(lambda: not svc.camera_state()[0])
        assert "took over 0.3 s" in svc.camera_state()[1] or svc.camera_state()[1].startswith("no frame for")
        assert kiosk(svc).health()["ok"] is False
    finally:
        blocked.set()
        svc.stop()


def test_stop_closes_the_camera_and_wakes_waiters(extractor, catalog, shots):
    src = ListSource([shots["coffee"], shots["cat"]], fps=50.0)
    svc = make_service(extractor, catalog, lambda: src).start()
    assert wait_until(lambda: svc.latest() is not None)
    got = []
    waiter = threading.Thread(target=lambda: got.append(svc.wait_for_result(svc.latest(), 30.0)))
    svc._stop.set()  # stop the frame loop first so no new result wakes the waiter
    waiter.start()
    svc.stop()
    waiter.join(10)
    assert not waiter.is_alive() and got == [None]
    assert src.stopped == 1 and not src.running
    assert svc.camera_state() == (False, "stopped")
    assert not kiosk(svc).health()["worker"]["alive"]


def test_wait_for_result_returns_the_next_one(extractor, catalog, shots):
    svc = make_service(extractor, catalog, None, **{"gate.enabled": False})
    src = ListSource([shots["coffee"]])
    src.start()
    first = svc.process(src.read())
    timer = threading.Timer(0.05, lambda: svc.process(src.read()))
    timer.start()
    nxt = svc.wait_for_result(first, 20.0)
    timer.join()
    assert nxt is not None and nxt.frame_id == first.frame_id + 1


def test_upload_search_uses_the_model_without_the_camera(extractor, catalog, shots):
    svc = make_service(extractor, catalog, None)
    matches, timings = kiosk(svc).search_image(shots["rocket"], 3)
    assert [m.id for m in matches][0] == "rocket" and len(matches) == 3
    assert timings["embed"] > 0
    assert svc.stats.uploads == 1 and svc.stats.frames == 0


def test_stats_are_prometheus_metrics_safe_from_many_threads():
    from prometheus_client import CollectorRegistry, generate_latest

    stats = Stats()

    def count():
        for _ in range(2000):
            stats.add("uploads")
            stats.observe("search", 0.004)

    threads = [threading.Thread(target=count) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats.observe("search", 3.0)
    assert stats.uploads == 16_000 and stats.frames == 0
    assert stats.stage("search") == (16_001, pytest.approx(16_000 * 0.004 + 3.0))
    registry = CollectorRegistry()
    for c in stats.collectors:
        registry.register(c)
    assert registry.get_sample_value("pi_search_uploads_total") == 16_000
    # cumulative buckets: every fast one at 5 ms and above, the slow one only in +Inf
    assert registry.get_sample_value("pi_search_stage_seconds_bucket", {"stage": "search", "le": "0.002"}) \
        == 0
    assert registry.get_sample_value("pi_search_stage_seconds_bucket", {"stage": "search", "le": "0.005"}) \
        == 16_000
    assert registry.get_sample_value("pi_search_stage_seconds_bucket", {"stage": "search", "le": "+Inf"}) \
        == 16_001
    assert b'pi_search_stage_seconds_count{stage="latency"} 0.0' in generate_latest(registry)



def test_agreement_holds_a_near_tie_until_the_new_leader_repeats():
    from pi_search.bundle.reader import Match
    from pi_search.pipeline.stabilise import Agreement

    def ms(*ids):
        return tuple(Match(i, i.upper(), None, 0.5 - n * 0.01) for n, i in enumerate(ids))

    ag = Agreement(3)
    assert [m.id for m in ag.update(ms("a", "b"), fresh=True)] == ["a", "b"]
    # b edges ahead for two frames: still a, with this frame's scores.
    held = ag.update(ms("b", "a"), fresh=False)
    assert [m.id for m in held] == ["a", "b"] and held[0].score == pytest.approx(0.49)
    assert [m.id for m in ag.update(ms("b", "a"), fresh=False)] == ["a", "b"]
    assert [m.id for m in ag.update(ms("b", "a"), fresh=False)] == ["b", "a"]  # third frame in a row
    # A single-frame blip does not switch, and a new item (fresh) switches at once.
    assert ag.update(ms("a", "b"), fresh=False)[0].id == "b"
    assert ag.update(ms("b", "a"), fresh=False)[0].id == "b"
    assert ag.update(ms("c", "d"), fresh=True)[0].id == "c"
    assert Agreement(1).update(ms("x"), fresh=False)[0].id == "x"


FAKE_PICAMERA2 = '''
"""picamera2 stand-in for a child process: the fake of tests/fakes.py, logging its calls to a file."""
import atexit, json, os, sys
sys.path.insert(0, os.environ["FAKES_DIR"])
import numpy as np
from fakes import FakeCameraState, fake_picamera2_module
y, x = np.mgrid[0:480, 0:640]
scene = np.stack([x * 255 // 639, y * 255 // 479, np.full_like(x, 90)], -1).astype(np.uint8)
_state = FakeCameraState(scene)
Picamera2 = fake_picamera2_module(_state).Picamera2
_log = os.environ["FAKE_CAMERA_LOG"]
def _write():
    with open(_log, "w") as f:
        calls = [c[0] for c in _state.calls if c[0] != "capture_array"]
        json.dump(calls + [f"open={_state.open_cameras}"], f)
atexit.register(_write)
'''


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_serve_closes_the_camera_on_signal(tmp_path, bundle_dir, sig):
    """`pi-search serve --source picamera2` in a child process, against the fake camera module."""
    import json
    import os
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "picamera2.py").write_text(FAKE_PICAMERA2)
    log = tmp_path / "camera.json"
    env = {**os.environ, "PYTHONPATH": str(mod_dir), "FAKES_DIR": str(Path(__file__).parent),
           "FAKE_CAMERA_LOG": str(log)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("pi-search")
    proc = subprocess.Popen([str(exe), "serve", "--source", "picamera2", "--bundle", str(bundle_dir),
                             "--port", str(port)], env=env, stderr=subprocess.PIPE)
    try:
        def healthy():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return proc.poll() is not None
        assert wait_until(healthy, 60) and proc.poll() is None
        proc.send_signal(getattr(signal, sig))
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    calls = json.loads(log.read_text())
    assert calls == ["__init__", "create_video_configuration", "configure", "start", "stop", "close",
                     "open=0"]
