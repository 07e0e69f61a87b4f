"""Every way of leaving /stream.mjpg frees its viewer slot and its server thread."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import server_daemon
from fakes import wait_until

pytestmark = pytest.mark.slow   # real waitress servers and clients that misbehave for seconds

MAX_VIEWERS = 3
GET = b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, bundle_dir):
    # A moving scene (four photos in turn) at 10 fps: parts keep coming, so a client that stops reading
    # fills its buffers soon.
    d = server_daemon.start(tmp_path_factory.mktemp("stream"), bundle_dir, fps=10,
                            config=f"[server]\nmax_viewers = {MAX_VIEWERS}\n")
    yield d
    assert d.stop() == 0, d.log_path.read_text()


def viewers(daemon) -> int:
    return int(daemon.metric("pi_search_stream_viewers"))


def open_viewer(port: int, **opts) -> socket.socket:
    s = socket.socket()
    for opt, value in opts.items():
        s.setsockopt(socket.SOL_SOCKET, getattr(socket, opt), value)
    s.settimeout(60)
    s.connect(("127.0.0.1", port))
    s.sendall(GET)
    return s


def dechunk(data: bytes) -> bytes:
    """The body bytes of a chunked HTTP/1.1 response read so far (a cut-off last chunk as far as it goes)."""
    out, i = b"", 0
    while True:
        j = data.find(b"\r\n", i)
        if j < 0:
            return out
        size = int(data[i:j].split(b";")[0], 16)
        out += data[j + 2: j + 2 + size]
        if size == 0 or j + 2 + size + 2 > len(data):
            return out
        i = j + 2 + size + 2


def read_part(s: socket.socket) -> bytes:
    """The first complete JPEG part of the stream (complete once the boundary after it arrived)."""
    got = b""
    while True:
        head, _, rest = got.partition(b"\r\n\r\n")
        body = dechunk(rest) if b"chunked" in head.lower() else rest
        if body.count(b"--frame\r\n") >= 2:
            break
        chunk = s.recv(65536)
        assert chunk, got[:300]
        got += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    part = body.split(b"--frame\r\n")[1]
    assert b"Content-Type: image/jpeg" in part
    jpeg = part.partition(b"\r\n\r\n")[2]
    assert jpeg.startswith(b"\xff\xd8") and jpeg.rstrip(b"\r\n").endswith(b"\xff\xd9")
    return jpeg


def fill_then_check(daemon) -> None:
    """All slots usable: MAX_VIEWERS real viewers get frames at once, then leave."""
    held = [open_viewer(daemon.port) for _ in range(MAX_VIEWERS)]
    try:
        for s in held:
            read_part(s)
    finally:
        for s in held:
            s.close()
    assert wait_until(lambda: viewers(daemon) == 0, 30)


def test_head_takes_no_slot(daemon):
    for _ in range(MAX_VIEWERS * 4):
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=60) as s:
            s.sendall(b"HEAD /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = s.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200") and b"multipart/x-mixed-replace" in answer
    assert viewers(daemon) == 0
    fill_then_check(daemon)


def test_dropped_connection_frees_its_slot(daemon):
    s = open_viewer(daemon.port)
    read_part(s)
    assert viewers(daemon) == 1
    s.close()
    assert wait_until(lambda: viewers(daemon) == 0, 30)
    fill_then_check(daemon)


def test_reset_connection_frees_its_slot(daemon):
    import struct

    s = open_viewer(daemon.port)
    read_part(s)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
    s.close()
    assert wait_until(lambda: viewers(daemon) == 0, 30)
    fill_then_check(daemon)


def test_client_that_never_reads_frees_its_slot(daemon):
    s = open_viewer(daemon.port, SO_RCVBUF=4096)  # reads nothing after the request
    try:
        assert wait_until(lambda: viewers(daemon) == 1, 30)
        assert wait_until(lambda: viewers(daemon) == 0, 120), "a stalled viewer kept its slot"
        fill_then_check(daemon)
    finally:
        s.close()


def test_client_that_half_closes_after_the_request_frees_its_slot(daemon):
    s = open_viewer(daemon.port)
    s.shutdown(socket.SHUT_WR)
    try:
        assert wait_until(lambda: viewers(daemon) == 0, 30)
    finally:
        s.close()
    fill_then_check(daemon)


def test_half_closed_request_still_gets_its_answer(daemon):
    """Only previews and long polls watch for a client leaving; other requests are answered as before."""
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=60) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert got.startswith(b"HTTP/1.1 200") and b'"ok"' in got


@pytest.mark.browser
def test_closed_browser_tab_frees_its_slot(daemon, tmp_path):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    assert not missing, f"install Debian's chromium and chromium-driver (./install.sh --dev): {missing}"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--no-first-run",
                f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        drv.get(daemon.url + "/teach")
        first = drv.current_window_handle
        drv.switch_to.new_window("tab")
        drv.get(daemon.url + "/teach")
        assert wait_until(lambda: viewers(daemon) == 2, 60)  # each teach tab shows the live preview
        drv.close()  # the second tab
        drv.switch_to.window(first)
        assert wait_until(lambda: viewers(daemon) == 1, 30)
    finally:
        drv.quit()
    assert wait_until(lambda: viewers(daemon) == 0, 30)
    fill_then_check(daemon)
