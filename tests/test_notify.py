"""sd_notify messages reach a real datagram socket named by NOTIFY_SOCKET."""

from __future__ import annotations

import json
import os
import socket
import uuid

import pytest

from pi_search.ops import notify


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    """A bound datagram socket standing in for systemd's; yields a function that reads one message."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))

    def receive() -> str:
        return sock.recv(4096).decode("utf-8")

    yield receive
    sock.close()


def test_ready_sends_ready(notify_socket):
    assert notify.ready() is True
    assert notify_socket() == "READY=1"


def test_ready_with_status(notify_socket):
    assert notify.ready("serving 42 items\non port 8080")
    assert notify_socket() == "READY=1\nSTATUS=serving 42 items on port 8080"


def test_watchdog_stopping_status(notify_socket):
    notify.watchdog()
    notify.stopping()
    notify.status("camera lost, retrying")
    assert notify_socket() == "WATCHDOG=1"
    assert notify_socket() == "STOPPING=1"
    assert notify_socket() == "STATUS=camera lost, retrying"


def test_abstract_socket(monkeypatch):
    name = f"pi-search-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.watchdog() is True
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_no_socket_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.ready() is False
    assert notify.watchdog() is False
    assert notify.stopping() is False
    assert notify.status("x") is False


def test_unreachable_socket_does_not_raise(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert notify.ready() is False


def test_watchdog_interval(monkeypatch):
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert notify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert notify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert notify.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    monkeypatch.setenv("WATCHDOG_USEC", "garbage")
    assert notify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert notify.watchdog_interval() is None


@pytest.mark.slow
def test_daemon_speaks_the_notify_protocol(tmp_path):
    """Under a notify unit: READY=1 once serving, WATCHDOG=1 from the frame loop, STOPPING=1 on SIGTERM."""
    import signal
    import subprocess
    import sys
    import urllib.error
    import urllib.request
    from pathlib import Path

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(90)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("pi-search")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-c", "from pi_search.cli import main; main()"]
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "3000000"}
    env.pop("WATCHDOG_PID", None)
    with open(tmp_path / "daemon.log", "w") as log:
        proc = subprocess.Popen([*cmd, "demo", "--port", str(port), "--state-dir", str(tmp_path / "state")],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            first = sock.recv(4096).decode()
            assert first.startswith("READY=1\nSTATUS=serving on http://127.0.0.1:"), first
            # Ready means serving: the page answers at once, with the bundle loaded.
            # The camera may still be starting (503 until its first frame); model and index are up.
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
                    health = json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                assert exc.code == 503
                health = json.loads(exc.read())
            assert health["model"]["up"] and health["index"]["up"] and health["index"]["items"] > 0, health
            messages = []
            while messages.count("WATCHDOG=1") < 2:
                messages.append(sock.recv(4096).decode())
            assert all(m == "WATCHDOG=1" or m.startswith("STATUS=") for m in messages), messages
            proc.send_signal(signal.SIGTERM)
            rest = []
            while not any(m.startswith("STOPPING=1") for m in rest):
                rest.append(sock.recv(4096).decode())
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            sock.close()
    assert (tmp_path / "state" / "demo-bundle").is_dir(), (tmp_path / "daemon.log").read_text()
