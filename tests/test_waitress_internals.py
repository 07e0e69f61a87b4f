"""The waitress internals ``web/http.py`` builds on still exist with the parameters and members it uses.

waitress documents its server adjustments, not its channel, server and dispatcher classes; the project
subclasses them, so an upgrade that renames a method or changes a signature would break the appliance
quietly (a method never called, a deadline never enforced). pyproject.toml pins the release line these
checks pass on; a new release is taken by moving the pin once they pass.
"""

from __future__ import annotations

import inspect
import socket
import threading
from importlib.metadata import version

import waitress
from waitress import channel, server, task, utilities
from waitress.parser import HTTPRequestParser

from pi_search.web import http


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_waitress_is_the_pinned_release_line():
    import tomllib
    from pathlib import Path

    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    pin = next(d for d in project["project"]["dependencies"] if d.startswith("waitress"))
    spec = SpecifierSet(pin.removeprefix("waitress"))
    assert "<" in str(spec), f"{pin}: waitress must be pinned to a tested release line"
    assert Version(version("waitress")) in spec
    assert waitress.serve  # the package imports


def test_the_overridden_methods_keep_their_signatures():
    expected = {
        (channel.HTTPChannel, "__init__"): ["self", "server", "sock", "addr", "adj", "map"],
        (channel.HTTPChannel, "received"): ["self", "data"],
        (channel.HTTPChannel, "service"): ["self"],
        (channel.HTTPChannel, "readable"): ["self"],
        (channel.HTTPChannel, "del_channel"): ["self", "map"],
        (channel.HTTPChannel, "handle_close"): ["self"],
        (server.TcpWSGIServer, "set_socket_options"): ["self", "conn"],
        (server.BaseWSGIServer, "readable"): ["self"],
        (server.BaseWSGIServer, "maintenance"): ["self", "now"],
        (server.BaseWSGIServer, "handle_accept"): ["self"],
        (task.ErrorTask, "execute"): ["self"],
        (task.WSGITask, "get_environment"): ["self"],
        (task.ThreadedTaskDispatcher, "__init__"): ["self"],
        (task.ThreadedTaskDispatcher, "start_new_thread"): ["self", "target", "thread_no"],
        (task.ThreadedTaskDispatcher, "handler_thread"): ["self", "thread_no"],
        (task.ThreadedTaskDispatcher, "set_thread_count"): ["self", "count"],
        (task.ThreadedTaskDispatcher, "add_task"): ["self", "task"],
        (task.ThreadedTaskDispatcher, "shutdown"): ["self", "cancel_pending", "timeout"],
    }
    for (cls, name), params in expected.items():
        assert hasattr(cls, name), f"waitress {cls.__name__}.{name} is gone"
        assert _params(getattr(cls, name)) == params, f"waitress {cls.__name__}.{name} changed its parameters"
    base = _params(server.BaseWSGIServer.__init__)
    assert {"application", "map", "dispatcher", "adj", "kw"} <= set(base)
    # the classes it plugs its own into
    assert channel.HTTPChannel.task_class is task.WSGITask
    assert channel.HTTPChannel.error_task_class is task.ErrorTask
    assert server.BaseWSGIServer.channel_class is channel.HTTPChannel
    for name in ("code", "reason", "body"):
        assert hasattr(utilities.Error("x"), name)


def test_the_members_it_reads_exist_on_live_objects():
    """A real server, channel, dispatcher and parsed request carry the attributes http.py reads."""

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    lanes = http.Lanes({"health": 1, "main": 1})
    srv = http.Server(app, host="127.0.0.1", port=0, dispatcher=lanes, max_connections=10,
                      **http.adjustments(1 << 20))
    try:
        for name in ("active_channels", "next_channel_cleanup", "accepting", "adj", "effective_port",
                     "task_dispatcher", "_map"):
            assert hasattr(srv, name), f"waitress server has no {name}"
        assert srv.adj.cleanup_interval == 1 and srv.adj.channel_timeout == http.IDLE_TIMEOUT_S
        a, b = socket.socketpair()
        try:
            ch = http.Channel(srv, a, ("127.0.0.1", 1), srv.adj, map={})
            for name in ("requests", "request", "total_outbufs_len", "will_close", "close_when_flushed",
                         "creation_time", "last_activity", "connected", "socket", "addr", "adj"):
                assert hasattr(ch, name), f"waitress channel has no {name}"
        finally:
            a.close()
            b.close()
        lane = lanes.lanes["main"]
        for name in ("lock", "queue", "queue_cv", "threads"):
            assert hasattr(lane, name), f"waitress dispatcher has no {name}"
        assert isinstance(lane.queue_cv, threading.Condition)
        request = HTTPRequestParser(srv.adj)
        request.received(b"GET /healthz?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        for name in ("headers_finished", "completed", "error", "path", "command", "query", "empty"):
            assert hasattr(request, name), f"waitress request has no {name}"
        assert (request.path, request.command, request.query, request.completed) == ("/healthz", "GET", "x=1",
                                                                                      True)
    finally:
        lanes.shutdown(timeout=1)
        srv.close()
