"""The runtimes' own log lines (LiteRT's XNNPACK note, OpenCV's capture warnings) stay off stderr."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes import free_port

from pi_search.ops.demo import demo_bundle, demo_data

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow   # real commands in their own processes, on the demo bundle


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from pi_search.cli import main; main()", *args]


ENV = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": ""}


@pytest.fixture(scope="module")
def demo(tmp_path_factory, extractor) -> Path:
    return demo_bundle(extractor, tmp_path_factory.mktemp("state"), progress=False)


def test_query_prints_no_runtime_note(demo):
    photo = sorted((demo_data() / "images").rglob("*.jpg"))[0]
    res = subprocess.run(_cli("query", "--bundle", str(demo), str(photo)), capture_output=True, text=True,
                         env=ENV, timeout=120)
    assert res.returncode == 0, res.stderr
    assert str(photo) in res.stdout and " 1. " in res.stdout
    assert "XNNPACK" not in res.stderr, res.stderr
    assert res.stderr == "", res.stderr  # nothing else either: the answer is on stdout


def test_a_missing_webcam_is_one_line_of_ours_not_opencvs(demo, tmp_path):
    """``serve --source opencv:N`` with no such webcam retries quietly: the project's line, no [ WARN ...]."""
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen(_cli("serve", "--source", "opencv:9", "--bundle", str(demo), "--port",
                                     str(free_port())), stdout=log, stderr=subprocess.STDOUT, env=ENV)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and "Ctrl+C stops" not in (tmp_path / "serve.log").read_text():
                time.sleep(0.5)
            time.sleep(6)  # a few retries of the camera
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    text = (tmp_path / "serve.log").read_text()
    assert "cannot open webcam 9" in text, text
    assert "[ WARN" not in text and "cap_v4l" not in text and "VIDEOIO" not in text, text
    assert "XNNPACK" not in text, text
