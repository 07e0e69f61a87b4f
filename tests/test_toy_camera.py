"""A camera defined in one module outside the package (tests/toy_camera.py) registers itself and is opened,
listed and checked like the shipped sources."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pi_search.camera import SOURCES, known_specs, open_source
from pi_search.camera.guard import GuardedSource
from pi_search.errors import SourceError

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.fixture
def toy():
    """The "pattern" source, registered for one test and gone again after it."""
    assert "pattern" not in SOURCES
    module = importlib.import_module("toy_camera")
    yield module
    SOURCES.pop("pattern", None)
    sys.modules.pop("toy_camera", None)


def test_the_shipped_sources_are_listed_as_before():
    assert known_specs() == ("picamera2, opencv:N (webcam), opencv:PATH (video file) or folder:DIR (images)")
    with pytest.raises(SourceError, match="unknown source 'pattern:1'"):
        open_source("pattern:1")


def test_a_camera_in_one_module_is_opened_by_its_spec_and_gives_moving_frames(toy):
    src = open_source("pattern:5", width=320, height=240, fps=200)
    assert isinstance(src, toy.PatternSource)
    with GuardedSource(src, timeout_s=5.0) as cam:   # as the worker holds every source
        frames = [cam.read() for _ in range(3)]
    assert [f.index for f in frames] == [0, 1, 2]
    assert frames[0].rgb.shape == (240, 320, 3) and not frames[0].rgb.flags.writeable
    assert (frames[0].rgb != frames[1].rgb).any()
    assert "pattern:SEED (moving test pattern)" in known_specs()
    with pytest.raises(SourceError, match=r"unknown source 'pattern:x'.*pattern:SEED"):
        open_source("pattern:x")


@pytest.mark.slow
def test_doctor_opens_a_registered_camera_it_has_no_rule_for(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}
    cli = [sys.executable, "-c", "import toy_camera; from pi_search.cli import main; main()"]
    args = ["doctor", "--source", "pattern:3", "--json", "--bundle", str(tmp_path / "none")]
    out = subprocess.run([*cli, *args], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    assert checks["camera"]["status"] == "OK", checks["camera"]
    assert "pattern:3: opens, 640x480 frames" in checks["camera"]["detail"]
