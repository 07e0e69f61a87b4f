"""Frame sources: the picamera2 path against a fake picamera2 module, videos via OpenCV, folders."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from fakes import FakeCameraState, fake_picamera2_module

from pi_search import images
from pi_search.camera import FrameSource, open_source
from pi_search.camera.files import FolderSource
from pi_search.camera.opencv import OpenCVSource
from pi_search.camera.picam import PicameraSource
from pi_search.errors import SourceError


def scene(h=480, w=640) -> np.ndarray:
    """An RGB test scene whose channels differ: red ramp left to right, green top to bottom, blue 200."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 200)], -1).astype(np.uint8)


# ---------------------------------------------------------------- picamera2
@pytest.fixture
def fake_cam(monkeypatch):
    state = FakeCameraState(scene(960, 1280))
    monkeypatch.setitem(sys.modules, "picamera2", fake_picamera2_module(state))
    return state


def test_picamera2_asks_the_isp_for_a_small_rgb_stream(fake_cam):
    src = PicameraSource(width=320, height=240, fps=12.0)
    with src:
        frame = src.read()
    kind, args = fake_cam.calls[1]
    assert kind == "create_video_configuration"
    assert args["main"] == {"size": (320, 240), "format": "BGR888"}
    assert args["controls"] == {"FrameRate": 12.0}
    assert args["buffer_count"] >= 2
    assert [c[0] for c in fake_cam.calls[2:4]] == ["configure", "start"]
    assert frame.rgb.shape == (240, 320, 3) and frame.rgb.dtype == np.uint8


def test_picamera2_frames_are_rgb_without_stride_padding(fake_cam):
    fake_cam.stride_pad = 64  # 300 pixels wide -> rows of 320
    with PicameraSource(width=300, height=200) as src:
        rgb = src.read().rgb
    assert rgb.shape == (200, 300, 3)
    assert not (rgb == 77).all(axis=2).any(axis=0)[-1]  # no junk column from the padding
    # Red grows to the right, green grows downwards, blue is constant: R,G,B order, not B,G,R.
    assert rgb[100, -1, 0] > 240 and rgb[100, 0, 0] < 15
    assert rgb[-1, 150, 1] > 240 and rgb[0, 150, 1] < 15
    assert abs(int(rgb[100, 150, 2]) - 200) <= 2


def test_picamera2_rgb888_would_swap_channels(fake_cam):
    """The fake follows libcamera: RGB888 is B,G,R in memory, which is why the source asks for BGR888."""
    class Wrong(PicameraSource):
        FORMAT = "RGB888"

    with Wrong(width=64, height=48) as src:
        rgb = src.read().rgb
    assert rgb[24, 63, 2] > 240  # the red ramp lands in the blue channel


def test_picamera2_is_closed_on_stop(fake_cam):
    src = PicameraSource()
    src.start()
    src.read()
    src.stop()
    src.stop()  # twice is harmless
    assert [c[0] for c in fake_cam.calls[-2:]] == ["stop", "close"]
    assert fake_cam.open_cameras == 0
    with pytest.raises(SourceError, match="before start"):
        src.read()


def test_picamera2_busy_camera_is_a_source_error_and_released(fake_cam):
    fake_cam.fail_start = RuntimeError("Failed to acquire camera: Device or resource busy")
    with pytest.raises(SourceError, match="busy"):
        PicameraSource().start()
    assert fake_cam.open_cameras == 0


def test_picamera2_capture_failure_is_a_source_error(fake_cam):
    fake_cam.fail_capture_after = 2
    with PicameraSource(width=64, height=48) as src:
        src.read()
        src.read()
        with pytest.raises(SourceError, match="capture failed"):
            src.read()
    assert fake_cam.open_cameras == 0


def test_picamera2_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails
    with pytest.raises(SourceError, match="apt install python3-picamera2"):
        open_source("picamera2").start()


