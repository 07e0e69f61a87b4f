"""Shared pytest fixtures: real photos, the real extractor, a small real catalog and its bundle."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
TUX_STAMPS = Path("/usr/share/tuxpaint/stamps")

# (id, title, price, source): real photographs shipped by scikit-image, opencv-doc and tuxpaint-stamps.
CATALOG_PHOTOS = [
    ("astronaut", "Astronaut portrait", "12.00", "skimage:astronaut"),
    ("cat", "Chelsea the cat", "8.50", "skimage:chelsea"),
    ("coffee", "Cup of coffee", "3.20", "skimage:coffee"),
    ("rocket", "Rocket on the pad", "99.00", "skimage:rocket"),
    ("house", "House", "450.00", f"{OPENCV_DATA}/home.jpg"),
    ("orange", "Orange", "0.60", f"{OPENCV_DATA}/orange.jpg"),
    ("apple", "Apple", "0.50", f"{OPENCV_DATA}/apple.jpg"),
    ("butterfly", "Butterfly", "5.00", f"{OPENCV_DATA}/butterfly.jpg"),
    ("baboon", "Baboon", "70.00", f"{OPENCV_DATA}/baboon.jpg"),
    ("fruits", "Fruit bowl", "4.10", f"{OPENCV_DATA}/fruits.jpg"),
    ("building", "Building", "1000.00", f"{OPENCV_DATA}/building.jpg"),
    ("seville-orange", "Seville orange", "0.80", f"{TUX_STAMPS}/food/fruit/orange_seville.png"),
    ("strawberry", "Strawberry", "0.30", f"{TUX_STAMPS}/food/fruit/Strawberry2.png"),
    ("avocado", "Avocado", "1.10", f"{TUX_STAMPS}/food/fruit/avocado.png"),
    ("lightbulb", "Light bulb", "2.00", f"{TUX_STAMPS}/household/Lightbulb.png"),
    ("spade", "Garden spade", "15.00", f"{TUX_STAMPS}/household/tools/spade.png"),
]


def load_photo(source: str) -> np.ndarray:
    """RGB uint8 [H, W, 3] of a catalog photo source (``skimage:NAME`` or a file path)."""
    from pi_search import images

    if source.startswith("skimage:"):
        import skimage.data

        rgb = np.asarray(getattr(skimage.data, source.split(":", 1)[1])())
        if rgb.ndim == 2:
            rgb = np.stack([rgb] * 3, axis=-1)
        return np.ascontiguousarray(rgb[:, :, :3]).astype(np.uint8)
    return images.read(source)


def _small(rgb: np.ndarray, side: int = 320) -> np.ndarray:
    import cv2

    h, w = rgb.shape[:2]
    s = side / max(h, w)
    return cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def camera_view(rgb: np.ndarray) -> np.ndarray:
    """A camera-like shot of a photo: off-centre 85% crop, a little darker, JPEG-compressed."""
    from pi_search import images

    h, w = rgb.shape[:2]
    crop = rgb[int(h * 0.05): int(h * 0.9), int(w * 0.1): int(w * 0.95)]
    dark = np.clip(crop.astype(np.float32) * 0.9 + 6, 0, 255).astype(np.uint8)
    return images.decode(images.encode_jpeg(dark, 70))


def write_catalog(root: Path, photos=CATALOG_PHOTOS) -> Path:
    """Write ``root/catalog.csv`` and ``root/images/ID.jpg`` for ``photos``; returns ``root``."""
    from pi_search import images

    (root / "images").mkdir(parents=True, exist_ok=True)
    with open(root / "catalog.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "title", "price", "image", "colour"])
        for item_id, title, price, source in photos:
            jpeg = images.encode_jpeg(_small(load_photo(source)), 90)
            (root / "images" / f"{item_id}.jpg").write_bytes(jpeg)
            w.writerow([item_id, title, price, f"images/{item_id}.jpg", "n/a"])
    return root


@pytest.fixture(scope="session")
def extractor():
    """The shipped int8 extractor (real model, one interpreter for the session)."""
    from pi_search.model.extractor import Extractor

    return Extractor()


@pytest.fixture(scope="session")
def catalog_dir(tmp_path_factory) -> Path:
    """A small real catalog: catalog.csv (id,title,price,image,colour) and 16 photos as JPEG."""
    return write_catalog(tmp_path_factory.mktemp("catalog"))


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory, catalog_dir, extractor) -> Path:
    """A bundle built once from ``catalog_dir`` with the real extractor (read-only for tests)."""
    from pi_search.embed.build import build_bundle

    out = tmp_path_factory.mktemp("bundles") / "bundle"
    build_bundle(catalog_dir, out, extractor, progress=False)
    return out


@pytest.fixture(scope="session")
def plain_bundle_dir(tmp_path_factory, catalog_dir, extractor) -> Path:
    """``catalog_dir`` built without learning (``--no-learn``): its stored rows are the model's embeddings
    themselves, for tests that use them as queries (read-only for tests)."""
    from pi_search.embed.build import build_bundle

    out = tmp_path_factory.mktemp("plain-bundles") / "bundle"
    build_bundle(catalog_dir, out, extractor, progress=False, learn=False)
    return out


@pytest.fixture(scope="session")
def query_photo(tmp_path_factory) -> Path:
    """A camera-like JPEG of the catalog's coffee cup."""
    from pi_search import images

    path = tmp_path_factory.mktemp("queries") / "coffee-shot.jpg"
    path.write_bytes(images.encode_jpeg(camera_view(load_photo("skimage:coffee"))))
    return path


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    """A camera-like shot of the catalog's coffee cup: RGB uint8 [H, W, 3]."""
    return camera_view(load_photo("skimage:coffee"))


