"""A hostile web page in the kiosk's Chromium attacks the appliance on 127.0.0.1 with real browser headers."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from conftest import camera_view, load_photo
from fakes import free_port as _free_port
from fakes import serve_command, wait_until

from pi_search import images

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
PI_SEARCH = [sys.executable, "-c", "from pi_search.cli import main; main()"]  # this checkout's code

EVIL_PAGE = """<!doctype html><title>cheap flights</title>
<iframe name="sink"></iframe>
<form id="f" method="post" enctype="multipart/form-data" target="sink" action="{app}/api/items/coffee">
  <input name="title" value="HACKED"><input name="price" value="0.01"></form>
<iframe sandbox="allow-scripts allow-forms" srcdoc="<form id=g method=post enctype=multipart/form-data
  action='{app}/api/items/apple'><input name=title value=SANDBOXED></form>
  <script>document.getElementById('g').submit()</script>"></iframe>
<img src="{app}/stream.mjpg">
<script>
  document.getElementById("f").submit();
  const form = new FormData();
  form.append("title", "FETCHED");
  fetch("{app}/api/items/orange", {{method: "POST", mode: "no-cors", body: form}});
  fetch("{app}/api/compact", {{method: "POST", mode: "no-cors"}});
</script>
"""



def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return None, b""


@pytest.fixture
def daemon(tmp_path, bundle_dir):
    """`pi-search -v serve` over a teachable copy of the bundle: (url, log path)."""
    live = tmp_path / "bundle"
    shutil.copytree(bundle_dir, live)
    frames = tmp_path / "frames"
    frames.mkdir()
    frames.joinpath("coffee.jpg").write_bytes(images.encode_jpeg(camera_view(load_photo("skimage:coffee"))))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "daemon.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([*PI_SEARCH, "-v", *serve_command("pi-search", frames, live, port)[1:]],
                                stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert wait_until(lambda: proc.poll() is not None or _get(url + "/healthz")[0] == 200, 90), \
            log.read_text()
        assert proc.poll() is None, log.read_text()
        yield url, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def evil_site(daemon):
    """Another web site (served from this machine) whose page attacks the appliance."""
    page = EVIL_PAGE.format(app=daemon[0]).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the http.server API)
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://evil.test:{srv.server_address[1]}/"
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=800,480", f"--user-data-dir={tmp_path / 'chromium'}",
                "--host-resolver-rules=MAP evil.test 127.0.0.1"):  # evil.test: a name pointing at the Pi
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    yield drv
    drv.quit()


def _changes(url: str) -> list:
    status, body = _get(url + "/api/items")
    assert status == 200
    return [(i["id"], i["title"]) for i in json.loads(body)["items"]]


def _viewers(url: str) -> float:
    text = _get(url + "/metrics")[1].decode()
    return float(next(line.split()[-1] for line in text.splitlines()
                      if line.startswith("pi_search_stream_viewers ")))


def test_a_hostile_page_changes_nothing_and_holds_no_preview(daemon, evil_site, browser):
    url, log = daemon
    browser.get(evil_site)
    expected = ["POST /api/items/coffee", "POST /api/items/apple", "POST /api/items/orange",
                "POST /api/compact", "GET /stream.mjpg"]
    # Every attack reached the daemon and was refused there (not just left unsent by the browser).
    assert wait_until(lambda: all(f"refused {e} " in log.read_text() for e in expected), 30), log.read_text()
    text = log.read_text()
    assert "refused POST /api/items/apple from another site (Origin 'null'" in text  # the sandboxed frame
    assert f"Origin '{evil_site.rstrip('/')}'" in text
    assert _changes(url) == [] and _viewers(url) == 0
    assert '"compacting":false' in _get(url + "/api/items")[1].decode().replace(" ", "")


def test_a_rebound_name_gets_nothing_and_the_own_page_still_works(daemon, browser):
    url, log = daemon
    port = url.rsplit(":", 1)[1]
    # evil.test resolves to 127.0.0.1, as after a DNS rebinding: same port, so the browser sees one origin
    browser.get(f"http://evil.test:{port}/")
    assert "allowed_hosts" in browser.find_element("tag name", "body").text
    status = browser.execute_async_script(
        "const done = arguments[0];"
        "fetch('/api/items/coffee', {method: 'DELETE'}).then(r => done(r.status), e => done(String(e)));")
    assert status == 400
    read = browser.execute_async_script(
        "const done = arguments[0]; fetch('/api/results').then(r => done(r.status), e => done(String(e)));")
    assert read == 400
    assert _changes(url) == []
    # the appliance's own page, in the same browser, may change an item
    browser.get(url + "/teach")
    status = browser.execute_async_script(
        "const done = arguments[0]; const f = new FormData(); f.append('title', 'Espresso');"
        "fetch('/api/items/coffee', {method: 'POST', body: f})"
        ".then(r => done(r.status), e => done(String(e)));")
    assert status == 200
    assert _changes(url) == [("coffee", "Espresso")]
