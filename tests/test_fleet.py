"""``pi-search fleet``: three real daemons on 127.0.0.1; status of each, a signed bundle pushed to all, and a
push that stops at the first kiosk refusing the bundle."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import camera_view, load_photo
from fakes import free_port, request_json, serve_command, wait_until

from pi_search import images
from pi_search.bundle import signing
from pi_search.updates.install import install_bundle

EXE = Path(sys.executable).with_name("pi-search")

pytestmark = pytest.mark.slow


def _version(port: int):
    _, h = request_json(f"http://127.0.0.1:{port}/healthz")
    return (((h or {}).get("index") or {}).get("update") or {}).get("version")


@pytest.fixture
def kiosks(tmp_path, bundle_dir, extractor):
    keys = tmp_path / "keys"
    signing.keygen(keys, "shop")
    signing.keygen(keys, "thief")
    bundles = {}
    for name, key, v in (("v5", "shop", 5), ("v7", "shop", 7), ("stolen", "thief", 9)):
        bundles[name] = tmp_path / name
        shutil.copytree(bundle_dir, bundles[name])
        signing.sign(bundles[name], keys / f"{key}.key", version=v)
    frames = tmp_path / "frames"
    frames.mkdir()
    frames.joinpath("coffee.jpg").write_bytes(images.encode_jpeg(camera_view(load_photo("skimage:coffee"))))
    token = secrets.token_hex(16)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    procs, ports = [], []
    trusted = signing.load_trusted([keys / "shop.pub"])
    try:
        for n in range(3):
            home = tmp_path / f"kiosk{n}"
            home.mkdir()
            live = home / "bundle"
            install_bundle(bundles["v5"], live, trusted=trusted, extractor=extractor)
            port = free_port()
            conf = home / "config.toml"
            conf.write_text(f'[index]\nbundle = "{live}"\ntrusted_keys = ["{keys / "shop.pub"}"]\n'
                            f'[server]\ntoken = "{token}"\nport = {port}\n')
            with open(home / "daemon.log", "wb") as log:
                cmd = [*serve_command(EXE, frames, live, port), "--config", str(conf)]
                procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), home))
            ports.append(port)
        for port, (_proc, home) in zip(ports, procs, strict=True):
            assert wait_until(lambda p=port: _version(p) == 5, 120), (home / "daemon.log").read_text()
        yield {"ports": ports, "token": token, "bundles": bundles, "env": env, "homes": [h for _, h in procs]}
    finally:
        for proc, _ in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, _ in procs:
            proc.wait(30)


def _fleet(k, *args):
    return subprocess.run([str(EXE), "fleet", *map(str, args), "--token", k["token"]], capture_output=True,
                          text=True, env=k["env"], timeout=600)


def test_fleet_status_push_and_a_stop_at_the_first_refusal(kiosks):
    k = kiosks
    hosts = [f"127.0.0.1:{p}" for p in k["ports"]]
    p = _fleet(k, "status", *hosts, "--json")
    rows = json.loads(p.stdout)["kiosks"]
    assert p.returncode == 0 and [r["version"] for r in rows] == [5, 5, 5], p.stdout + p.stderr
    assert {r["signer"] for r in rows} == {"shop"} and {r["slot"] for r in rows} == {"a"}
    p = _fleet(k, "status", *hosts, f"127.0.0.1:{free_port()}")
    assert p.returncode == 1 and p.stdout.count("DOWN") == 1 and "no answer" in p.stdout, p.stdout

    p = _fleet(k, "push", k["bundles"]["v7"], *hosts)
    assert p.returncode == 0, p.stderr
    assert [_version(port) for port in k["ports"]] == [7, 7, 7]
    assert p.stderr.count("serving version 7") == 3

    p = _fleet(k, "push", k["bundles"]["stolen"], *hosts[1:])
    assert p.returncode == 2 and "unknown key" in p.stderr, p.stderr
    assert f"installed on none, not tried on {hosts[2]}" in p.stderr, p.stderr
    assert "\n" not in p.stderr.strip()
    assert [_version(port) for port in k["ports"]] == [7, 7, 7]
    for home in k["homes"]:
        assert "Traceback" not in (home / "daemon.log").read_text()


def test_push_needs_the_token(kiosks):
    k = kiosks
    status, body = request_json(f"http://127.0.0.1:{k['ports'][0]}/api/bundle/install", data=b"")
    assert status == 401, body
