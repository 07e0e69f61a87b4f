"""Start-up: a busy port is one line and exit status 2; the page's address is printed once it is served."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
import server_daemon
from fakes import ListSource, SourceFactory

from pi_search.errors import PiSearchError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s.getsockname()[1]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": ""}
    return subprocess.run([sys.executable, "-c", "from pi_search.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def assert_busy_error(res: subprocess.CompletedProcess, port: int) -> None:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: 127.0.0.1:{port} is already in use (another pi-search?); pass --port N or "
                      f"stop the other program (ss -ltnp 'sport = :{port}')"], res.stderr
    assert "open http" not in res.stderr + res.stdout


def test_serve_on_a_busy_port(busy_port, tmp_path, bundle_dir):
    frames = server_daemon.camera_folder(tmp_path / "frames", ("coffee",))
    assert_busy_error(cli("serve", "--source", f"folder:{frames}", "--bundle", str(bundle_dir),
                          "--port", str(busy_port)), busy_port)


def test_demo_on_a_busy_port_fails_before_building(busy_port, tmp_path):
    res = cli("demo", "--port", str(busy_port), "--state-dir", str(tmp_path / "state"))
    assert_busy_error(res, busy_port)
    assert not (tmp_path / "state" / "demo-bundle").exists()


def test_port_taken_after_the_check_is_the_same_one_line_error(busy_port, extractor, catalog):
    """The race between the early check and the bind: run() raises the same error, and starts nothing."""
    from pi_search.config import load_config
    from pi_search.pipeline.worker import Worker
    from pi_search.web import create_app
    from pi_search.web.server import run

    config = load_config(None, {})
    service = Worker(SourceFactory(lambda n: ListSource([])), extractor, catalog, config)
    before, handler = threading.active_count(), signal.getsignal(signal.SIGTERM)
    with pytest.raises(PiSearchError, match=f"127.0.0.1:{busy_port} is already in use"):
        run(create_app(service, config), service, host="127.0.0.1", port=busy_port, max_viewers=2)
    assert threading.active_count() == before  # no server threads, no worker
    assert signal.getsignal(signal.SIGTERM) == handler


def test_address_printed_once_the_page_is_served(extractor, catalog, coffee):
    """``on_serving(url)`` runs once the socket listens: the page at that address answers."""
    from pi_search.config import load_config
    from pi_search.pipeline.worker import Worker
    from pi_search.web import create_app
    from pi_search.web.server import run

    config = load_config(None, {"camera.fps": 5.0})
    service = Worker(SourceFactory(lambda n: ListSource([coffee], fps=5.0)), extractor, catalog, config)
    seen: dict = {}

    def on_serving(url: str) -> None:
        def fetch():
            try:
                with urllib.request.urlopen(url, timeout=60) as r:
                    seen["status"], seen["page"] = r.status, r.read()
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # stops run() in the main thread

        seen["url"] = url
        threading.Thread(target=fetch, daemon=True).start()

    run(create_app(service, config), service, host="127.0.0.1", port=0, max_viewers=2, on_serving=on_serving)
    assert seen["url"].startswith("http://127.0.0.1:") and not seen["url"].endswith(":0/")
    assert seen["status"] == 200 and b"<html" in seen["page"].lower()
