"""Start-up: a busy port is one line and exit status 2; the page's address is printed once it is served."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import server_daemon
from fakes import ListSource, SourceFactory, free_port, kiosk

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
    """The race between the early check and the bind: serve() raises the same error, and starts nothing."""
    from pi_search.bootstrap import serve
    from pi_search.config import load_config
    from pi_search.pipeline.worker import Worker
    from pi_search.web import create_app

    config = load_config(None, {})
    service = Worker(SourceFactory(lambda n: ListSource([])), extractor, catalog, config)
    before, handler = threading.active_count(), signal.getsignal(signal.SIGTERM)
    with pytest.raises(PiSearchError, match=f"127.0.0.1:{busy_port} is already in use"):
        appliance = kiosk(service)
        serve(create_app(appliance, config), service, appliance, host="127.0.0.1", port=busy_port,
              max_viewers=2)
    assert threading.active_count() == before  # no server threads, no worker
    assert signal.getsignal(signal.SIGTERM) == handler


def test_address_printed_once_the_page_is_served(extractor, catalog, coffee):
    """``on_serving(url)`` runs once the socket listens: the page at that address answers."""
    from pi_search.bootstrap import serve
    from pi_search.config import load_config
    from pi_search.pipeline.worker import Worker
    from pi_search.web import create_app

    config = load_config(None, {"camera.fps": 5.0})
    service = Worker(SourceFactory(lambda n: ListSource([coffee], fps=5.0)), extractor, catalog, config)
    seen: dict = {}

    def on_serving(url: str) -> None:
        def fetch():
            try:
                with urllib.request.urlopen(url, timeout=60) as r:
                    seen["status"], seen["page"] = r.status, r.read()
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # stops serve() in the main thread

        seen["url"] = url
        threading.Thread(target=fetch, daemon=True).start()

    appliance = kiosk(service)
    serve(create_app(appliance, config), service, appliance, host="127.0.0.1", port=0, max_viewers=2,
          on_serving=on_serving)
    assert seen["url"].startswith("http://127.0.0.1:") and not seen["url"].endswith(":0/")
    assert seen["status"] == 200 and b"<html" in seen["page"].lower()


def _serve_until_announced(args: list[str], tmp_path: Path, command: str = "serve"):
    """Start the command; return (process, its 'open' line, stderr so far) once the line is printed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": ""}
    proc = subprocess.Popen([sys.executable, "-c", "from pi_search.cli import main; main()", command, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    announced = threading.Event()

    def pump():
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if line.startswith(f"pi-search {command}: open "):
                announced.set()
        announced.set()  # the process ended without it

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    announced.wait(120)
    return proc, reader, lines


def _wait_for_matches(url: str, headers: dict | None = None) -> None:
    """Until the replayed camera's first matches are served (a stop before that is not what is tested)."""
    import json

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as r:
            if json.loads(r.read()).get("matches"):
                return
        time.sleep(0.3)
    raise AssertionError(f"{url}: no matches within 60 s")


def _stop(proc, reader) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(5)


@pytest.mark.slow
def test_serve_prints_where_it_listens_once_ready(tmp_path, extractor):
    """``serve`` says where the page is once it answers there, and the runtimes' own log lines stay out."""

    from pi_search.ops.demo import demo_bundle, demo_data

    bundle = demo_bundle(extractor, tmp_path / "state", progress=False)
    port = free_port()
    frames = f"folder:{demo_data() / 'frames'}"
    proc, reader, lines = _serve_until_announced(
        ["--bundle", str(bundle), "--source", frames, "--port", str(port)], tmp_path)
    try:
        opened = [line for line in lines if line.startswith("pi-search serve: open ")]
        assert opened == [f"pi-search serve: open http://127.0.0.1:{port}/  (Ctrl+C stops)"], lines
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:  # listening already
            assert r.status == 200
        _wait_for_matches(f"http://127.0.0.1:{port}/api/results")
    finally:
        code = _stop(proc, reader)
    assert code == 0, lines
    assert not [line for line in lines if "XNNPACK" in line], lines


def test_page_urls_of_every_address_are_this_machines_addresses():
    """Bound to 0.0.0.0 (or ::), the printed addresses are 127.0.0.1 and each interface's IPv4 address as
    iproute2 lists it; any other bind prints its own URL."""
    from pi_search.web.server import machine_addresses, page_urls

    listed = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True)
    first_per_interface: dict[str, str] = {}
    for line in listed.stdout.splitlines():
        fields = line.split()
        first_per_interface.setdefault(fields[1], fields[3].split("/")[0])
    expected = [a for a in first_per_interface.values() if not a.startswith("127.")]
    assert sorted(machine_addresses()) == sorted(expected)
    for wildcard in ("http://0.0.0.0:8080/", "http://[::]:8080/"):
        assert page_urls(wildcard) == ["http://127.0.0.1:8080/", *(f"http://{a}:8080/" for a in
                                                                  machine_addresses())]
    assert page_urls("http://192.0.2.7:8081/") == ["http://192.0.2.7:8081/"]


@pytest.mark.parametrize(("args", "message"), [
    (["--host", "0.0.0.0"], "error: --host 0.0.0.0 is reachable from the network, so the page needs a token: "
                            "add --token $(openssl rand -hex 16), or leave --host out (this machine only)"),
    (["--host", "0.0.0.0", "--token", "short"], "error: --token is 5 characters long: use at least 16; make "
                                                "one with: --token $(openssl rand -hex 16)"),
])
def test_demo_on_the_network_names_its_own_token_option(tmp_path, args, message):
    """The refusal names ``--token``, the option ``demo`` has (it reads no config file); nothing is built."""
    from click.testing import CliRunner

    from pi_search.cli import main

    res = CliRunner().invoke(main, ["demo", *args, "--state-dir", str(tmp_path / "state")])
    assert res.exit_code == 2
    assert res.stderr.strip() == message
    assert "--token" in CliRunner().invoke(main, ["demo", "--help"]).output
    assert not (tmp_path / "state").exists()


@pytest.mark.slow
def test_demo_with_a_token_serves_every_address_and_asks_for_the_token(tmp_path):
    """``demo --host 0.0.0.0 --token T``: the page can be opened from a phone, with the token only."""
    import secrets


    token, port = secrets.token_hex(16), free_port()
    proc, reader, lines = _serve_until_announced(
        ["--host", "0.0.0.0", "--port", str(port), "--token", token, "--state-dir", str(tmp_path / "state")],
        tmp_path, command="demo")
    try:
        opened = [line for line in lines if line.startswith("pi-search demo: open ")]
        assert len(opened) == 1, lines
        assert f"http://127.0.0.1:{port}/" in opened[0] and "?token=TOKEN" in opened[0]
        assert token not in "\n".join(lines)  # the token is never printed
        assert [line for line in lines if "building the demo bundle" in line] == [
            f"pi-search demo: building the demo bundle in {tmp_path / 'state' / 'demo-bundle'} (once)"]
        assert not [line for line in lines if line.startswith("WARNING")], lines
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/results", timeout=30)
        assert denied.value.code in (401, 403)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/?token={token}", timeout=30) as r:  # a phone
            assert r.status == 200 and "pi_search_token" in (r.headers.get("Set-Cookie") or "")
        _wait_for_matches(f"http://127.0.0.1:{port}/api/results", {"Authorization": f"Bearer {token}"})
    finally:
        code = _stop(proc, reader)
    assert code == 0, lines


@pytest.mark.slow
def test_serve_given_a_catalog_says_so_and_where_to_build_its_bundle(tmp_path, catalog_dir):
    """``serve --bundle CATALOG`` (an easy slip) names the folder a catalog and suggests another --out; the
    suggested command works, and ``index build CATALOG --out CATALOG`` says the same instead of a riddle."""
    import shutil

    from click.testing import CliRunner

    from pi_search.bundle.reader import Bundle
    from pi_search.cli import main


    shop = tmp_path / "shop"
    shutil.copytree(catalog_dir, shop)
    frames = server_daemon.camera_folder(tmp_path / "frames", ("coffee",))
    proc, reader, lines = _serve_until_announced(
        ["--bundle", str(shop), "--source", f"folder:{frames}", "--port", str(free_port())], tmp_path)
    _stop(proc, reader)
    said = [line for line in lines if "is a catalog" in line]
    suggested = f"pi-search index build {shop} --out {tmp_path / 'shop-bundle'}"
    assert len(said) == 1, lines
    assert f"{shop} is a catalog (it holds catalog.csv and images/), not a bundle: build its bundle with " \
           f"{suggested}, then use {tmp_path / 'shop-bundle'}" in said[0]

    same = CliRunner().invoke(main, ["index", "build", str(shop), "--out", str(shop)])
    assert same.exit_code == 2
    assert same.stderr.strip() == (f"error: --out {shop} is a catalog (it holds catalog.csv and images/), "
                                   f"not a bundle: write the bundle to another folder, e.g. --out "
                                   f"{tmp_path / 'shop-bundle'} (nothing was replaced)")
    built = CliRunner().invoke(main, suggested.split()[1:])
    assert built.exit_code == 0, built.output
    with Bundle.open(tmp_path / "shop-bundle") as bundle:
        assert len(bundle) == 16
