"""A real `pi-search serve` for the server tests: the test bundle and a replayed camera of real photos."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import camera_view, load_photo

from pi_search import images

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from support.daemon import Daemon  # noqa: E402

PHOTOS = ("coffee", "chelsea", "rocket", "astronaut")


def camera_folder(folder: Path, photos=PHOTOS) -> Path:
    """Camera frames (JPEG shots of real photos, as camera_view makes them); one photo: a still scene."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in photos:
        (folder / f"{name}.jpg").write_bytes(images.encode_jpeg(camera_view(load_photo(f"skimage:{name}"))))
    return folder


def start(tmp: Path, bundle_dir: Path, *, photos=PHOTOS, fps: float = 5.0, config: str = "") -> Daemon:
    """A running daemon (healthy); stop it with ``.stop()`` or use it as a context manager."""
    extra: tuple[str, ...] = ()
    if config:
        (tmp / "config.toml").write_text(config)
        extra = ("--config", str(tmp / "config.toml"))
    return Daemon(camera_folder(tmp / "frames", photos), bundle_dir, tmp / "daemon.log", fps=fps,
                  extra=extra).__enter__()