@pytest.fixture(scope="module")
def bundle(bundle_dir, extractor):
    """``bundle_dir`` opened (memory-mapped) for the module's tests."""
    from pi_search.bundle.reader import Bundle

    b = Bundle.open(bundle_dir, extractor=extractor)
    yield b
    b.close()


@pytest.fixture
def catalog(bundle_dir, extractor):
    """``bundle_dir`` as the live catalog the worker serves (bundle plus an in-memory change store)."""
    from pi_search.live.catalog import LiveCatalog

    cat = LiveCatalog.open(bundle_dir, extractor=extractor, readonly=True)
    yield cat
    cat.close()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """Real-size photos (tests/corpus.py): 12 MP phone JPEGs in EXIF orientations 1, 3, 6 and 8, PNG, WebP, a
    transparent cut-out and a 40 MP JPEG, made once per session from packaged photos."""
    import corpus as real_size

    return real_size.build(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def photo_bundle_dir(tmp_path_factory, extractor) -> Path:
    """A bundle of the small catalog's 16 photos and 9 packaged photos at the size they ship (0.3-4.4 MB
    JPEGs of up to 6028x3391 pixels); read-only for tests."""
    from corpus import write_photo_catalog

    from pi_search.embed.build import build_bundle

    root = tmp_path_factory.mktemp("photo-catalog")
    out = tmp_path_factory.mktemp("photo-bundles") / "bundle"
    build_bundle(write_photo_catalog(root, CATALOG_PHOTOS), out, extractor, progress=False)
    return out


def assert_taught_lamp_kept_beside_an_ivfpq_bundle(bundle: Path, lamp: np.ndarray, data: np.ndarray,
                                                   items: int, again: int = 0) -> None:
    """Teach ``lamp`` (float32 [3, dim] shots) on the ivfpq bundle ``bundle`` of ``items`` rows of ``data``:
    it is found first, the bundle's own items still are, compaction refuses (one line) and keeps it taught,
    found again by its shot ``again``."""
    from pi_search.bundle.manifest import read_manifest
    from pi_search.errors import CatalogError
    from pi_search.live.catalog import LiveCatalog

    cat = LiveCatalog.open(bundle, refresh_s=0.0)
    try:
        cat.add("Desk lamp", "30.00", lamp, item_id="lamp")
        assert cat.search(lamp[0], 3)[0].id == "lamp"
        assert cat.search(data[17], 1)[0].id == "id17"
        with pytest.raises(CatalogError, match="Rebuild the bundle from the catalog"):
            cat.compact()
        assert cat.store.pending() == 1 and cat.search(lamp[again], 1)[0].id == "lamp"
        assert read_manifest(bundle).items == items
    finally:
        cat.close()
