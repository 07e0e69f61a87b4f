"""Every refusal is JSON ``{"error": ...}`` with the right status: the app's and the HTTP server's own."""

from __future__ import annotations

import contextlib
import json
import socket
import threading

import pytest
import server_daemon

MAX_VIEWERS = 2


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, bundle_dir):
    d = server_daemon.start(tmp_path_factory.mktemp("errors"), bundle_dir,
                            config=f"[server]\nmax_viewers = {MAX_VIEWERS}\nmax_upload_mb = 1\n")
    yield d
    assert d.stop() == 0, d.log_path.read_text()


def raw(port: int, data: bytes, *, read_all: bool = True) -> tuple[int, dict, bytes]:
    """Sends ``data`` as is; (status, lower-cased headers, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)  # may be refused (and closed) before all is sent: the answer is still there
        got = b""
        while b"\r\n\r\n" not in got or (read_all and not _complete(got)):
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, _, v in (x.partition(":") for x in lines[1:]))
    return int(lines[0].split()[1]), headers, body


def _complete(got: bytes) -> bool:
    head, _, body = got.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def assert_json_error(status: int, headers: dict, body: bytes, expected: int) -> str:
    assert status == expected, (status, body)
    assert headers.get("content-type", "").startswith("application/json"), headers
    message = json.loads(body)["error"]
    assert isinstance(message, str) and message and "\n" not in message
    return message


REQUESTS = [
    # (what, raw request, status)
    ("unknown page", b"GET /no/such/page HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 404),
    ("wrong method", b"DELETE /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 405),
    ("request line", b"NOT A REQUEST\r\n\r\n", 400),
    ("lower-case method", b"get / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    ("invalid UTF-8", b"GET /thumbs/\xff\xfe HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 400),
    ("header too large", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"x" * 40_000 + b"\r\n\r\n", 431),
    ("header flood", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-A: b\r\n" * 6000 + b"\r\n", 431),
    ("body too large (declared)",
     b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2000000000\r\n\r\n", 413),
    ("two lengths", b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n"
                    b"Content-Length: 4\r\n\r\nabcd", 400),
    ("bad chunk size", b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"zz\r\nhello\r\n0\r\n\r\n", 400),
    ("unknown transfer coding", b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                b"Transfer-Encoding: gzip\r\n\r\n", 400),
]


@pytest.mark.parametrize("what, data, status", REQUESTS, ids=[r[0] for r in REQUESTS])
def test_refusals_are_json(daemon, what, data, status):
    assert_json_error(*raw(daemon.port, data), status)


def test_upload_over_the_apps_limit_is_json_413(daemon):
    """A body within the server's limit but over max_upload_mb: refused by the app, also as JSON."""
    body = b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.jpg\"\r\n\r\n" \
        + b"\xff" * (1024 * 1024 + 100) + b"\r\n--b--\r\n"
    head = (b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: " + str(len(body)).encode())
    message = assert_json_error(*raw(daemon.port, head + b"\r\n\r\n" + body), 413)
    assert "MB" in message


def test_body_over_the_servers_limit_is_refused_as_it_arrives(daemon):
    """A body that was not declared (chunked) and grows past the limit: 413 JSON, the rest is not read."""
    chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    head = (b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
    assert_json_error(*raw(daemon.port, head + chunk * 40), 413)


def test_viewers_over_the_limit_get_json_503(daemon):
    held = []
    try:
        for _ in range(MAX_VIEWERS):
            s = socket.create_connection(("127.0.0.1", daemon.port), timeout=60)
            s.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert s.recv(12).startswith(b"HTTP/1.1 200")
            held.append(s)
        message = assert_json_error(*raw(daemon.port, b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                                      b"Connection: close\r\n\r\n"), 503)
        assert "viewers" in message
    finally:
        for s in held:
            s.close()


# ---------------------------------------------------------------- the server's own 500 and 503, in process
def _serve(app, sizes, queue_limits=None):
    from pi_search.web.http import Lanes, Server, adjustments

    lanes = Lanes(sizes, queue_limits)
    server = Server(app, host="127.0.0.1", port=0, dispatcher=lanes, max_connections=100,
                    **adjustments(1024 * 1024))
    lanes.start()
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    return server


def _stop(server):
    server.task_dispatcher.shutdown(timeout=5)
    server.close()


def test_an_exception_past_the_app_is_json_500():
    def app(environ, start_response):
        raise RuntimeError("boom")

    server = _serve(app, {"health": 1, "main": 1})
    try:
        message = assert_json_error(*raw(server.effective_port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 500)
        assert "boom" not in message  # no internals leak to the client
    finally:
        _stop(server)


def test_a_full_lane_answers_json_503_and_health_still_answers():
    """Requests beyond a lane's queue are refused at once; /healthz has threads of its own."""
    queue = 4
    release, started = threading.Event(), threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            started.set()
            release.wait(60)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    server = _serve(app, {"health": 1, "main": 1}, {"main": queue})
    port = server.effective_port
    held = []
    try:
        for i in range(1 + queue):  # one served (blocked), the rest fill the queue
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            held.append(s)
            assert i or started.wait(30)
        assert _wait(lambda: server.task_dispatcher.lanes["main"].queued() == queue)
        status, _, body = raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (status, body) == (200, b"ok")
        message = assert_json_error(*raw(port, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n"), 503)
        assert "busy" in message
        release.set()
        for s in held:
            assert s.recv(12).startswith(b"HTTP/1.1 200")
    finally:
        release.set()
        for s in held:
            s.close()
        _stop(server)


def _wait(predicate, timeout: float = 30.0) -> bool:
    from fakes import wait_until

    return wait_until(predicate, timeout)
