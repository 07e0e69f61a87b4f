"""Nobody gets in, nothing gets out: CSP on every answer, tokens, no outbound connections, offline page."""

from __future__ import annotations

import hmac
import io
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fakes import ListSource, SourceFactory, kiosk, serve_command, wait_until
from fakes import free_port as _free_port

from pi_search import images
from pi_search.config import load_config
from pi_search.pipeline.worker import Worker
from pi_search.web import create_app

EXE = Path(sys.executable).with_name("pi-search")


@pytest.fixture
def make(extractor, catalog, coffee):
    made = []

    def _make(**overrides):
        config = load_config(None, overrides)
        svc = Worker(SourceFactory(lambda n: ListSource([coffee], fps=30.0)), extractor, catalog, config)
        made.append(svc)
        svc.start()
        assert wait_until(lambda: svc.latest() is not None)
        return svc, create_app(kiosk(svc), config).test_client()

    yield _make
    for s in made:
        s.stop()


# ---------------------------------------------------------------- CSP and tokens
def test_every_answer_carries_a_same_origin_csp(make, coffee):
    _, client = make()
    answers = [
        client.get(p)
        for p in (
            "/",
            "/teach",
            "/api/results",
            "/healthz",
            "/metrics",
            "/static/app.js",
            "/static/style.css",
            "/thumbs/coffee",
            "/frame.jpg",
            "/nope",
        )
    ]
    answers.append(
        client.post(
            "/api/search",
            data={"image": (io.BytesIO(images.encode_jpeg(coffee)), "a.jpg")},
            content_type="multipart/form-data",
        )
    )
    answers.append(client.post("/api/search", data=b"x", content_type="text/plain"))
    for r in answers:
        csp = r.headers.get("Content-Security-Policy", "")
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";") if d.strip())
        assert directives["default-src"] == "'self'" and directives["script-src"] == "'self'", csp
        assert directives["connect-src"] == "'self'" and directives["object-src"] == "'none'"
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "http:" not in csp and "https:" not in csp and "*" not in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_page_and_scripts_name_no_other_origin(make):
    _, client = make()
    for path in ("/", "/teach", "/static/app.js", "/static/style.css"):
        body = client.get(path).get_data(as_text=True)
        assert "http://" not in body and "https://" not in body and "//cdn" not in body, path
        assert "<script>" not in body  # only <script src=...> tags, no inline code


