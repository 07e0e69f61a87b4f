"""Embeds every query of a benchmark through many candidate framings once, cached for the hard-shot study.

Usage: ``.venv/bin/python bench/retrieval_hard_windows.py var/benchmark-hard [--names c65,g3_0,...]``
writes ``var/cache/<benchmark>-windows.npz``: for every framing name, float32 [queries, dim] (int8 model,
1 thread), and the catalog's kept embeddings. Measures nothing by itself; bench/retrieval_hard.py reads it.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's pi_search

from pi_search import images
from pi_search.model.extractor import Extractor
from pi_search.model.framing import embed_catalog_image, to_model_input
from pi_search.model.shipped import SHIPPED_INT8, shipped_model
from pi_search.tools.evaluate import embed_files, load_catalog, read_truth


def square(rgb: np.ndarray, cx: float, cy: float, side: float, size: int) -> np.ndarray:
    """The square of ``side`` (fraction of the frame height) centred at (cx, cy), clamped inside the frame."""
    import cv2

    h, w = rgb.shape[:2]
    s = int(round(min(side * h, h, w)))
    x0 = int(round(min(max(cx * w - s / 2, 0), w - s)))
    y0 = int(round(min(max(cy * h - s / 2, 0), h - s)))
    crop = rgb[y0:y0 + s, x0:x0 + s]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if s > size else cv2.INTER_LINEAR)


def grid(n_x: int, n_y: int, side: float, aspect: float = 4 / 3) -> list[tuple[float, float, float]]:
    """Square windows of ``side`` (fraction of the height) spread evenly over a 4:3 frame, edge to edge."""
    half_x, half_y = side / aspect / 2, side / 2
    xs = np.linspace(half_x, 1 - half_x, n_x) if n_x > 1 else [0.5]
    ys = np.linspace(half_y, 1 - half_y, n_y) if n_y > 1 else [0.5]
    return [(float(x), float(y), side) for y in ys for x in xs]


def lift(x: np.ndarray, below: float = 80.0, target: float = 100.0, most: float = 2.5) -> np.ndarray:
    """A dim model input brightened by a gain (at most ``most``) that brings its mean grey to ``target``."""
    import cv2

    m = float(x.mean())
    if m >= below or m <= 0:
        return x
    lut = np.clip(np.arange(256) * min(most, target / m), 0, 255).astype(np.uint8)
    return cv2.LUT(x, lut)


def framings() -> dict:
    out = {"c65": lambda rgb, n: to_model_input(rgb, n, 0.65), "c100": lambda rgb, n: to_model_input(rgb, n),
           "c80": lambda rgb, n: to_model_input(rgb, n, 0.8),
           "c65lift": lambda rgb, n: lift(to_model_input(rgb, n, 0.65)),
           "c65lift60": lambda rgb, n: lift(to_model_input(rgb, n, 0.65), 60.0, 80.0)}
    for name, (nx, ny, side) in {"g2": (3, 2, 0.6), "g3": (3, 3, 0.5), "g4": (4, 3, 0.4)}.items():
        for i, (cx, cy, s) in enumerate(grid(nx, ny, side)):
            out[f"{name}_{i}"] = lambda rgb, n, cx=cx, cy=cy, s=s: square(rgb, cx, cy, s, n)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("benchmark", type=Path)
    ap.add_argument("--cache", type=Path, default=Path("var/cache"))
    args = ap.parse_args(argv)
    ex = Extractor(shipped_model(SHIPPED_INT8), num_threads=1)
    out = args.cache / f"{args.benchmark.name}-windows.npz"
    args.cache.mkdir(parents=True, exist_ok=True)
    have = dict(np.load(out)) if out.is_file() else {}
    cat_file = args.cache / "catalog-kept.npy"
    if not cat_file.is_file():
        _, paths, _ = load_catalog(args.benchmark / "catalog")
        np.save(cat_file, embed_files(ex, paths, embed_catalog_image)[0])
    if (args.benchmark / "truth.csv").is_file():
        paths = [t.path for t in read_truth(args.benchmark / "truth.csv")]
    else:  # empty scenes: no truth, only frames
        with open(args.benchmark / "scenes.csv", newline="") as f:
            paths = [args.benchmark / r["query_path"] for r in csv.DictReader(f)]
    todo = {k: f for k, f in framings().items() if k not in have}
    t0 = time.perf_counter()
    vecs = {k: [] for k in todo}
    for path in paths:
        rgb = images.read(path)
        for k, f in todo.items():
            vecs[k].append(ex.embed(f(rgb, ex.size)))
    have.update({k: np.stack(v).astype(np.float32) for k, v in vecs.items()})
    np.savez(out, **have)
    print(f"{len(todo)} framings x {len(paths)} queries in {time.perf_counter() - t0:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
