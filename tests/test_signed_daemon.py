"""A real daemon with ``[index] trusted_keys``: it serves signed bundles put in place by install and rollback,
refuses one copied over by hand without a signature, and shows slot, version and signer on /healthz."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import camera_view, load_photo
from fakes import free_port, request_json, serve_command, signed_kiosk, wait_until

from pi_search import images
from pi_search.bundle import signing

EXE = Path(sys.executable).with_name("pi-search")

pytestmark = pytest.mark.slow


def _update(url: str) -> dict:
    status, h = request_json(url + "/healthz")
    return (h or {}).get("index") or {}


def test_a_daemon_with_trusted_keys(tmp_path, bundle_dir, extractor):
    signed, live, trusted, conf = signed_kiosk(tmp_path, bundle_dir, extractor)
    frames = tmp_path / "frames"
    frames.mkdir()
    frames.joinpath("coffee.jpg").write_bytes(images.encode_jpeg(camera_view(load_photo("skimage:coffee"))))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "daemon.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    with open(log, "wb") as fh:
        proc = subprocess.Popen([*serve_command(EXE, frames, live, port), "--config", str(conf)], stdout=fh,
                                stderr=subprocess.STDOUT, env=env)
    try:
        assert wait_until(lambda: _update(url).get("update", {}).get("version") == 5, 90), log.read_text()
        ix = _update(url)
        assert ix["update"]["signer"] == "shop" and ix["update"]["slot"] == "a" and ix["items"] == 16
        # an unsigned bundle copied over the served files by hand
        served = live.resolve()
        for p in bundle_dir.iterdir():
            shutil.copy2(p, served / p.name)
        (served / signing.SIGNATURE).unlink()
        assert wait_until(lambda: (_update(url).get("refused") or "").startswith(f"{live}: unsigned"), 30), \
            log.read_text()
        assert _update(url)["items"] == 16 and _update(url)["update"]["version"] == 5
        p = subprocess.run([str(EXE), "index", "install", str(signed[7]), "--config", str(conf)],
                           capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == 0 and "version 7 signed by shop" in p.stderr, p.stderr
        assert wait_until(lambda: _update(url).get("update", {}).get("version") == 7, 30), log.read_text()
        assert _update(url)["refused"] is None
        p = subprocess.run([str(EXE), "index", "rollback", "--config", str(conf)], capture_output=True,
                           text=True, env=env, timeout=120)
        # slot a was written over by hand: its unsigned files are refused, so nothing is switched
        assert p.returncode == 2 and "unsigned" in p.stderr and "\n" not in p.stderr.strip(), p.stderr
        p = subprocess.run([str(EXE), "index", "install", str(signed[5]), "--config", str(conf),
                            "--allow-downgrade"], capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == 0, p.stderr
        assert wait_until(lambda: _update(url).get("update", {}).get("version") == 5, 30), log.read_text()
        p = subprocess.run([str(EXE), "index", "rollback", "--config", str(conf)], capture_output=True,
                           text=True, env=env, timeout=120)
        assert p.returncode == 0, p.stderr
        assert wait_until(lambda: _update(url).get("update", {}).get("version") == 7, 30), log.read_text()
        assert _update(url)["update"]["last_event"]["kind"] == "rolled back"
        # installed under a config without trusted_keys: the daemon refuses it, so install switches back
        loose = tmp_path / "loose.toml"
        loose.write_text(f'[index]\nbundle = "{live}"\n[server]\nport = {port}\n')
        p = subprocess.run([str(EXE), "index", "install", str(bundle_dir), "--config", str(loose),
                            "--wait-healthy", "20"], capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == 2 and "did not serve it" in p.stderr and "unsigned" in p.stderr \
            and "switched back" in p.stderr, p.stderr
        assert signing.parse(live, trusted).version == 7
        assert _update(url)["update"]["version"] == 7
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert "Traceback" not in log.read_text()
