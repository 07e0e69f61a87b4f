"""Ctrl+C during ``index build``: one line says what was kept and what the next run does; exit status 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pi_search.embed.build import CHUNK, partial_dir
from pi_search.ops.demo import demo_data

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow   # real builds of the demo catalog (150 items), interrupted


def _build_interrupted(out: Path, when) -> tuple[int, str]:
    """Run the build; press Ctrl+C (SIGINT) once ``when(stderr so far)`` is true; its status and stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", "from pi_search.cli import main; main()", "index", "build",
                             str(demo_data()), "--out", str(out)], stderr=subprocess.PIPE, text=True, env=env)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not when("".join(seen)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=60)
    reader.join(10)
    return code, "".join(seen)


def _last_line(err: str) -> str:
    return err.replace("\r", "\n").strip().splitlines()[-1]


def test_ctrl_c_before_the_first_checkpoint(tmp_path):
    out = tmp_path / "bundle"
    code, err = _build_interrupted(out, lambda e: "embedding 150 items" in e)
    assert code == 130, err
    assert "Aborted!" not in err and "Traceback" not in err
    assert _last_line(err) == (f"interrupted: stopped before the first checkpoint ({CHUNK} items): nothing "
                               f"was kept, no bundle in {out}; the next run starts over")
    assert not out.exists()


def test_ctrl_c_after_a_checkpoint_says_the_next_run_resumes(tmp_path):
    out = tmp_path / "bundle"
    chunk = partial_dir(out) / "shard-000000.npz"
    code, err = _build_interrupted(out, lambda e: chunk.exists())
    assert code == 130, err
    kept = _last_line(err)
    assert kept.startswith("interrupted: ") and kept.endswith(
        f"embedded item(s) are kept in {partial_dir(out)}, no bundle in {out}; the same command again "
        "resumes from there"), err
    n = int(kept.split()[1])
    assert CHUNK <= n < 150
    again = subprocess.run([sys.executable, "-c", "from pi_search.cli import main; main()", "index", "build",
                            str(demo_data()), "--out", str(out)], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{150 - n} embedded, {n} resumed" in again.stderr
