"""A running daemon refuses cross-site and DNS-rebinding requests sent as raw HTTP; its own page's pass."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import camera_view, load_photo
from fakes import free_port as _free_port
from fakes import serve_command, wait_until

from pi_search import images

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# This checkout's pi_search (not whichever one the venv's pi-search script was installed from).
PI_SEARCH = [sys.executable, "-c", "from pi_search.cli import main; main()"]



def raw(port: int, method: str, path: str, headers: dict, body: bytes = b"") -> tuple[int, dict, bytes]:
    """One request written byte for byte (no client library fills in or fixes headers)."""
    head = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
    head += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall("\r\n".join(head).encode("latin-1") + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    top, _, payload = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), fields, payload


def form(**fields: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
             for k, v in fields.items()]
    return ("".join(parts) + f"--{boundary}--\r\n").encode(), f"multipart/form-data; boundary={boundary}"


@pytest.fixture
def daemon(tmp_path, bundle_dir):
    live = tmp_path / "bundle"
    shutil.copytree(bundle_dir, live)
    frames = tmp_path / "frames"
    frames.mkdir()
    frames.joinpath("coffee.jpg").write_bytes(images.encode_jpeg(camera_view(load_photo("skimage:coffee"))))
    cfg = tmp_path / "config.toml"
    cfg.write_text('[server]\nallowed_hosts = ["pi.local"]\n')
    port = _free_port()
    log = tmp_path / "daemon.log"
    with open(log, "wb") as fh:
        cmd = [*PI_SEARCH, *serve_command("pi-search", frames, live, port)[1:], "--config", str(cfg)]
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})

    def up() -> bool:
        try:
            return raw(port, "GET", "/healthz", {"Host": f"127.0.0.1:{port}"})[0] == 200
        except OSError:
            return False

    try:
        assert wait_until(lambda: proc.poll() is not None or up(), 90), log.read_text()
        assert proc.poll() is None, log.read_text()
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _changes(port: int) -> list:
    status, _, body = raw(port, "GET", "/api/items", {"Host": f"127.0.0.1:{port}"})
    assert status == 200
    return [(i["id"], i["title"], i["deleted"]) for i in json.loads(body)["items"]]


def test_cross_site_and_rebinding_requests_change_nothing(daemon):
    port = daemon
    own = f"127.0.0.1:{port}"
    body, ctype = form(title="HACKED", price="0.01")
    # a sandboxed iframe in the kiosk's browser renames an item
    status, fields, out = raw(port, "POST", "/api/items/coffee", {"Host": own, "Origin": "null",
                                                                  "Content-Type": ctype}, body)
    assert status == 403 and fields["Content-Type"] == "application/json"
    assert "refused" in json.loads(out)["error"]
    # another site posts a form to the appliance
    hostile = {"Host": own, "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site",
               "Content-Type": ctype}
    status, _, _ = raw(port, "POST", "/api/items/coffee", hostile, body)
    assert status == 403
    # a page whose name was rebound to 127.0.0.1 deletes an item: its own Host and Origin match each other
    rebound = {"Host": f"evil:{port}", "Origin": f"http://evil:{port}"}
    status, fields, out = raw(port, "DELETE", "/api/items/coffee", rebound)
    assert status == 400 and "allowed_hosts" in json.loads(out)["error"]
    status, _, _ = raw(port, "GET", "/api/results", {"Host": f"evil:{port}"})
    assert status == 400  # nor can it read anything
    assert _changes(port) == []
    # the names the appliance answers to still work, and its own page may change items
    assert raw(port, "GET", "/", {"Host": f"pi.local:{port}"})[0] == 200
    assert raw(port, "GET", "/", {"Host": f"localhost:{port}"})[0] == 200
    body, ctype = form(title="Espresso")
    status, _, out = raw(port, "POST", "/api/items/coffee", {"Host": own, "Origin": f"http://{own}",
                                                             "Content-Type": ctype}, body)
    assert status == 200, out
    assert _changes(port) == [("coffee", "Espresso", False)]
    status, _, out = raw(port, "GET", "/nope", {"Host": own})
    assert status == 404 and json.loads(out) == {"error": "no such page: /nope"}