def test_importing_the_camera_package_loads_no_hardware_library():
    code = ("import sys, pi_search.camera, pi_search.web, pi_search.pipeline.worker; "
            "print(sorted(m for m in ('cv2', 'picamera2', 'ai_edge_litert', 'tflite_runtime') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------- specs
@pytest.mark.parametrize("spec, cls", [("picamera2", PicameraSource), ("opencv:0", OpenCVSource),
                                       ("opencv:/tmp/clip.mp4", OpenCVSource), ("folder:/tmp", FolderSource)])
def test_open_source_picks_the_adapter(spec, cls):
    src = open_source(spec, width=320, height=240, fps=5)
    assert isinstance(src, cls)
    assert isinstance(src, FrameSource)


@pytest.mark.parametrize("spec", ["", "webcam", "folder:", "opencv:", "rtsp://cam"])
def test_open_source_refuses_unknown_specs(spec):
    with pytest.raises(SourceError, match="folder:DIR"):
        open_source(spec)


# ---------------------------------------------------------------- folder
def _write(path, rgb):
    path.write_bytes(images.encode_jpeg(rgb, 95) if path.suffix == ".jpg" else _png(rgb))


def _png(rgb):
    import cv2

    return cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes()


def test_folder_replays_images_in_name_order_and_loops(tmp_path):
    colours = {"b.png": (0, 255, 0), "a.png": (255, 0, 0), "c.png": (0, 0, 255)}
    for name, c in colours.items():
        _write(tmp_path / name, np.full((60, 80, 3), c, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    with FolderSource(tmp_path, fps=1000) as src:
        frames = [src.read() for _ in range(4)]
    got = [tuple(int(v) for v in f.rgb[30, 40]) for f in frames]
    assert got == [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 0, 0)]
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert not frames[0].rgb.flags.writeable


def test_folder_without_loop_ends_with_a_source_error(tmp_path):
    _write(tmp_path / "one.png", np.zeros((10, 10, 3), np.uint8))
    with FolderSource(tmp_path, fps=1000, loop=False) as src:
        src.read()
        with pytest.raises(SourceError, match="end of the replay"):
            src.read()


def test_folder_shrinks_frames_to_the_camera_size(tmp_path):
    _write(tmp_path / "big.jpg", scene(1200, 1600))
    with FolderSource(tmp_path, width=320, height=240, fps=1000) as src:
        assert src.read().rgb.shape == (240, 320, 3)


def test_folder_skips_unreadable_images(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    _write(tmp_path / "good.png", np.full((20, 20, 3), 9, np.uint8))
    with FolderSource(tmp_path, fps=1000) as src:
        assert int(src.read().rgb[0, 0, 0]) == 9


@pytest.mark.parametrize("setup, message", [("missing", "no such folder"), ("empty", "no images"),
                                            ("broken", "could be read")])
def test_folder_failures_are_source_errors(tmp_path, setup, message):
    d = tmp_path / "frames"
    if setup != "missing":
        d.mkdir()
    if setup == "broken":
        (d / "x.jpg").write_bytes(b"junk")
    src = FolderSource(d, fps=1000)
    with pytest.raises(SourceError, match=message):
        src.start()
        src.read()
    src.stop()


# ---------------------------------------------------------------- opencv
@pytest.fixture
def video(tmp_path):
    """A 6-frame MJPEG .avi: frames 0-2 red, 3-5 blue (written by OpenCV as B,G,R)."""
    import cv2

    path = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48))
    assert w.isOpened()
    for i in range(6):
        bgr = np.zeros((48, 64, 3), np.uint8)
        bgr[:, :, 2 if i < 3 else 0] = 255
        w.write(bgr)
    w.release()
    return path


def test_opencv_video_file_gives_rgb_frames_and_loops(video):
    with OpenCVSource(str(video), loop=True) as src:
        assert src.fps == pytest.approx(25.0)
        frames = [src.read().rgb for _ in range(8)]
    assert frames[0].shape == (48, 64, 3)
    assert frames[0][24, 32, 0] > 200 and frames[0][24, 32, 2] < 50  # red stays red
    assert frames[4][24, 32, 2] > 200 and frames[4][24, 32, 0] < 50  # blue stays blue
    assert frames[6][24, 32, 0] > 200  # looped back to the start


def test_opencv_video_end_without_loop_is_a_source_error(video):
    with OpenCVSource(str(video), loop=False) as src:
        for _ in range(6):
            src.read()
        with pytest.raises(SourceError, match="no frame"):
            src.read()


def test_opencv_missing_file_and_bad_file(tmp_path):
    with pytest.raises(SourceError, match="no such video"):
        OpenCVSource(str(tmp_path / "none.mp4")).start()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(SourceError, match="cannot open"):
        OpenCVSource(str(bad)).start()


def test_opencv_absent_webcam_is_a_source_error():
    with pytest.raises(SourceError, match="webcam 97"):
        OpenCVSource("97").start()
