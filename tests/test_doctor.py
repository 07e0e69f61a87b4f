"""`pi-search doctor`: each check says OK or what to fix, and the exit status tells if anything failed."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner
from fakes import free_port as _free_port

from pi_search.cli import main
from pi_search.ops import doctor


@pytest.fixture
def frames_dir(tmp_path, catalog_dir):
    frames = tmp_path / "frames"
    frames.mkdir()
    for p in sorted((catalog_dir / "images").iterdir())[:3]:
        (frames / p.name).write_bytes(p.read_bytes())
    return frames


def _config(tmp_path, body: str):
    path = tmp_path / "config.toml"
    path.write_text(body)
    return path


@pytest.fixture
def good_config(tmp_path, bundle_dir, frames_dir):
    port = _free_port()
    return _config(tmp_path, f"""
[camera]
source = "folder:{frames_dir}"
[index]
bundle = "{bundle_dir}"
[server]
port = {port}
""")


def _by_name(results):
    return {c.name: c for c in results}


def test_all_ok(good_config, bundle_dir):
    results = _by_name(doctor.run_checks(good_config))
    assert list(results) == ["python", "config", "runtime", "model", "bundle", "update", "memory", "camera",
                             "disk", "port"]
    assert {c.status for c in results.values()} == {"OK"}, doctor.format_checks(list(results.values()))
    assert "16 items" in results["bundle"].detail
    assert "MB in RAM +" in results["bundle"].detail and "this machine: enough" in results["bundle"].detail
    assert "3 images" in results["camera"].detail
    assert "1280-d" in results["model"].detail


def test_cli_exit_zero_and_json(good_config):
    res = CliRunner().invoke(main, ["doctor", "--config", str(good_config), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["ok"] is True
    assert [c["name"] for c in data["checks"]][:2] == ["python", "config"]


def test_bad_config_names_key_and_fails(tmp_path):
    cfg = _config(tmp_path, '[camera]\nsource = "picamera2"\nframerate = 10\n')
    res = CliRunner().invoke(main, ["doctor", "--config", str(cfg)])
    assert res.exit_code == 1
    assert "FAIL" in res.output and "framerate" in res.output and "line 3" in res.output


def test_missing_bundle_says_how_to_build(tmp_path, frames_dir):
    cfg = _config(tmp_path, f'[camera]\nsource = "folder:{frames_dir}"\n'
                            f'[index]\nbundle = "{tmp_path}/nope"\n')
    results = _by_name(doctor.run_checks(cfg))
    assert results["bundle"].status == "FAIL"
    assert "pi-search index build" in results["bundle"].fix
    assert doctor.failed(results.values())


def test_no_bundle_configured(tmp_path, frames_dir):
    cfg = _config(tmp_path, f'[camera]\nsource = "folder:{frames_dir}"\n')
    results = _by_name(doctor.run_checks(cfg))
    assert results["bundle"].status == "FAIL"
    assert "[index] bundle" in results["bundle"].fix


def test_bad_model_path(tmp_path, frames_dir, bundle_dir):
    bogus = tmp_path / "model.tflite"
    bogus.write_bytes(b"not a model at all")
    cfg = _config(tmp_path, f'[model]\npath = "{bogus}"\n[index]\nbundle = "{bundle_dir}"\n'
                            f'[camera]\nsource = "folder:{frames_dir}"\n')
    results = _by_name(doctor.run_checks(cfg))
    assert results["model"].status == "FAIL"
    assert str(bogus) in results["model"].detail


@pytest.mark.parametrize("source, expect", [
    ("opencv:97", "/dev/video97 does not exist"),
    ("opencv:/no/such/clip.mp4", "no such video file"),
    ("folder:/no/such/dir", "no such directory"),
])
def test_camera_sources_fail_clearly(tmp_path, source, expect):
    cfg = _config(tmp_path, f'[camera]\nsource = "{source}"\n')
    results = _by_name(doctor.run_checks(cfg))
    assert results["camera"].status == "FAIL"
    assert expect in results["camera"].detail
    assert results["camera"].fix


def test_empty_frames_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = _config(tmp_path, f'[camera]\nsource = "folder:{tmp_path / "empty"}"\n')
    assert _by_name(doctor.run_checks(cfg))["camera"].detail.endswith("no images")


def _pi_model_file(tmp_path, text: bytes):
    path = tmp_path / "model"
    path.write_bytes(text)
    return (tmp_path / "no-proc-model", path)


def test_board_name_read_as_the_kernel_writes_it(tmp_path):
    """/proc/device-tree/model ends in a NUL; the second place is read when the first is missing."""
    assert doctor.raspberry_pi_model(_pi_model_file(tmp_path, b"Raspberry Pi 4 Model B Rev 1.5\0")) == \
        "Raspberry Pi 4 Model B Rev 1.5"
    assert doctor.raspberry_pi_model(_pi_model_file(tmp_path, b"Radxa ROCK 5B\0")) is None
    assert doctor.raspberry_pi_model((tmp_path / "nothing",)) is None


def test_picamera2_missing_module_on_a_pi(tmp_path, monkeypatch):
    real = doctor.importlib.util.find_spec
    monkeypatch.setattr(doctor.importlib.util, "find_spec",
                        lambda name, *a: None if name == "picamera2" else real(name, *a))
    cfg = _config(tmp_path, '[camera]\nsource = "picamera2"\n')
    pi = _pi_model_file(tmp_path, b"Raspberry Pi 5 Model B Rev 1.0\0")
    check = _by_name(doctor.run_checks(cfg, pi_model_files=pi))["camera"]
    assert check.status == "FAIL"
    assert "Raspberry Pi 5" in check.detail
    assert "python3-picamera2" in check.fix and "--system-site-packages" in check.fix


def test_picamera2_on_a_pc_gives_pc_advice(tmp_path):
    """Not a Pi: picamera2 fails with what works here (a webcam, a folder), not an apt package Debian
    lacks."""
    cfg = _config(tmp_path, '[camera]\nsource = "picamera2"\n')
    pc = _pi_model_file(tmp_path, b"Intel NUC\0")
    check = _by_name(doctor.run_checks(cfg, pi_model_files=pc))["camera"]
    assert check.status == "FAIL"
    assert check.detail.startswith("picamera2: this is not a Raspberry Pi")
    assert "opencv:0" in check.fix and "folder:DIR" in check.fix
    assert "apt" not in check.fix and "python3-picamera2" not in check.fix


def test_doctor_on_this_machine_checks_the_source_it_is_given(tmp_path, bundle_dir, frames_dir):
    """The command as a user runs it: a folder source passes (exit 0); picamera2 fails with the advice that
    fits this machine (a Pi: the apt package; any other machine: a webcam or a folder)."""
    port = str(_free_port())
    ok = CliRunner().invoke(main, ["doctor", "--source", f"folder:{frames_dir}", "--bundle", str(bundle_dir),
                                   "--port", port])
    assert ok.exit_code == 0, ok.output
    assert f"OK    camera   folder:{frames_dir}: 3 images to replay" in ok.output
    pi = CliRunner().invoke(main, ["doctor", "--source", "picamera2", "--bundle", str(bundle_dir),
                                   "--port", port])
    assert pi.exit_code == 1, pi.output
    if doctor.raspberry_pi_model() is None:
        assert "FAIL  camera   picamera2: this is not a Raspberry Pi" in pi.output
        assert "opencv:0" in pi.output and "apt-get" not in pi.output
    else:
        assert "picamera2" in pi.output


def test_a_video_file_source_is_opened(tmp_path, frames_dir):
    """opencv:PATH is opened and one frame read; a file OpenCV cannot decode fails with what to do."""
    import cv2

    from pi_search import images

    clip = tmp_path / "clip.avi"
    frame = images.read(sorted(frames_dir.iterdir())[0])
    h, w = frame.shape[:2]
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (w, h))
    for _ in range(3):
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    check = _by_name(doctor.run_checks(_config(tmp_path, f'[camera]\nsource = "opencv:{clip}"\n')))["camera"]
    assert (check.status, check.detail) == ("OK", f"opencv:{clip}: video file opens, {w}x{h} frames")

    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video\n")
    check = _by_name(doctor.run_checks(_config(tmp_path, f'[camera]\nsource = "opencv:{fake}"\n')))["camera"]
    assert check.status == "FAIL"
    assert "not a video OpenCV can read" in check.detail and "ffmpeg" in check.fix


@pytest.mark.slow
def test_port_taken_by_another_program(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = _config(tmp_path, f"[server]\nport = {port}\n")
        check = _by_name(doctor.run_checks(cfg))["port"]
    assert check.status == "FAIL"
    assert "another program" in check.detail


def test_port_held_by_running_pi_search(tmp_path):
    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"ok": true}'
            self.send_response(200 if self.path == "/healthz" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cfg = _config(tmp_path, f"[server]\nport = {server.server_address[1]}\n")
        check = _by_name(doctor.run_checks(cfg))["port"]
    finally:
        server.shutdown()
        server.server_close()
    assert check.status == "OK"
    assert "running pi-search" in check.detail


def test_bundle_larger_than_the_machine_fails_with_what_it_needs(good_config, monkeypatch):
    from pi_search.bundle import memory as bundle_memory

    tiny = {"MemTotal": 200_000_000, "MemAvailable": 90_000_000}
    monkeypatch.setattr(bundle_memory, "meminfo", lambda: tiny)
    check = _by_name(doctor.run_checks(good_config))["bundle"]
    assert check.status == "FAIL"
    assert "too small" in check.detail and "0.2 GB" in check.detail
    assert "--backend ivfpq" in check.fix


def test_low_disk_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(doctor, "MIN_FREE_MB", 10**15)
    cfg = _config(tmp_path, f'[index]\nbundle = "{tmp_path}/b"\n')
    check = _by_name(doctor.run_checks(cfg))["disk"]
    assert check.status == "FAIL"
    assert str(tmp_path) in check.detail


def test_network_bind_without_a_token_fails_the_config_check(tmp_path, bundle_dir):
    from pi_search.ops import doctor

    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[index]\nbundle = "{bundle_dir}"\n[server]\nhost = "0.0.0.0"\n')
    checks = {c.name: c for c in doctor.run_checks(cfg, {})}
    assert checks["config"].status == doctor.FAIL
    assert "no [server] token is set" in checks["config"].detail and "token" in checks["config"].fix
