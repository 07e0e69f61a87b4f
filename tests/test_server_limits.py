"""The server's connection limits, in process: header deadline, per-address eviction, descriptor budget."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fakes import wait_until

from pi_search.web import http

ROOT = Path(__file__).resolve().parent.parent


def _app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


@pytest.fixture
def server():
    lanes = http.Lanes({"health": 1, "main": 2})
    srv = http.Server(_app, host="127.0.0.1", port=0, dispatcher=lanes, max_connections=40,
                      **http.adjustments(1024 * 1024))
    lanes.start()
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    yield srv
    lanes.shutdown(timeout=5)
    srv.close()


def closed_by_server(s: socket.socket) -> bool:
    """True once the server closed ``s`` (anything it said first is kept in ``said``)."""
    s.settimeout(0.05)
    try:
        while chunk := s.recv(65536):
            said.setdefault(s.fileno(), bytearray()).extend(chunk)
        return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


said: dict[int, bytearray] = {}


def get(port: int, source: str = "127.0.0.1") -> bytes:
    with socket.socket() as s:
        s.settimeout(60)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return got


def test_headers_that_never_finish_are_cut_off(server, monkeypatch):
    monkeypatch.setattr(http, "HEADER_TIMEOUT_S", 0.5)
    s = socket.create_connection(("127.0.0.1", int(server.effective_port)), timeout=60)
    idle = socket.create_connection(("127.0.0.1", int(server.effective_port)), timeout=60)
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: a")

        def check_then_trickle() -> bool:  # still sending: the activity does not extend the deadline
            if closed_by_server(s):
                return True
            s.send(b"a")
            return False

        assert wait_until(check_then_trickle, 30)
        answer = bytes(said.get(s.fileno(), b""))
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b'{"error": "the request\'s headers did not arrive within 0.5 s' in answer
        assert not closed_by_server(idle)  # a connection that sent nothing yet is idle, not slow
        assert get(int(server.effective_port)).endswith(b"ok")
    finally:
        s.close()
        idle.close()


def test_the_oldest_waiting_connection_of_a_crowded_address_gives_way(server, monkeypatch):
    monkeypatch.setattr(http, "MAX_PER_ADDRESS", 5)
    port = int(server.effective_port)
    crowd = []
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Half: ")  # half-sent headers, waiting
        crowd.append(s)
    other = socket.socket()
    other.bind(("127.0.0.2", 0))  # another address: not part of the crowd
    other.connect(("127.0.0.1", port))
    try:
        assert wait_until(lambda: len(server.active_channels) == 6, 30)
        assert get(port).endswith(b"ok")  # a sixth connection from the crowded address is served ...
        assert wait_until(lambda: closed_by_server(crowd[0]), 30)  # ... and the oldest one gave way
        assert not any(closed_by_server(s) for s in crowd[1:])
        assert not closed_by_server(other)
    finally:
        for s in [*crowd, other]:
            s.close()


def test_over_the_total_the_largest_crowd_gives_way(server, monkeypatch):
    monkeypatch.setattr(server, "max_connections", 5)
    port = int(server.effective_port)
    crowd = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(4)]
    lone = socket.socket()
    lone.bind(("127.0.0.3", 0))
    lone.connect(("127.0.0.1", port))
    try:
        assert wait_until(lambda: len(server.active_channels) == 5, 30)
        assert get(port, "127.0.0.4").endswith(b"ok")  # a new address: served; 127.0.0.1 gives way
        assert wait_until(lambda: closed_by_server(crowd[0]), 30)
        assert not any(closed_by_server(s) for s in crowd[1:])
        assert not closed_by_server(lone)
    finally:
        for s in [*crowd, lone]:
            s.close()


@pytest.mark.parametrize("soft, hard, budget", [(256, 256, 128), (1024, 1024, 896), (256, 4096, 2000)])
def test_connection_budget_follows_the_descriptor_limit(soft, hard, budget):
    """The soft limit is raised up to 4096 where the hard limit allows; 128 descriptors stay spare."""
    code = ("import resource; from pi_search.web.http import connection_budget; "
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard})); print(connection_budget())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}).stdout
    assert int(out) == budget


def test_a_body_that_never_finishes_is_cut_off(server, monkeypatch):
    monkeypatch.setattr(http, "REQUEST_TIMEOUT_S", 0.5)
    s = socket.create_connection(("127.0.0.1", int(server.effective_port)), timeout=60)
    try:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc")

        def trickle_then_check() -> bool:
            try:
                s.send(b"a")
            except OSError:
                return True
            return closed_by_server(s)

        assert wait_until(trickle_then_check, 30)
    finally:
        s.close()


def _blocking_app(release: threading.Event):
    """/api/results?wait=... waits for ``release`` (a long poll); anything else answers at once."""

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/api/results" and "wait=" in environ.get("QUERY_STRING", ""):
            release.wait(60)
        body = environ["PATH_INFO"].encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return app


def request(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return got


def test_long_polls_filling_an_address_leave_room_for_the_health_check(monkeypatch):
    """Every connection of 127.0.0.1 is a long poll being served (or queued): /healthz and /metrics from the
    same address are still answered; any other request on the headroom is a 503."""
    monkeypatch.setattr(http, "MAX_PER_ADDRESS", 12)
    release = threading.Event()
    lanes = http.Lanes({"health": 1, "main": 1, "poll": 4})
    srv = http.Server(_blocking_app(release), host="127.0.0.1", port=0, dispatcher=lanes, max_connections=200,
                      **http.adjustments(1024 * 1024))
    lanes.start()
    threading.Thread(target=srv.run, daemon=True).start()
    port = int(srv.effective_port)
    polls = []
    try:
        for _ in range(12):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(b"GET /api/results?wait=30 HTTP/1.1\r\nHost: x\r\n\r\n")
            polls.append(s)
        assert wait_until(lambda: sum(bool(c.requests) for c in srv.active_channels.values()) == 12, 30)
        for _ in range(3):
            assert request(port, "/healthz").startswith(b"HTTP/1.1 200"), "the health check was refused"
            assert request(port, "/metrics").startswith(b"HTTP/1.1 200")
        page = request(port, "/")
        assert page.startswith(b"HTTP/1.1 503") and b"too many connections" in page
        assert not any(closed_by_server(s) for s in polls)  # the polls being served are never closed
    finally:
        release.set()
        for s in polls:
            s.close()
        lanes.shutdown(timeout=5)
        srv.close()


def test_a_body_shorter_than_its_content_length_gets_a_408(monkeypatch):
    """The client announced 100 bytes and sent 3, then nothing: 408 Request Timeout with the reason, then
    the connection closes (not a silent close by the idle sweep)."""
    monkeypatch.setattr(http, "IDLE_TIMEOUT_S", 1.0)
    lanes = http.Lanes({"health": 1, "main": 2})
    srv = http.Server(_app, host="127.0.0.1", port=0, dispatcher=lanes, max_connections=40,
                      **{**http.adjustments(1024 * 1024), "channel_timeout": 1.0})
    lanes.start()
    threading.Thread(target=srv.run, daemon=True).start()
    try:
        with socket.create_connection(("127.0.0.1", int(srv.effective_port)), timeout=30) as s:
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
            got = b""
            while chunk := s.recv(65536):
                got += chunk
        assert got.startswith(b"HTTP/1.1 408 Request Timeout"), got
        assert b"body is shorter than its Content-Length" in got
    finally:
        lanes.shutdown(timeout=5)
        srv.close()
