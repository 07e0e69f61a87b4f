"""Hard shots: the hard benchmark's scenes, the per-condition table, the settled look and the guide."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import load_photo
from fakes import ListSource

from pi_search import images
from pi_search.bundle.reader import Match
from pi_search.config import load_config
from pi_search.learn import scenes
from pi_search.model import settle as settle_mod
from pi_search.model.framing import embed_query_image, target_box, window_input
from pi_search.model.settle import (
    HINT,
    HINT_GAIN,
    HINT_SCORE,
    SETTLE_CENTRE,
    SETTLE_GRID,
    fuse,
    hint,
    search_mean,
    settle_windows,
)
from pi_search.pipeline.worker import Worker
from pi_search.tools import benchmark_data as bd
from pi_search.tools.evaluate import Truth, by_condition, evaluate, format_table, read_truth

STAMPS = Path("/usr/share/tuxpaint/stamps")
needs_stamps = pytest.mark.skipif(not STAMPS.is_dir(),
                                  reason="needs the Debian package tuxpaint-stamps-default")


@pytest.fixture(scope="module")
def stamps():
    picked = [STAMPS / p for p in ("food/fruit/avocado.png", "household/Lightbulb.png",
                                   "household/tools/spade.png", "food/fruit/Strawberry2.png")]
    return [bd.trim(bd.load_rgba(p)) for p in picked]


def _alpha_box(rgba, shot, size=(640, 480)):
    a = scenes._warp(rgba, shot, size)[:, :, 3]
    ys, xs = np.nonzero(a > 8)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.mark.slow
@needs_stamps
def test_hard_scenes_are_small_inside_the_margin_often_beside_a_smaller_object_and_often_dim(stamps):
    rng = np.random.default_rng(11)
    covers, seconds, dims = [], 0, 0
    for n in range(40):
        own = n % len(stamps)
        scene = bd.random_hard_scene(rng, stamps[own], 5, stamps, own)
        c = bd.cover(stamps[own], scene.shot)
        fill = scenes.opaque_area(stamps[own]) / (stamps[own].shape[0] * stamps[own].shape[1])
        if fill > 0.4:  # a long, thin item (the spade) that fits inside the margin covers less
            covers.append(c)
        x0, y0, x1, y1 = _alpha_box(stamps[own], scene.shot)
        assert x0 >= 0.05 * 640 - 2 and x1 <= 0.95 * 640 + 2 and y0 >= 0.05 * 480 - 2 and y1 <= 0.95 * 480 + 2
        if scene.second:
            seconds += 1
            j, o_shot = scene.second
            assert j != own
            assert bd.cover(stamps[j], o_shot) < 0.7 * c  # clearly smaller than the item
        if scene.dim:
            dims += 1
            assert scene.shot.noise >= bd.HARD_DIM_NOISE[0]
    assert min(covers) >= 0.06 and max(covers) <= 0.33
    assert 18 <= seconds <= 36 and 7 <= dims <= 26


@needs_stamps
def test_a_second_object_is_rendered_beside_the_item(stamps):
    bgs = [np.full((300, 400, 3), 90, np.uint8)]
    shot = replace(bd.random_shot(np.random.default_rng(3), 1), brightness=1.0, gains=(1.0, 1.0, 1.0),
                   light=(0.0, 0.0), gamma=1.0, noise=1.0, motion=0.0)
    item = replace(shot, scale=0.3, centre=(-0.25, 0.0), angle=0.0, corners=(0.0,) * 8)
    other = replace(item, centre=(0.25, 0.0))
    alone = bd.render(stamps[0], bgs, item, np.random.default_rng(1))
    both = bd.render(stamps[0], bgs, item, np.random.default_rng(1), others=((stamps[1], other),))
    left, right = slice(0, 320), slice(320, 640)
    assert np.abs(alone[:, left].astype(int) - both[:, left]).mean() < 1.0  # the item as before
    assert np.abs(alone[:, right].astype(int) - both[:, right]).mean() > 3.0  # and something beside it


@pytest.mark.slow
@needs_stamps
def test_tiny_hard_benchmark_records_the_conditions(tmp_path):
    summary = bd.make_benchmark(tmp_path / "h", seed=2, scenes=2, burst=1, limit=4, hard=True)
    assert summary["queries"] == 8 and "hard" in summary
    with open(tmp_path / "h" / "truth.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ids = {r["item_id"] for r in rows}
    for r in rows:
        assert 0.05 < float(r["cover"]) < 0.35 and 0 <= float(r["offset"]) <= 1
        assert r["dim"] in ("0", "1") and r["second_item"] != r["item_id"]
        assert r["second_item"] == "" or r["second_item"] in ids
    truth = read_truth(tmp_path / "h" / "truth.csv")
    assert set(truth[0].conditions) == {"cover", "offset", "second_item", "dim"}
    result = evaluate(tmp_path / "h" / "catalog", tmp_path / "h" / "truth.csv", [None])
    assert [r["search"] for r in result["runs"]] == ["exact", "annoy", "settled"]
    assert all(r["queries"] == 8 for r in result["runs"])
    names = list(result["conditions"])
    assert len(names) == 3 and sum(c["queries"] for c in result["conditions"][names[2]]
                                   if c["condition"] == "light") == 8
    assert "per condition" in format_table(result) and result["misses_settled"] is not None


def test_per_condition_table_counts_each_bin():
    def t(cover, offset, second, dim):
        return Truth(Path("q.jpg"), "a",
                     {"cover": cover, "offset": offset, "second_item": second, "dim": dim})

    truth = [t("0.10", "0.1", "b", "1"), t("0.25", "0.6", "", "0"), t("0.15", "0.3", "c", "0"),
             t("0.09", "0.7", "", "1")]
    ranks = np.array([1, 3, 0, 1])
    rows = {(r["condition"], r["bin"]): r for r in by_condition(ranks, truth, ["a", "x", "c", "a"])}
    assert rows["size", "cover < 12%"]["queries"] == 2 and rows["size", "cover < 12%"]["recall@1"] == 1.0
    assert rows["size", "cover >= 20%"]["recall@1"] == 0.0 and rows["size", "cover >= 20%"]["recall@5"] == 1.0
    assert rows["second object", "with"]["second_first"] == 1  # "c" came first where "c" was the second
    assert rows["light", "dim"]["recall@1"] == 1.0 and rows["light", "normal"]["recall@5"] == 0.5
    assert by_condition(ranks, [Truth(Path("q"), "a")] * 4) == []
    table = format_table({"items": 3, "queries": 4, "runs": [],
                          "conditions": {"m exact": list(rows.values())}})
    assert "offset >= 0.5" in table and "recall@1 / recall@5 per condition" in table


def test_target_box_and_windows_cover_the_frame():
    assert target_box(640, 480) == pytest.approx((0.2562, 0.175, 0.7438, 0.825), abs=1e-3)
    boxes = settle_windows(640, 480)
    assert len(boxes) == sum(nx * ny for nx, ny, _ in SETTLE_GRID) + SETTLE_CENTRE
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        assert abs((x1 - x0) * 640 - (y1 - y0) * 480) < 1  # square in pixels
    assert min(b[0] for b in boxes) == 0 and max(b[2] for b in boxes) == 1
    rgb = np.zeros((480, 640, 3), np.uint8)
    rgb[:, 320:] = 200
    if SETTLE_CENTRE:
        assert boxes[-1] == pytest.approx((0.125, 0.0, 0.875, 1.0))  # the whole centre square
    x = window_input(rgb, boxes[len(boxes) - 1 - SETTLE_CENTRE], 224)
    assert x.shape == (224, 224, 3) and x.dtype == np.uint8 and x.mean() > 150  # the right-hand window


def _m(item: str, score: float) -> Match:
    return Match(item, item.upper(), None, score)


def test_fuse_adds_the_kept_score_and_the_best_window_score():
    kept = [_m("a", 0.6), _m("b", 0.4)]
    left, right = (0, 0, 0.5, 0.5), (0.5, 0, 1, 0.5)
    win = [(left, [_m("b", 0.9), _m("c", 0.3)]), (right, [_m("a", 0.5), _m("d", 0.2)])]
    matches, region, gain = fuse(kept, win, 3)
    # b: (0.4 + 0.9) / 2; a: (0.6 + max(0.3 floor of left, 0.5)) / 2; c: (0.4 floor + 0.3) / 2
    assert [(m.id, round(m.score, 4)) for m in matches] == [("b", 0.65), ("a", 0.55), ("c", 0.35)]
    assert region == left and matches[0].title == "B" and gain == pytest.approx(0.5)
    matches, region, gain = fuse(kept, [], 5)
    assert [m.id for m in matches] == ["a", "b"] and region is None and gain == 0.0
    target = target_box(640, 480)
    assert hint(0.9, None, target) is None
    assert hint(None, None, target) is None   # no matches (no catalog): nothing to hold closer for
    assert hint(HINT_SCORE - 0.01, None, target) == HINT
    outside, inside = (0.0, 0.0, 0.2, 0.3), (0.3, 0.3, 0.6, 0.7)
    assert hint(0.9, outside, target, HINT_GAIN) == HINT  # clearly better outside the box
    assert hint(0.9, outside, target, HINT_GAIN / 2) is None  # about as good in the box
    assert hint(0.9, inside, target, 0.5) is None


def _small_in_corner(photo: np.ndarray) -> np.ndarray:
    """A 640x480 frame: a dull grey wall with the photo small in the lower right corner."""
    import cv2

    from pi_search import images

    frame = np.full((480, 640, 3), 118, np.uint8)
    h, w = photo.shape[:2]
    s = 170 / max(h, w)
    small = cv2.resize(photo, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    frame[480 - 20 - small.shape[0]:460, 640 - 20 - small.shape[1]:620] = small
    return images.decode(images.encode_jpeg(frame, 85))


def _until_settled(svc, src, most: int = 60) -> int:
    """Feed still frames until the settled look is published; returns how many frames it took."""
    before = svc.stats.settled
    for n in range(1, most + 1):
        assert svc.process(src.read()) is None  # skipped by the gate: the look goes on a slice at a time
        if svc.stats.settled > before:
            return n
    raise AssertionError(f"no settled look after {most} still frames")


def test_settled_look_finds_a_small_item_off_centre_and_publishes_a_guide(extractor, catalog):
    frame_rgb = _small_in_corner(load_photo("skimage:coffee"))
    svc = Worker(None, extractor, catalog, load_config(None, {"gate.refresh_s": 0.0}), source_name="test")
    src = ListSource([frame_rgb], loop=True, noise=1.0)
    src.start()
    first = svc.process(src.read())
    assert first is not None and first.settle_ms is None
    d = first.as_dict()
    assert d["guide"]["target"] == pytest.approx(list(target_box(640, 480)))
    assert d["guide"]["region"] is None and "settle_ms" not in d
    _until_settled(svc, src)
    settled = svc.latest()
    assert settled is not first and settled.settle_ms > 0 and svc.stats.settled == 1
    assert settled.matches[0].id == "coffee"
    region = settled.guide["region"]
    assert region is not None and (region[0] + region[2]) / 2 > 0.5 and (region[1] + region[3]) / 2 > 0.5
    assert settled.guide["hint"] == HINT  # found outside the box: staff are asked to hold it closer
    assert settled.jpeg == first.jpeg and settled.as_dict()["settle_ms"] > 0
    assert svc.process(src.read()) is None and svc.latest() is settled  # once per inference
    svc.gate.reset()  # the item moves a little: the next frame is inferred with the settled window too
    moved = svc.process(src.read())
    assert moved.matches[0].id == "coffee" and moved.guide["region"] == region
    assert moved.settle_ms is None and moved.matches[0].score >= settled.matches[0].score - 0.05
    _until_settled(svc, src)  # still again: settled again
    svc.settle_enabled = False
    svc.gate.reset()
    assert svc.process(src.read()) is not None
    assert all(svc.process(src.read()) is None for _ in range(30))
    assert svc.stats.settled == 2  # not once it is switched off
    wall = ListSource([np.full((480, 640, 3), 118, np.uint8)])  # a new scene: the window is dropped
    wall.start()
    svc.gate.reset()
    assert svc.process(wall.read()).guide["region"] is None


def test_a_changed_frame_drops_an_unfinished_settled_look(extractor, catalog, monkeypatch):
    monkeypatch.setattr(settle_mod, "SETTLE_SLICE_S", 0.0)  # one window per skipped frame
    frame_rgb = _small_in_corner(load_photo("skimage:coffee"))
    svc = Worker(None, extractor, catalog, load_config(None, {"gate.refresh_s": 0.0}), source_name="test")
    src = ListSource([frame_rgb], loop=True, noise=1.0)
    src.start()
    svc.process(src.read())
    assert svc.process(src.read()) is None and svc.process(src.read()) is None
    assert svc.stats.settled == 0  # two windows of many done
    svc.gate.reset()  # the scene changed: a new inference, the look starts again from its first window
    again = svc.process(src.read())
    assert again is not None and again.settle_ms is None
    n = _until_settled(svc, src, most=len(settle_windows(640, 480)) + 2)
    # the still scene's barcode read first, then every window, once, after the new inference
    assert n == len(settle_windows(640, 480)) + 1 and svc.stats.code_reads == 2


def test_search_mean_scores_the_mean_of_both_cosines_with_one_search(extractor, catalog):
    coffee = load_photo("skimage:coffee")
    a = embed_query_image(extractor, coffee)
    b = extractor.embed(window_input(_small_in_corner(coffee), (0.55, 0.4, 1.0, 1.0)))
    n = len(catalog)
    sa = {m.id: m.score for m in catalog.search(a, n)}
    sb = {m.id: m.score for m in catalog.search(b, n)}
    got = search_mean(catalog, a, b, 5)
    want = sorted(((sa[i] + sb[i]) / 2, i) for i in sa)[::-1][:5]
    assert [m.id for m in got] == [i for _, i in want]
    assert [m.score for m in got] == pytest.approx([s for s, _ in want], abs=2e-3)  # float16 store
    assert got[0].title and got[0].id == "coffee"


@pytest.mark.slow
def test_empty_scenes_are_rooms_with_nothing_held_up(tmp_path):
    summary = bd.make_empty_scenes(tmp_path / "e", n=4, seed=1)
    with open(tmp_path / "e" / "scenes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert summary["scenes"] == 4 and len(rows) == 4 and summary["dim"] == sum(r["dim"] == "1" for r in rows)
    frames = [images.read(tmp_path / "e" / r["query_path"]) for r in rows]
    assert all(f.shape == (480, 640, 3) for f in frames)
    assert len({f.tobytes() for f in frames}) == 4  # different rooms, crops and light
