"""Start and stop: one-line refusals for a bad model, bundle or bind; SIGTERM and SIGHUP while serving."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import CATALOG_PHOTOS, camera_view, load_photo, write_catalog
from fakes import free_port as _free_port
from fakes import wait_until

from pi_search import images

MODELS = Path(__file__).resolve().parent.parent / "models"
INT8 = MODELS / "efficientnet_lite0_int8.tflite"
FLOAT = MODELS / "efficientnet_lite0_float32.tflite"
EXE = Path(sys.executable).with_name("pi-search")



def _copy(bundle_dir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "bundle"
    shutil.copytree(bundle_dir, d)
    return d


def _edit_manifest(d: Path, fn) -> None:
    m = json.loads((d / "manifest.json").read_text())
    fn(m)
    (d / "manifest.json").write_text(json.dumps(m))


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ---------------------------------------------------------------- refusals at start
def _model(tmp_path: Path, kind: str) -> Path:
    if kind == "missing":
        return tmp_path / "nope.tflite"
    if kind == "corrupt":
        p = tmp_path / "corrupt.tflite"
        p.write_bytes(os.urandom(5000))
        return p
    if kind == "truncated":
        p = tmp_path / "truncated.tflite"
        p.write_bytes(INT8.read_bytes()[:100_000])
        return p
    return FLOAT  # a real model, but not the one the bundle was built with


def _serve(args: list[str]):
    from click.testing import CliRunner

    from pi_search.cli import main

    return CliRunner().invoke(main, ["serve", "--source", "folder:/nonexistent", *args])


def _one_line_error(res, *patterns: str) -> None:
    out = res.output.strip()
    assert res.exit_code == 2, (res.exit_code, out, res.exception)
    assert out.startswith("error: ") and "\n" not in out and "Traceback" not in out, out
    for p in patterns:
        assert re.search(p, out), (p, out)


@pytest.mark.parametrize("kind, patterns", [
    ("missing", ["nope.tflite: model file not found", "--model FILE"]),
    ("corrupt", ["corrupt.tflite: not a TFLite model", "use a .tflite file"]),
    ("truncated", ["truncated.tflite: .*corrupt or truncated", "copy it again"]),
])
def test_bad_model_is_one_line_and_exit_2(tmp_path, bundle_dir, kind, patterns):
    res = _serve(["--bundle", str(bundle_dir), "--model", str(_model(tmp_path, kind))])
    _one_line_error(res, *patterns)


@pytest.mark.parametrize("host, token, patterns", [
    ("0.0.0.0", "", [r"host = '0.0.0.0' is reachable from the network but no \[server\] token is set",
                     "openssl rand -hex 16", "bind 127.0.0.1"]),
    ("192.168.1.20", "", ["no \\[server\\] token is set"]),
    ("::", "", ["no \\[server\\] token is set"]),
    ("0.0.0.0", "short", ["token is 5 characters long: use at least 16", "use e.g. openssl rand -hex 16"]),
])
def test_network_bind_without_a_token_refuses_to_start(tmp_path, bundle_dir, host, token, patterns):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[server]\nhost = "{host}"\ntoken = "{token}"\n')
    res = _serve(["--config", str(cfg), "--bundle", str(bundle_dir)])
    _one_line_error(res, *patterns)


def test_loopback_needs_no_token():
    from pi_search.config import ServerConfig, check_bind

    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost", "[::1]"):
        check_bind(ServerConfig(host=host))  # no error
    check_bind(ServerConfig(host="0.0.0.0", token="3e9b0c7f1a5d8e24"))


@pytest.mark.slow
def test_refusal_in_a_real_process_prints_no_traceback(tmp_path, bundle_dir):
    for args in (["--model", str(_model(tmp_path, "truncated"))], ["--host", "0.0.0.0"]):
        p = subprocess.run([str(EXE), "serve", "--bundle", str(bundle_dir), "--source", "folder:/x", *args],
                           capture_output=True, text=True, timeout=120)
        errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
        assert p.returncode == 2 and len(errors) == 1, p.stderr
        assert "Traceback" not in p.stderr and p.stdout == ""


# ---------------------------------------------------------------- SIGTERM during a build
@pytest.mark.slow   # builds a real bundle: over 1.5 s
def test_sigterm_while_the_bundle_is_written_removes_it(tmp_path, catalog_dir, bundle_dir, extractor,
                                                        monkeypatch):
    """SIGTERM arrives in the middle of writing the new bundle: nothing half-written stays, the old serves."""
    import pi_search.bundle.write as index
    from pi_search.embed.build import build_bundle
    from pi_search.ops.shutdown import EXIT_TERMINATED, terminate_as_exit

    d = _copy(bundle_dir, tmp_path)
    manifest = (d / "manifest.json").read_bytes()
    real = index.write_items

    def write_items_then_terminate(*args, **kwargs):
        real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (the main) thread right away
        time.sleep(5)  # never reached in full: the signal raises SystemExit
        raise AssertionError("SIGTERM was not turned into an exit")

    monkeypatch.setattr(index, "write_items", write_items_then_terminate)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exc, terminate_as_exit():   # other options: a bundle to write again
        build_bundle(catalog_dir, d, extractor, progress=False, whiten=False)
    assert exc.value.code == EXIT_TERMINATED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "bundle.partial"]
    assert (d / "manifest.json").read_bytes() == manifest
    assert not [p for p in (tmp_path / "bundle.partial").iterdir() if ".tmp" in p.name]
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back


@pytest.mark.slow
def test_sigterm_during_index_build_keeps_the_old_bundle_serving_and_no_temp_files(tmp_path, bundle_dir):
    photos = [(f"{pid}-{n}", t, p, s) for n in range(12) for pid, t, p, s in CATALOG_PHOTOS]
    catalog = write_catalog(tmp_path / "big", photos)
    out = _copy(bundle_dir, tmp_path / "live")
    manifest = (out / "manifest.json").read_bytes()
    (tmp_path / "d").mkdir()
    daemon, url, log = _daemon(tmp_path / "d", out)  # serving the bundle being replaced
    proc = subprocess.Popen([str(EXE), "index", "build", str(catalog), "--out", str(out)],
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    started = lambda: any("embedding 192 items" in ln for ln in lines)  # noqa: E731
    assert wait_until(lambda: started() or proc.poll() is not None, 120)
    time.sleep(1.0)  # well inside the embedding of 192 photos
    assert proc.poll() is None, lines
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 128 + signal.SIGTERM
    reader.join(5)
    assert "Traceback" not in "".join(lines)
    assert (out / "manifest.json").read_bytes() == manifest  # the old bundle, untouched
    try:  # and still served, also after a reload
        daemon.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "SIGHUP: bundle reloaded, 16 items" in log.read_text(), 30), log.read_text()
        assert _status(url + "/healthz") == 200
        assert _json(url + "/api/results")["status"]["catalog_items"] == len(CATALOG_PHOTOS)
    finally:
        assert _stop(daemon) == 0
    left = sorted(p.name for p in (tmp_path / "live").iterdir() if not p.name.startswith("bundle.changes"))
    assert left in (["bundle"], ["bundle", "bundle.partial"]), left  # .partial: finished chunks, to resume
    partial = tmp_path / "live" / "bundle.partial"
    if partial.is_dir():
        assert not [p.name for p in partial.iterdir() if ".tmp" in p.name]


# ---------------------------------------------------------------- the running daemon
FRAMES_OK = 2


def _daemon(tmp_path: Path, bundle: Path, *extra: str, env: dict | None = None):
    """`pi-search -v serve` replaying a coffee cup; returns (process, url, log path)."""
    frames = tmp_path / "frames"
    frames.mkdir(exist_ok=True)
    frames.joinpath("coffee.jpg").write_bytes(images.encode_jpeg(camera_view(load_photo("skimage:coffee"))))
    port = _free_port()
    log = tmp_path / "daemon.log"
    cmd = [str(EXE), "-v", "serve", "--source", f"folder:{frames}", "--bundle", str(bundle), "--port",
           str(port), "--fps", "5", *extra]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    assert wait_until(lambda: _status(url + "/healthz") == 200 or proc.poll() is not None, 90), \
        log.read_text()
    assert proc.poll() is None, log.read_text()
    return proc, url, log


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def _json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _stop(proc) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@pytest.mark.slow
def test_sighup_maps_a_rebuilt_bundle(tmp_path, bundle_dir, extractor):
    from pi_search.embed.build import build_bundle

    d = _copy(bundle_dir, tmp_path)
    proc, url, log = _daemon(tmp_path, d)
    try:
        assert _json(url + "/api/results")["status"]["catalog_items"] == len(CATALOG_PHOTOS)
        small = write_catalog(tmp_path / "small", CATALOG_PHOTOS[:4])
        build_bundle(small, d, extractor, progress=False)
        proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "SIGHUP: bundle reloaded, 4 items" in log.read_text(), 30), log.read_text()
        assert wait_until(lambda: _json(url + "/api/results")["status"]["catalog_items"] == 4)
        assert _status(url + "/healthz") == 200 and proc.poll() is None
        (d / "manifest.json").write_text("{cut short")  # a half-copied bundle, then SIGHUP: refused
        proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "SIGHUP: keeping the bundle in use" in log.read_text(), 30)
        assert _status(url + "/healthz") == 200
        assert _json(url + "/api/results")["status"]["catalog_items"] == 4
    finally:
        assert _stop(proc) == 0, log.read_text()


@pytest.mark.slow
def test_sigterm_during_uploads_exits_cleanly_and_closes_the_camera(tmp_path, bundle_dir):
    """Uploads are being inferred when SIGTERM arrives: exit 0, the camera closed, no temporary files."""
    from test_service import FAKE_PICAMERA2

    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "picamera2.py").write_text(FAKE_PICAMERA2)
    spool = tmp_path / "tmp"
    spool.mkdir()
    camera_log = tmp_path / "camera.json"
    env = {**os.environ, "PYTHONPATH": str(mods), "FAKES_DIR": str(Path(__file__).parent),
           "FAKE_CAMERA_LOG": str(camera_log), "TMPDIR": str(spool)}
    proc, url, log = _daemon(tmp_path, bundle_dir, "--source", "picamera2", env=env)
    big = images.encode_jpeg(load_photo("skimage:astronaut"), 95) + b"\0" * 600_000  # spooled to a file
    statuses: list[int | None] = []
    stop = threading.Event()

    def upload():
        import http.client

        boundary = "b0undary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n"
                f"Content-Type: image/jpeg\r\n\r\n").encode() + big + f"\r\n--{boundary}--\r\n".encode()
        while not stop.is_set():
            try:
                c = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=10)
                c.request("POST", "/api/search", body,
                          {"Content-Type": f"multipart/form-data; boundary={boundary}"})
                statuses.append(c.getresponse().status)
                c.close()
            except OSError:
                statuses.append(None)  # the daemon went away mid-request: expected after SIGTERM
                time.sleep(0.05)

    threads = [threading.Thread(target=upload) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: statuses.count(200) >= 3, 60), (statuses, log.read_text())
        assert _stop(proc) == 0, log.read_text()
    finally:
        stop.set()
        for t in threads:
            t.join(20)
        _stop(proc)
    assert set(statuses) <= {200, 400, 503, None}
    calls = json.loads(camera_log.read_text())
    assert calls[-3:] == ["stop", "close", "open=0"], calls
    assert list(spool.iterdir()) == []
    assert "Traceback" not in log.read_text()


@pytest.mark.slow
def test_sigterm_with_previews_and_long_polls_open_ends_them_at_once(tmp_path, bundle_dir):
    """Open /stream.mjpg viewers and long polls are woken by SIGTERM, so no server thread is left waiting."""
    import http.client

    proc, url, log = _daemon(tmp_path, bundle_dir)
    port = int(url.rsplit(":", 1)[1])
    conns = []
    try:
        frame = _json(url + "/api/results")["frame_id"]  # a still scene: no newer result for a while
        for path in ("/stream.mjpg", "/stream.mjpg", f"/api/results?after={frame}&wait=5"):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            c.request("GET", path)
            conns.append(c)
        first = conns[0].getresponse()
        assert first.read(100).startswith(b"--frame")
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        _stop(proc)
        for c in conns:
            c.close()
    text = log.read_text()
    assert "still running" not in text and "Canceling" not in text, text
    assert "stopped" in text.splitlines()[-1]
