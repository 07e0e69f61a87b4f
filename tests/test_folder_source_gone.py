"""A folder: camera whose folder is removed, emptied or changed while the daemon serves."""

from __future__ import annotations

import logging
import shutil

import pytest
from conftest import camera_view, load_photo
from fakes import kiosk, wait_until

from pi_search import images
from pi_search.camera import files
from pi_search.camera.files import FolderSource
from pi_search.config import load_config
from pi_search.errors import SourceError
from pi_search.pipeline.worker import Worker

pytestmark = pytest.mark.slow   # a real worker watching a folder disappear and come back

PHOTOS = ["skimage:coffee", "skimage:chelsea", "skimage:rocket", "skimage:astronaut"]


def fill(folder, names=PHOTOS) -> None:
    """JPEG camera views of real photos, named 0.jpg, 1.jpg ... in ``folder``."""
    folder.mkdir(exist_ok=True)
    for n, name in enumerate(names):
        (folder / f"{n}.jpg").write_bytes(images.encode_jpeg(camera_view(load_photo(name)), 90))


def empty(folder) -> None:
    for p in folder.iterdir():
        p.unlink()


# ---------------------------------------------------------------- the source alone
@pytest.mark.parametrize("cache", ["all", "part"])
@pytest.mark.parametrize("change, message", [(shutil.rmtree, "no such folder"), (empty, "no images")])
def test_the_next_read_after_the_change_fails(tmp_path, monkeypatch, cache, change, message):
    if cache == "part":
        monkeypatch.setattr(files, "CACHE_BYTES", 400_000)  # only the smallest decoded frame fits
    d = tmp_path / "frames"
    fill(d)
    src = FolderSource(d, fps=1000)
    src.start()
    for _ in range(2 * len(PHOTOS)):  # every frame decoded (and as many as fit cached)
        src.read()
    change(d)
    with pytest.raises(SourceError, match=message):
        src.read()
    with pytest.raises(SourceError, match=message):  # reopening says the very same thing
        FolderSource(d, fps=1000).start()
    fill(d)
    src2 = FolderSource(d, fps=1000)
    src2.start()
    assert src2.read().rgb.shape[2] == 3
    src.stop()
    src2.stop()


def test_files_added_and_removed_are_picked_up(tmp_path):
    d = tmp_path / "frames"
    fill(d, PHOTOS[:2])
    src = FolderSource(d, fps=1000)
    src.start()
    first = [src.read().rgb for _ in range(2)]
    (d / "1.jpg").unlink()
    assert all(src.read().rgb is first[0] for _ in range(3))  # only 0.jpg is left, served from the cache
    (d / "5.jpg").write_bytes(images.encode_jpeg(camera_view(load_photo("skimage:rocket")), 90))
    shapes = {src.read().rgb.tobytes()[:64] for _ in range(4)}
    assert len(shapes) == 2  # 0.jpg and the new 5.jpg take turns
    src.stop()


def test_an_unreadable_image_is_warned_about_once(tmp_path, caplog):
    d = tmp_path / "frames"
    fill(d, PHOTOS[:1])
    (d / "1.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    src = FolderSource(d, fps=1000)
    src.start()
    with caplog.at_level(logging.WARNING, logger="pi_search.camera.files"):
        for _ in range(50):
            src.read()
    warned = [r for r in caplog.records if r.name == "pi_search.camera.files"]
    assert len(warned) == 1 and "1.jpg" in warned[0].getMessage()
    (d / "1.jpg").write_bytes(images.encode_jpeg(camera_view(load_photo("skimage:rocket")), 90))
    frames = {src.read().rgb.shape for _ in range(4)}  # repaired: it is read again
    assert len(caplog.records) == 1 and len(frames) >= 1
    src.stop()


# ---------------------------------------------------------------- the daemon's worker
class Dummy:
    """A catalog of nothing: the camera's health is under test, not the matches."""

    manifest = None
    serving, problem, fault = True, None, None

    def __len__(self):
        return 0

    def search(self, vector, k):
        return []


@pytest.mark.parametrize("cache", ["all", "part"])
def test_worker_shows_the_camera_down_once_and_back_for_removed_and_emptied(tmp_path, monkeypatch, caplog,
                                                                           extractor, cache):
    if cache == "part":
        monkeypatch.setattr(files, "CACHE_BYTES", 400_000)
    d = tmp_path / "frames"
    fill(d)
    config = load_config(None, {"camera.source": f"folder:{d}", "camera.fps": 15.0, "camera.timeout_s": 5.0,
                                "gate.enabled": True})
    svc = Worker(lambda: FolderSource(d, fps=15.0), extractor, Dummy(), config, source_name=f"folder:{d}")
    svc.start()
    try:
        assert wait_until(lambda: kiosk(svc).health()["camera"]["up"], 60)
        for change, message in ((shutil.rmtree, "no such folder"), (empty, "no images")):
            caplog.clear()
            errors_before = svc.stats.source_errors
            with caplog.at_level(logging.INFO, logger="pi_search"):
                change(d)
                # (on a busy machine a slow frame may first show as "no frame for N s": wait for the reason)
                assert wait_until(lambda m=message: m in kiosk(svc).health()["camera"]["reason"], 30)
                h = kiosk(svc).health()
                assert not h["ok"] and not h["camera"]["up"]
                # it keeps trying to reopen (three more attempts) and says nothing more about it
                assert wait_until(lambda n=errors_before: svc.stats.source_errors >= n + 3, 30)
                loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
                assert len(loud) == 1 and message in loud[0], loud
                fill(d)
                assert wait_until(lambda: kiosk(svc).health()["camera"]["up"], 30)
            frames = svc.stats.frames
            assert wait_until(lambda n=frames: svc.stats.frames > n + 5, 30)  # frames flow again
    finally:
        svc.stop()
