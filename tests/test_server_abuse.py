"""The daemon under attack on loopback: 500 slow-header connections, and a raw HTTP fuzzer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import server_daemon

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import fuzz_http  # noqa: E402
from support.slow_clients import SlowClients  # noqa: E402

pytestmark = pytest.mark.slow   # a fuzzer against a real server


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, bundle_dir):
    d = server_daemon.start(tmp_path_factory.mktemp("abuse"), bundle_dir)
    yield d
    assert d.stop() == 0, d.log_path.read_text()
    log = d.log_path.read_text()
    assert "Traceback" not in log, log[-3000:]


def test_500_slow_header_connections_do_not_lock_out_a_normal_client(daemon):
    """Headers sent one byte a second from one address: the page, health and results still answer."""
    slow = SlowClients(daemon.port, 500).start()
    try:
        from fakes import wait_until

        assert wait_until(lambda: slow.opened >= 500, 60)
        for _ in range(3):
            for path in ("/", "/healthz", "/api/results"):
                status, body = daemon.get(path, timeout=60)
                assert status == 200, (path, body[:200])
                if path == "/api/results":
                    assert "matches" in json.loads(body)
        # The server ends slow-header connections (header deadline, or eviction of the oldest waiting).
        assert wait_until(lambda: slow.closed_by_server > 0, 60)
    finally:
        slow.stop()
    assert daemon.get("/healthz")[0] == 200


def test_fuzzer_no_5xx_every_error_json_nothing_left_behind(daemon):
    threads, sockets = daemon.threads(), fuzz_http.settle(daemon.sockets, 1, 40.0)  # 1: the listening one
    res = fuzz_http.fuzz(daemon.port, 360, seed=7, workers=12)
    assert sum(res["by_status"].values()) == 360
    assert res["server_errors"] == [], res["by_status"]
    assert res["not_json"] == [], res["by_status"]
    assert sum(v for k, v in res["by_status"].items() if k.startswith("4")) > 100  # the cases were refused
    assert daemon.proc.poll() is None
    assert fuzz_http.settle(daemon.threads, threads) == threads, (threads, daemon.threads())
    after = fuzz_http.settle(daemon.sockets, sockets, 40.0)
    assert after <= sockets, (sockets, after)  # no connection left open
    assert daemon.get("/healthz")[0] == 200
