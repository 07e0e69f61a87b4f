"""Faults injected while the daemon runs: a camera that fails, returns nothing or hangs; a stuck pipeline."""

from __future__ import annotations

import socket
import threading

import pytest
from fakes import FaultyCamera, kiosk, wait_until

from pi_search.bootstrap import frame_loop
from pi_search.config import load_config
from pi_search.pipeline.worker import MAX_HUNG_READS
from pi_search.web import create_app

pytestmark = pytest.mark.slow   # a real worker against cameras that fail on cue, timed by the watchdog


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    """A datagram socket standing in for systemd's, with a 1 s watchdog (pings every 0.33 s)."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()


def pings_within(sock, seconds: float) -> list[str]:
    """Every message received in the next ``seconds``."""
    import time

    out, end = [], time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return out


def drain(sock) -> None:
    sock.setblocking(False)
    try:
        while True:
            sock.recv(4096)
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)


def make(extractor, catalog, cam, **overrides):
    config = load_config(None, {"camera.timeout_s": 0.3, "gate.enabled": False, **overrides})
    svc = frame_loop(cam, extractor, catalog, config, source_name="faulty")   # pings systemd's watchdog
    return svc, create_app(kiosk(svc), config).test_client()


@pytest.mark.parametrize("fault, reason", [
    ("fail", "read error (cable unplugged?)"),
    ("empty", "the camera returned no frame"),
    ("hang", "reading a frame took over 0.3 s"),
])
def test_camera_fault_is_reported_and_recovers_by_itself(extractor, catalog, coffee, fault, reason):
    cam = FaultyCamera([coffee])
    svc, client = make(extractor, catalog, cam)
    svc.start()
    try:
        assert wait_until(lambda: client.get("/healthz").status_code == 200)
        opens = cam.opens
        cam.set(fault)
        assert wait_until(lambda: client.get("/healthz").status_code == 503)
        assert wait_until(lambda: reason in client.get("/healthz").get_json()["camera"]["reason"])
        body = client.get("/healthz").get_json()
        assert body["ok"] is False and any(reason in r for r in body["reasons"])
        # The page and the API keep answering, with the camera shown offline and why.
        assert client.get("/").status_code == 200
        status = client.get("/api/results").get_json()["status"]
        assert status["camera"]["up"] is False and reason in status["camera"]["reason"]
        assert wait_until(lambda: cam.opens >= opens + 2)  # reopened, again and again (with backoff)
        last = svc.latest().frame_id if svc.latest() else -1
        before = svc.stats.frames
        cam.set("ok")
        assert wait_until(lambda: client.get("/healthz").status_code == 200)
        assert wait_until(lambda: svc.stats.frames > before + 3 and svc.latest().frame_id != last)
        assert client.get("/api/results").get_json()["status"]["camera"]["up"] is True
    finally:
        cam.set("ok")
        svc.stop()


def test_a_hung_start_is_abandoned_too(extractor, catalog, coffee):
    cam = FaultyCamera([coffee])
    cam.set("hang")
    svc, client = make(extractor, catalog, cam)
    svc.start()
    try:
        assert wait_until(lambda: "opening the camera took over" in svc.camera_state()[1])
        assert client.get("/healthz").status_code == 503
        cam.set("ok")
        assert wait_until(lambda: client.get("/healthz").status_code == 200)
    finally:
        cam.set("ok")
        svc.stop()


def test_stop_returns_while_the_camera_hangs(extractor, catalog, coffee):
    cam = FaultyCamera([coffee])
    svc, _ = make(extractor, catalog, cam, **{"camera.timeout_s": 30.0})
    svc.start()
    try:
        assert wait_until(lambda: svc.latest() is not None)
        cam.set("hang")
        assert wait_until(lambda: cam.blocked == 1)
        t = threading.Thread(target=svc.stop)
        t.start()
        t.join(10)
        assert not t.is_alive()  # the worker waits on the reader, never inside the driver
        assert svc.camera_state() == (False, "stopped")
    finally:
        cam.set("ok")
        svc.stop()


class StallingExtractor:
    """The real extractor, made to block inside ``embed`` on cue (a stuck pipeline)."""

    def __init__(self, inner):
        self._x = inner
        self.size, self.dim, self.name = inner.size, inner.dim, inner.name
        self.stall = threading.Event()
        self.stalled = threading.Event()
        self.release = threading.Event()

    def embed(self, rgb224):
        if self.stall.is_set():
            self.stalled.set()
            self.release.wait(60)
        return self._x.embed(rgb224)


def test_watchdog_pings_at_cadence_and_stop_while_the_loop_is_stuck(extractor, catalog, coffee,
                                                                     notify_socket):
    import time

    x = StallingExtractor(extractor)
    cam = FaultyCamera([coffee])
    svc, _ = make(x, catalog, cam)
    svc.start()
    try:
        got, stamps = [], []
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            got += pings_within(notify_socket, 0.05)
            stamps += [time.monotonic()] * (len(got) - len(stamps))
        assert len(got) >= 3 and set(got) == {"WATCHDOG=1"}
        gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        assert max(gaps) < 1.0  # always within WatchdogSec

        x.stall.set()
        assert x.stalled.wait(10)
        drain(notify_socket)
        assert pings_within(notify_socket, 2.0) == []  # 2 watchdog periods: systemd would restart
        x.stall.clear()
        x.release.set()
        assert "WATCHDOG=1" in pings_within(notify_socket, 1.0)  # the loop moves again
    finally:
        x.release.set()
        svc.stop()


def test_camera_failures_keep_the_watchdog_fed(extractor, catalog, coffee, notify_socket):
    cam = FaultyCamera([coffee])
    svc, _ = make(extractor, catalog, cam)
    svc.start()
    try:
        assert wait_until(lambda: svc.latest() is not None)
        cam.set("fail")
        assert wait_until(lambda: not svc.camera_state()[0])
        drain(notify_socket)
        # Retrying a missing camera is progress: no restart loop while the cable is out.
        assert "WATCHDOG=1" in pings_within(notify_socket, 2.5)
    finally:
        svc.stop()


def test_a_wedged_camera_driver_stops_the_watchdog(extractor, catalog, coffee, notify_socket):
    cam = FaultyCamera([coffee])
    svc, client = make(extractor, catalog, cam)
    svc.start()
    try:
        assert wait_until(lambda: svc.latest() is not None)
        cam.set("hang")  # every read, after every reopen, blocks for good
        assert wait_until(lambda: svc.wedged() >= MAX_HUNG_READS)
        drain(notify_socket)
        assert pings_within(notify_socket, 2.0) == []
        body = client.get("/healthz").get_json()
        assert any("never returned" in r for r in body["reasons"])
        cam.set("ok")  # the driver comes back: the blocked reads return and the pings resume
        assert wait_until(lambda: svc.wedged() == 0)
        assert "WATCHDOG=1" in pings_within(notify_socket, 3.0)
        assert wait_until(lambda: client.get("/healthz").status_code == 200)
    finally:
        cam.set("ok")
        svc.stop()


def test_one_read_blocked_for_long_stops_the_watchdog(extractor, catalog, coffee, notify_socket, monkeypatch):
    import pi_search.pipeline.worker as service

    monkeypatch.setattr(service, "MAX_HUNG_READS", 100)  # only the age of the blocked read counts here
    monkeypatch.setattr(service, "WEDGED_RESTART_S", 1.0)
    cam = FaultyCamera([coffee])
    svc, client = make(extractor, catalog, cam)
    svc.start()
    try:
        assert wait_until(lambda: svc.latest() is not None)
        cam.set("hang")
        assert wait_until(svc.driver_wedged)
        drain(notify_socket)
        assert pings_within(notify_socket, 2.0) == []
        assert any("never returned" in r for r in client.get("/healthz").get_json()["reasons"])
        cam.set("ok")
        assert wait_until(lambda: not svc.driver_wedged())
        assert "WATCHDOG=1" in pings_within(notify_socket, 3.0)
    finally:
        cam.set("ok")
        svc.stop()
