"""Starts a real `pi-search serve` for the HTTP benchmarks: the demo bundle and a still or moving scene."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_bundle(state: Path) -> Path:
    """The demo bundle (built once in ``state`` with the shipped model)."""
    sys.path.insert(0, str(ROOT))
    from pi_search.model.extractor import Extractor
    from pi_search.ops.demo import demo_bundle as build

    return build(Extractor(), state, progress=False)


def scene(folder: Path, frames: int) -> Path:
    """A camera folder with the first ``frames`` demo frames (1: a still scene)."""
    sys.path.insert(0, str(ROOT))
    from pi_search.ops.demo import demo_data

    folder.mkdir(parents=True, exist_ok=True)
    for src in sorted((demo_data() / "frames").glob("*.jpg"))[:frames]:
        shutil.copy(src, folder / src.name)
    return folder


def env() -> dict:
    """The environment that runs this checkout's package (before any installed one)."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def serve_cmd(frames: Path, bundle: Path, port: int, fps: float, *extra: str) -> list[str]:
    exe = Path(sys.executable).with_name("pi-search")
    return [str(exe), "serve", "--source", f"folder:{frames}", "--bundle", str(bundle), "--port", str(port),
            "--fps", str(fps), *extra]


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


class Daemon:
    """A `pi-search serve` subprocess; ``with Daemon(...) as d:`` waits until /healthz says ok."""

    def __init__(self, frames: Path, bundle: Path, log_path: Path, *, fps: float = 5.0,
                 port: int | None = None, extra: tuple[str, ...] = ()):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        with open(log_path, "wb") as fh:
            self.proc = subprocess.Popen(serve_cmd(frames, bundle, self.port, fps, *extra), stdout=fh,
                                         stderr=subprocess.STDOUT, env=env())

    def __enter__(self) -> Daemon:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited: {self.log_path.read_text()[-3000:]}")
            if healthy(self.port):
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the daemon did not become healthy: {self.log_path.read_text()[-3000:]}")

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def get(self, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
        """(status, body) of a GET on a new connection; HTTP errors are answers too."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def metric(self, name: str) -> float:
        text = self.get("/metrics")[1].decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/task"))

    def sockets(self) -> int:
        """Open sockets of the daemon (its listening socket and its connections)."""
        n = 0
        for fd in os.listdir(f"/proc/{self.proc.pid}/fd"):
            with contextlib.suppress(OSError):  # closed meanwhile
                n += os.readlink(f"/proc/{self.proc.pid}/fd/{fd}").startswith("socket:")
        return n
