"""`pi-search demo`: builds the demo bundle once, then serves live matches from the replayed camera."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fakes import free_port as _free_port

from pi_search.bundle.reader import Bundle
from pi_search.ops.demo import KEY_FILE, demo_bundle, demo_data

pytestmark = pytest.mark.slow   # the demo builds its bundle and serves it


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError):
        return None, None


def _catalog_ids() -> list[str]:
    with open(demo_data() / "catalog.csv", newline="") as f:
        return [row["id"] for row in csv.DictReader(f)]


def test_demo_bundle_built_once_and_reused(tmp_path, extractor):
    rows = _catalog_ids()
    out = demo_bundle(extractor, tmp_path, progress=False)
    assert out == tmp_path / "demo-bundle"
    with Bundle.open(out, extractor=extractor) as bundle:
        assert len(bundle) == len(rows)
    manifest = out / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    assert demo_bundle(extractor, tmp_path, progress=False) == out
    assert manifest.stat().st_mtime_ns == stamp  # reused, not rebuilt
    key = (tmp_path / KEY_FILE).read_text()
    (tmp_path / KEY_FILE).write_text("stale\n")
    demo_bundle(extractor, tmp_path, progress=False)   # a stale key: built again, or kept when the build
    assert (tmp_path / KEY_FILE).read_text() == key     # finds its own catalog, model and options unchanged
    with Bundle.open(out, extractor=extractor) as bundle:
        assert len(bundle) == len(rows)


@pytest.mark.slow
def test_demo_serves_matches(tmp_path):
    port = _free_port()
    exe = Path(sys.executable).with_name("pi-search")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-c", "from pi_search.cli import main; main()"]
    log = open(tmp_path / "demo.log", "w")  # noqa: SIM115 (closed in finally, after the process ends)
    proc = subprocess.Popen([*cmd, "demo", "--port", str(port), "--state-dir", str(tmp_path / "state")],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NOTIFY_SOCKET": ""})
    base = f"http://127.0.0.1:{port}"
    health = results = None
    try:
        deadline = time.monotonic() + 60  # the appliance's promise: live matches within a minute of start
        while time.monotonic() < deadline and proc.poll() is None:
            status, health = _get(base + "/healthz")
            if status == 200:
                _, results = _get(base + "/api/results")
                if results and results.get("matches"):
                    break
            time.sleep(0.5)
        assert proc.poll() is None, (tmp_path / "demo.log").read_text()
        assert health is not None, (tmp_path / "demo.log").read_text()
        assert results and results["matches"], results
        ids = set(_catalog_ids())
        for m in results["matches"]:
            assert m["id"] in ids
            assert -1.0 <= m["score"] <= 1.0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
    assert code == 0, (tmp_path / "demo.log").read_text()
    assert (tmp_path / "state" / "demo-bundle" / "manifest.json").is_file()
