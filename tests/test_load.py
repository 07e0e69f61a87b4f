"""Bounded load on loopback: 50 /api/results pollers and 10 MJPEG viewers against a real daemon."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import camera_view, load_photo
from fakes import serve_command, wait_until

from pi_search import images

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import bench_load  # noqa: E402  (the benchmark's own clients, run here for a bounded time)

pytestmark = pytest.mark.slow


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


def test_fifty_pollers_and_ten_viewers_hold(tmp_path, bundle_dir):
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in ("coffee", "chelsea", "rocket", "astronaut"):
        (frames / f"{name}.jpg").write_bytes(images.encode_jpeg(camera_view(load_photo(f"skimage:{name}"))))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    exe = Path(sys.executable).with_name("pi-search")
    log = tmp_path / "daemon.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            serve_command(exe, frames, bundle_dir, port),
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        assert wait_until(lambda: proc.poll() is not None or _healthy(url), 90), log.read_text()
        bench_load.run_load(port, 5, 50, 10, 0.1, processes=3)  # warm-up: the server threads' first use
        time.sleep(3)
        rss_before = bench_load.rss_bytes(proc.pid)
        inferred = bench_load.metric(port, "pi_search_inferences_total")
        load = bench_load.run_load(port, 10, 50, 10, 0.1, processes=3)
        inferred_during = bench_load.metric(port, "pi_search_inferences_total") - inferred
        time.sleep(3)
        rss_after = bench_load.rss_bytes(proc.pid)
        with urllib.request.urlopen(url + "/healthz", timeout=10) as r:
            health = json.loads(r.read())
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
    lat = sorted(load["latencies"])
    p50, p99 = lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000
    print(
        f"\n/api/results: {len(lat)} requests in 10 s, p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
        f"{len(load['errors'])} errors; MJPEG frames per viewer {min(load['frames'])}.."
        f"{max(load['frames'])}; "
        f"RSS {rss_before / 1e6:.1f} -> {rss_after / 1e6:.1f} MB; {inferred_during:.0f} inferences under load"
    )
    assert load["errors"] == []
    assert len(lat) > 1000  # every poller kept getting answers
    assert len(load["frames"]) == 10 and min(load["frames"]) >= 5  # every viewer kept getting frames
    assert inferred_during > 0  # the worker kept inferring
    assert rss_after <= rss_before * 1.10, (rss_before, rss_after)
    assert health["ok"] is True
