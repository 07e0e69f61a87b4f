"""sd_notify messages reach a real datagram socket named by NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from pi_search import notify


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
