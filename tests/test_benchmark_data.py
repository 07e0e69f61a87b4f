"""Benchmark and demo generators: the photo selection rule, camera simulation, file layout, determinism."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from pi_search import images
from pi_search.tools import benchmark_data as bd

STAMPS = Path("/usr/share/tuxpaint/stamps")


def _write_png(path: Path, rgba: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))


def _photo_like(rng, h=120, w=90) -> np.ndarray:
    """An opaque ellipse with smooth shading plus sensor-like fine noise: passes the texture test."""
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((yy - h / 2) / (h / 2.2)) ** 2 + ((xx - w / 2) / (w / 2.2)) ** 2 <= 1
    base = np.stack([80 + xx, 120 + yy // 2, 60 + (xx + yy) // 3], axis=-1).astype(np.float32)
    rgb = np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)
    return np.dstack([rgb, np.where(inside, 255, 0).astype(np.uint8)])


def _drawn(h=120, w=90) -> np.ndarray:
    """Flat colours with a hard outline: a drawing."""
    img = np.zeros((h, w, 4), np.uint8)
    cv2.rectangle(img, (10, 10), (w - 10, h - 10), (200, 30, 30, 255), -1)
    cv2.rectangle(img, (10, 10), (w - 10, h - 10), (0, 0, 0, 255), 3)
    return img


def test_selection_rule_keeps_photos_and_drops_drawings_svg_twins_tiny_and_duplicates(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "stamps"
    photo = _photo_like(rng)
    _write_png(root / "food" / "pear.png", photo)
    (root / "food" / "pear.txt").write_text("A “Bosc” pear.\nfr.utf8=Une poire.\n", encoding="utf-8")
    _write_png(root / "food" / "pear_mirror.png", photo[:, ::-1].copy())   # mirror twin by name
    _write_png(root / "tools" / "copy.png", photo[:, ::-1].copy())          # mirror twin by content
    _write_png(root / "food" / "drawn.png", _drawn())
    _write_png(root / "food" / "vector.png", _photo_like(rng))
    (root / "food" / "vector.svg").write_text("<svg/>")
    _write_png(root / "food" / "cartoon" / "toon.png", _photo_like(rng))
    _write_png(root / "food" / "tiny.png", _photo_like(rng, 30, 20))
    _write_png(root / "tools" / "other.png", _photo_like(np.random.default_rng(2), 90, 140))

    picked = bd.select_stamps(root)

    assert [s.rel for s in picked] == ["food/pear.png", "tools/other.png"]
    assert picked[0].id == "food-pear"
    assert picked[0].title == "Bosc pear"
    assert picked[1].title == "Other"  # no .txt: the file name
    assert bd.texture_fraction(photo) >= bd.MIN_TEXTURE > bd.texture_fraction(_drawn())


def test_missing_stamps_root_is_a_clear_error(tmp_path):
    with pytest.raises(bd.PiSearchError, match="tuxpaint-stamps-default"):
        bd.select_stamps(tmp_path / "nowhere")


def test_on_white_pads_and_keeps_the_object():
    rgba = np.zeros((50, 100, 4), np.uint8)
    rgba[10:40, 20:80] = (10, 200, 30, 255)
    out = bd.on_white(rgba, long_side=224)
    assert out.shape[1] == 224 and out.dtype == np.uint8
    assert (out[0] == 255).all() and (out[:, 0] == 255).all()  # margin is white
    centre = out[out.shape[0] // 2, out.shape[1] // 2].astype(int)
    assert abs(centre[1] - 200) < 6 and centre[0] < 30


def test_render_is_a_camera_frame_with_the_object_and_deterministic():
    bgs = [np.full((300, 400, 3), 90, np.uint8)]
    rgba = np.zeros((80, 80, 4), np.uint8)
    rgba[..., 0] = 250
    rgba[..., 3] = 255
    shot = bd.random_shot(np.random.default_rng(3), 1)
    a = bd.render(rgba, bgs, shot, np.random.default_rng(4))
    b = bd.render(rgba, bgs, shot, np.random.default_rng(4))
    assert a.shape == (480, 640, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    red = (a[..., 0].astype(int) - a[..., 2].astype(int)) > 60
    assert 0.05 < red.mean() < 0.6  # the object is there, and the room is around it
    nxt = bd.jitter(shot, np.random.default_rng(5))
    assert nxt.bg == shot.bg and abs(nxt.angle - shot.angle) < 15


def test_shop_title_shortens_descriptions():
    assert bd.shop_title("Mince pie is a traditional Christmas food") == "Mince pie"
    assert bd.shop_title("Canadian 25 cent piece ($.25) called a quarter") == "Canadian 25 cent piece"
    assert bd.shop_title("Green apple") == "Green apple"


@pytest.mark.slow
@pytest.mark.skipif(not STAMPS.is_dir(), reason="needs the Debian package tuxpaint-stamps-default")
def test_tiny_benchmark_layout_and_same_seed_same_files(tmp_path):
    a = bd.make_benchmark(tmp_path / "a", seed=3, scenes=1, burst=2, limit=3)
    bd.make_benchmark(tmp_path / "b", seed=3, scenes=1, burst=2, limit=3)
    assert a["items"] == 3 and a["queries"] == 3 and a["frames"] == 6
    with open(tmp_path / "a" / "truth.csv", newline="") as f:
        truth = list(csv.DictReader(f))
    with open(tmp_path / "a" / "catalog" / "catalog.csv", newline="") as f:
        catalog = list(csv.DictReader(f))
    assert {t["item_id"] for t in truth} == {c["id"] for c in catalog}
    for t in truth:
        assert t["query_path"].endswith("_f0.jpg")
        q = images.read(tmp_path / "a" / t["query_path"])
        assert q.shape == (480, 640, 3)
        same = tmp_path / "b" / t["query_path"]
        assert (tmp_path / "a" / t["query_path"]).read_bytes() == same.read_bytes()
    for c in catalog:
        img = images.read(tmp_path / "a" / "catalog" / c["image"])
        assert (img[0, 0] >= 250).all()  # shop listing on white


def test_committed_demo_data_is_consistent():
    demo = bd.DEMO_DIR
    with open(demo / "catalog.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert 120 <= len(rows) <= 180
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert (demo / r["image"]).is_file() and r["title"] and float(r["price"]) > 0
    with open(demo / "frames" / "truth.csv", newline="") as f:
        frames = list(csv.DictReader(f))
    ids = {r["id"] for r in rows}
    assert len(frames) >= 20 and all(fr["item_id"] in ids for fr in frames)
    assert all((demo / "frames" / fr["query_path"]).is_file() for fr in frames)
    assert images.read(demo / "frames" / frames[0]["query_path"]).shape == (480, 640, 3)
    size = sum(p.stat().st_size for p in demo.rglob("*") if p.is_file())
    assert size < 3_500_000
    assert "GPL" in (demo / "CREDITS.md").read_text() and "Pexels" in (demo / "CREDITS.md").read_text()