def test_token_is_compared_in_constant_time(make, monkeypatch):
    calls = []
    real = hmac.compare_digest

    def recording(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    token = "9f2c7d1e4a8b3c6f0e5d2a71"
    _, client = make(**{"server.host": "0.0.0.0", "server.token": token})
    for given, status in ((token[:-1] + "x", 401), (token[:1], 401), ("", 401), (token, 200)):
        r = client.post("/api/reload", headers={"Authorization": f"Bearer {given}"} if given else {})
        assert r.status_code == status, (given, r.get_json())
    assert len(calls) >= 4 and all(b == token.encode() for _, b in calls)


def test_token_guards_state_changes_off_loopback(make):
    token = "c41e8b2f7a9d03e6b5f1"
    _, client = make(**{"server.host": "0.0.0.0", "server.token": token})
    assert client.post("/api/reload").status_code == 401
    assert client.post("/api/items", data={"title": "x"}).status_code == 401
    assert client.delete("/api/items/coffee").status_code == 401
    assert client.post("/api/compact").status_code == 401
    assert client.get("/healthz").status_code == 200  # health only: no state, no catalog
    auth = {"Authorization": f"Bearer {token}"}
    assert client.post("/api/reload", headers=auth).status_code == 200


# ---------------------------------------------------------------- nothing goes out
AUDIT_HOOK = r'''
"""Records every socket address this process connects, sends, binds or resolves (a test's audit hook)."""
import os, sys
_LOG = os.environ["NET_AUDIT_LOG"]
_EVENTS = {"socket.connect", "socket.sendto", "socket.sendmsg", "socket.bind", "socket.getaddrinfo",
           "socket.gethostbyname", "socket.gethostbyaddr"}
def _hook(event, args):
    if event not in _EVENTS:
        return
    if event in ("socket.connect", "socket.sendto", "socket.bind"):
        sock, addr = args[0], args[1]
        fam = getattr(sock, "family", None)
        fam = getattr(fam, "name", str(fam))
    elif event == "socket.sendmsg":
        fam, addr = "?", args[1] if len(args) > 1 else None
    else:
        fam, addr = "dns", args[0]
    with open(_LOG, "a") as f:
        f.write(repr((event, fam, addr if isinstance(addr, (str, tuple)) else repr(addr))) + "\n")
sys.addaudithook(_hook)
'''


def _is_local(family: str, addr) -> bool:
    if family == "AF_UNIX":
        return True
    host = addr[0] if isinstance(addr, tuple) else addr
    if host in (None, "", "localhost"):
        return True
    try:
        return ipaddress.ip_address(str(host).strip("[]")).is_loopback
    except ValueError:
        return False



@pytest.mark.slow
def test_the_daemon_makes_no_outbound_connections(tmp_path, bundle_dir, coffee):
    """Every route used, uploads and a reload included, with an audit hook recording each socket address."""
    import ast

    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "sitecustomize.py").write_text(AUDIT_HOOK)
    audit = tmp_path / "net.log"
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "a.jpg").write_bytes(images.encode_jpeg(coffee))
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(mods),
        "NET_AUDIT_LOG": str(audit),
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
    }
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "daemon.log", "wb") as log:
        proc = subprocess.Popen(
            serve_command(EXE, frames, bundle_dir, port),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:

        def get(path, data=None, headers=None):
            req = urllib.request.Request(url + path, data=data, headers=headers or {})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, r.read(2_000_000)
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

        assert wait_until(lambda: proc.poll() is not None or _up(url), 90), (
            tmp_path / "daemon.log"
        ).read_text()
        for path in (
            "/",
            "/teach",
            "/static/app.js",
            "/api/results",
            "/api/results?after=0&wait=1",
            "/healthz",
            "/metrics",
            "/thumbs/coffee",
            "/frame.jpg",
            "/api/items",
            "/nope",
        ):
            assert get(path)[0] in (200, 404), path
        with urllib.request.urlopen(url + "/stream.mjpg", timeout=10) as r:
            assert r.read(1000).startswith(b"--frame")
        boundary = "xyz"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
                "Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + images.encode_jpeg(coffee)
            + f"\r\n--{boundary}--\r\n".encode()
        )
        status, answer = get(
            "/api/search", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        assert status == 200 and json.loads(answer)["matches"][0]["id"] == "coffee"
        assert get("/api/reload", b"")[0] == 200
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
    events = [ast.literal_eval(line) for line in audit.read_text().splitlines()]
    binds = [e for e in events if e[0] == "socket.bind" and e[1] == "AF_INET"]
    assert ("socket.bind", "AF_INET", ("127.0.0.1", port)) in binds  # the hook saw the daemon's own socket
    assert any(e[0] == "socket.connect" and e[1] == "AF_UNIX" for e in events)  # and the notify socket
    outbound = [e for e in events if e[0] != "socket.bind" and not _is_local(e[1], e[2])]
    assert outbound == [], outbound
    assert [e for e in binds if not _is_local(e[1], e[2])] == []


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


# ---------------------------------------------------------------- the page with the network cut off
@pytest.mark.slow
@pytest.mark.browser
def test_page_works_in_a_browser_with_the_network_cut_off(tmp_path, bundle_dir, coffee):
    """Chromium with every non-local host unresolvable and a dead proxy: the page still shows its matches,
    and every request it made went to the daemon itself."""
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service as DriverService
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "a.jpg").write_bytes(images.encode_jpeg(coffee))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "daemon.log", "wb") as log:
        proc = subprocess.Popen(
            serve_command(EXE, frames, bundle_dir, port),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--proxy-server=http://127.0.0.1:9",  # any request not to loopback goes nowhere
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    drv = None
    try:
        assert wait_until(lambda: proc.poll() is not None or _up(url), 90), (
            tmp_path / "daemon.log"
        ).read_text()
        drv = webdriver.Chrome(service=DriverService("/usr/bin/chromedriver"), options=opts)
        # The cut is real: another origin cannot be reached from this browser.
        with pytest.raises(WebDriverException, match="ERR_PROXY_CONNECTION_FAILED|ERR_NAME_NOT_RESOLVED"):
            drv.get("http://example.com/")
        drv.get_log("performance")  # from here on: only what the page itself asks for
        drv.get_log("browser")
        drv.get(url + "/")
        wait = WebDriverWait(drv, 30)
        first = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#matches .card .title") or False)[0]
        assert first.text == "Cup of coffee"
        wait.until(lambda d: d.execute_script("return document.getElementById('preview').naturalWidth") > 0)
        wait.until(
            lambda d: d.execute_script(
                "return [...document.querySelectorAll('#matches img')]"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
        )
        urls = []
        for entry in drv.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg["method"] == "Network.requestWillBeSent":
                urls.append(msg["params"]["request"]["url"])
        page_urls = urls
        assert any(u.startswith(url + "/static/") for u in page_urls)
        foreign = [
            u for u in page_urls if not u.startswith(url + "/") and not u.startswith(("data:", "blob:"))
        ]
        assert foreign == [], foreign
        errors = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []  # no CSP violation, no failed request
    finally:
        if drv is not None:
            drv.quit()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
