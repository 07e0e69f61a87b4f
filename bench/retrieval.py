"""Retrieval experiments on the public benchmark: each framing / post-processing idea against the baseline.

Usage (after ``python -m pi_search.tools.benchmark_data benchmark``)::

    .venv/bin/python bench/retrieval.py [var/benchmark] [--out bench/results/retrieval.json]

Prints a table (recall@1/5/10, mAP, median per-frame query extraction ms at 1 thread, every framing timed
in turn on the same 120 frames so that load from other processes hits them alike) and writes JSON.
Never asserts anything: it measures.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from pi_search import images
from pi_search.model.extractor import Extractor
from pi_search.model.framing import (
    QUERY_CROP,
    embed_catalog_image,
    embed_query_image,
    pad_to_square,
    to_model_input,
)
from pi_search.model.shipped import SHIPPED_FLOAT, SHIPPED_INT8, shipped_model
from pi_search.tools.evaluate import embed_files, evaluate, exact_ranks, load_catalog, metrics


def _norm(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


# ---- catalog framings: RGB photo on white -> list of model inputs
def cat_whole(rgb, size):
    return [to_model_input(pad_to_square(rgb), size)]


def cat_views(rgb, size):
    """Whole item plus camera-like views: zoomed, rotated both ways, darker and warmer."""
    import cv2

    sq = pad_to_square(rgb)
    side = sq.shape[0]
    out = [to_model_input(sq, size), to_model_input(sq, size, 0.8)]
    for angle in (-15, 15):
        m = cv2.getRotationMatrix2D((side / 2, side / 2), angle, 1.0)
        out.append(to_model_input(cv2.warpAffine(sq, m, (side, side), borderValue=(255, 255, 255)), size))
    dark = np.clip(sq.astype(np.float32) * np.array([0.8, 0.72, 0.6]), 0, 255).astype(np.uint8)
    out.append(to_model_input(dark, size))
    return out


def cat_grey(rgb, size):
    """The white background replaced by mid grey (closer to a room's tones)."""
    sq = pad_to_square(rgb).astype(np.int16)
    white = (sq >= 250).all(axis=2)
    g = sq.copy()
    g[white] = 128
    return [to_model_input(sq.astype(np.uint8), size), to_model_input(g.astype(np.uint8), size)]


# ---- query framings: camera frame -> list of model inputs
def q_centre(rgb, size):
    return [to_model_input(rgb, size)]


def q_crop(fraction):
    def f(rgb, size):
        return [to_model_input(rgb, size, fraction)]
    f.__name__ = f"q_crop{fraction}"
    return f


def q_multi(fractions):
    def f(rgb, size):
        return [to_model_input(rgb, size, c) for c in fractions]
    f.__name__ = "q_multi" + "_".join(map(str, fractions))
    return f


def q_flip(rgb, size):
    x = to_model_input(rgb, size)
    return [x, np.ascontiguousarray(x[:, ::-1])]


def embed_views(ex, paths, framing):
    """Per image: the views' embeddings float32 [n, views, dim], and median ms per image (incl. framing)."""
    vecs, secs = [], []
    for p in paths:
        rgb = images.read(p)
        t0 = time.perf_counter()
        v = np.stack([ex.embed(x) for x in framing(rgb, ex.size)])
        secs.append(time.perf_counter() - t0)
        vecs.append(v)
    return np.stack(vecs), 1000 * statistics.median(secs)


def interleaved_ms(ex, paths, framings: dict, n: int = 120) -> dict:
    """Median ms per frame of each framing and its model passes, timed in turn on the same frames."""
    rgbs = [images.read(p) for p in paths[:n]]
    secs: dict = {k: [] for k in framings}
    for rgb in rgbs:
        for name, fn in framings.items():
            t0 = time.perf_counter()
            fn(rgb)
            secs[name].append(time.perf_counter() - t0)
    return {k: round(1000 * statistics.median(v), 2) for k, v in secs.items()}


def pca_whiten(cat, dims, eps=1e-6):
    mean = cat.mean(axis=0)
    u, s, vt = np.linalg.svd(cat - mean, full_matrices=False)
    comps = vt[:dims] / (s[:dims, None] / np.sqrt(len(cat)) + eps)
    return lambda x: _norm((x - mean) @ comps.T)


def row(name, ranks, ms, kept, note=""):
    m = metrics(ranks)
    return {"attempt": name, **{k: m[k] for k in ("recall@1", "recall@5", "recall@10", "map")},
            "query_ms": round(ms, 2), "kept": kept, "note": note}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("benchmark", nargs="?", type=Path, default=Path("var/benchmark"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/retrieval.json"))
    ap.add_argument("--skip-models", action="store_true", help="skip the int8/float exact/Annoy table")
    ap.add_argument("--close", type=Path, default=Path("var/benchmark-close"),
                    help="a close-up benchmark (made with --scale 0.8 1.0) to check the query crop against")
    args = ap.parse_args(argv)
    b = args.benchmark
    if not (b / "truth.csv").is_file():
        print(f"error: {b}/truth.csv missing; run: python -m pi_search.tools.benchmark_data benchmark",
              file=sys.stderr)
        return 2
    result: dict = {"benchmark": json.loads((b / "benchmark.json").read_text())}

    # 1. Models and search: int8 vs float32, exact vs Annoy bundle (the shipped framing: model/framing.py).
    if not args.skip_models:
        models = [shipped_model(SHIPPED_INT8), shipped_model(SHIPPED_FLOAT)]
        ev = evaluate(b / "catalog", b / "truth.csv", models)
        result["models"] = ev["runs"]
        for r in ev["runs"]:
            print(f"{r['model']:28} {r['search']:6} R@1 {r['recall@1']:.4f} R@5 {r['recall@5']:.4f} "
                  f"R@10 {r['recall@10']:.4f} mAP {r['map']:.4f} {r['query_ms']:.2f} ms", flush=True)

    # 2. Attempts beyond plain embedding + cosine (int8 model, exact search).
    ex = Extractor(shipped_model(SHIPPED_INT8), num_threads=1)
    ids, cat_paths, _ = load_catalog(b / "catalog")
    where = {i: n for n, i in enumerate(ids)}
    with open(b / "bursts.csv", newline="") as f:
        bursts = list(csv.DictReader(f))
    stills = [r for r in bursts if r["query_path"].endswith("_f0.jpg")]
    still_paths = [b / r["query_path"] for r in stills]
    truth = np.array([where[r["item_id"]] for r in stills])

    def ranks(q, c):
        return exact_ranks(_norm(q), _norm(c), truth)[0]

    query_framings = [q_crop(0.8), q_crop(0.7), q_crop(0.65), q_crop(0.6), q_crop(0.55), q_multi((1.0, 0.7)),
                      q_multi((0.8, 0.55)), q_flip]
    timed = {f.__name__: (lambda rgb, f=f: [ex.embed(x) for x in f(rgb, ex.size)]) for f in query_framings}
    timed["q_centre"] = lambda rgb: [ex.embed(x) for x in q_centre(rgb, ex.size)]
    timed["kept"] = lambda rgb: embed_query_image(ex, rgb)
    timing = interleaved_ms(ex, still_paths, timed)
    result["timing_ms"] = timing
    print("interleaved timing (ms/frame):", timing, flush=True)
    rows = []
    cat_base = embed_views(ex, cat_paths, cat_whole)[0]
    q_base, _ = embed_views(ex, still_paths, q_centre)
    ms_base = timing["q_centre"]
    cb, qb = cat_base.mean(1), q_base.mean(1)
    rows.append(row("baseline: whole photo padded white / centre square, cosine", ranks(qb, cb), ms_base,
                    False, "the reference"))
    print(rows[-1], flush=True)

    q_kept = None
    for framing in query_framings:
        qv, _ = embed_views(ex, still_paths, framing)
        ms = timing[framing.__name__]
        kept = framing.__name__ == f"q_crop{QUERY_CROP}"
        q_kept = qv.mean(1) if kept else q_kept
        rows.append(row(f"query {framing.__name__}", ranks(qv.mean(1), cb), ms, kept,
                        "views.QUERY_CROP" if kept else ""))
        print(rows[-1], flush=True)

    cat_v = embed_views(ex, cat_paths, cat_views)[0]
    rows.append(row("catalog: mean of 5 augmented views", ranks(qb, cat_v.mean(1)), ms_base, True,
                    "views.catalog_inputs; build time x5, no per-frame cost"))
    print(rows[-1], flush=True)
    sims = np.einsum("qd,nvd->qnv", _norm(qb), _norm(cat_v)).max(axis=2)
    own = sims[np.arange(len(truth)), truth]
    rows.append(row("catalog: 5 augmented views indexed separately (max)", 1 + (sims > own[:, None]).sum(1),
                    ms_base, False))
    print(rows[-1], flush=True)
    cat_g = embed_views(ex, cat_paths, cat_grey)[0]
    rows.append(row("catalog: mean of white and grey background", ranks(qb, cat_g.mean(1)), ms_base, False))
    print(rows[-1], flush=True)

    mean = cb.mean(axis=0)
    rows.append(row("centring on the catalog mean", ranks(qb - mean, cb - mean), ms_base, False))
    print(rows[-1], flush=True)
    for dims in (256, 128, 64):
        w = pca_whiten(cb, dims)
        rows.append(row(f"PCA whitening fitted on the catalog, {dims}-d", ranks(w(qb), w(cb)), ms_base,
                        False))
        print(rows[-1], flush=True)

    # Consecutive frames: the mean embedding of each scene's burst (each frame still embedded once).
    scene_paths, scene_truth, scene_of = [], [], []
    for r in bursts:
        scene_paths.append(b / r["query_path"])
        scene_of.append(r["scene"])
    q_all, _ = embed_views(ex, scene_paths, q_centre)
    scenes = {}
    for n, s in enumerate(scene_of):
        scenes.setdefault(s, []).append(n)
    order = [r["scene"] for r in stills]
    q_burst = np.stack([q_all[scenes[s]].mean((0, 1)) for s in order])
    scene_truth = truth
    rows.append(row("mean of 3 consecutive frames", exact_ranks(_norm(q_burst), _norm(cb), scene_truth)[0],
                    ms_base, False, "small gain; belongs to the daemon's smoothing, not to the framing"))
    print(rows[-1], flush=True)
    sims = np.einsum("qd,nvd->qnv", _norm(q_kept), _norm(cat_v)).max(axis=2)
    own = sims[np.arange(len(truth)), truth]
    rows.append(row(f"crop {QUERY_CROP} + catalog views indexed separately (max)",
                    1 + (sims > own[:, None]).sum(1), ms_base, False,
                    "needs one vector per view in the bundle"))
    print(rows[-1], flush=True)

    # The kept combination exactly as shipped: pi_search.model.framing (crop + catalog views), int8, exact
    # search.
    cat_s, _ = embed_files(ex, cat_paths, embed_catalog_image)
    q_s, secs = embed_files(ex, still_paths, embed_query_image)
    ms_s = timing["kept"]
    rows.append(row(f"KEPT (views.py): query crop {QUERY_CROP} + catalog mean of 5 views", ranks(q_s, cat_s),
                    ms_s, True, "shipped"))
    print(rows[-1], flush=True)
    q_all_s, _ = embed_files(ex, scene_paths, embed_query_image)
    q_burst_s = np.stack([q_all_s[scenes[s]].mean(0) for s in order])
    rows.append(row("KEPT + mean of 3 consecutive frames", ranks(q_burst_s, cat_s), ms_s, False,
                    "daemon smoothing option"))
    print(rows[-1], flush=True)
    result["attempts"] = rows

    # Is the query crop tuned to the benchmark? Held-out scenes, and a close-up benchmark (objects filling
    # 80-100% of the frame height) where zooming in cuts the object.
    cat_kept = cat_s
    checks = []
    for sc in ("_s0_", "_s1_"):
        sel = [n for n, r in enumerate(stills) if sc in r["query_path"]]
        for c in (0.8, 0.7, 0.65, 0.6, 0.55):
            qv, _ = embed_views(ex, [still_paths[n] for n in sel], q_crop(c))
            m = metrics(exact_ranks(_norm(qv.mean(1)), _norm(cat_kept), truth[sel])[0])
            checks.append({"queries": f"scene {sc.strip('_')}", "crop": c, "recall@1": m["recall@1"]})
    if (args.close / "truth.csv").is_file():
        c_ids, c_paths, _ = load_catalog(args.close / "catalog")
        c_where = {i: n for n, i in enumerate(c_ids)}
        with open(args.close / "truth.csv", newline="") as f:
            c_truth = list(csv.DictReader(f))
        c_idx = np.array([c_where[r["item_id"]] for r in c_truth])
        c_cat, _ = embed_files(ex, c_paths, embed_catalog_image)
        for c in (1.0, 0.8, 0.65, 0.55):
            qv, _ = embed_views(ex, [args.close / r["query_path"] for r in c_truth], q_crop(c))
            m = metrics(exact_ranks(_norm(qv.mean(1)), _norm(c_cat), c_idx)[0])
            checks.append({"queries": "close-up benchmark", "crop": c, "recall@1": m["recall@1"]})
    result["crop_checks"] = checks

    # Uploads: a product photo on white as the query (each catalog photo looked up in its own catalog).
    own_idx = np.arange(len(ids))
    uploads = []
    for name, fn in (("whole photo (baseline framing)", lambda e, rgb: e.embed(to_model_input(rgb, e.size))),
                     (f"centre crop {QUERY_CROP} only", lambda e, rgb: e.embed(to_model_input(rgb, e.size,
                                                                                               QUERY_CROP))),
                     ("kept: views.embed_query_image", embed_query_image)):
        qv, _ = embed_files(ex, cat_paths, fn)
        uploads.append({"framing": name, **metrics(exact_ranks(_norm(qv), _norm(cat_kept), own_idx)[0])})
        print(uploads[-1], flush=True)
    result["uploads"] = uploads
    for c in checks:
        print(c, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'attempt':62} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'mAP':>6} {'ms':>6}")
    for r in rows:
        print(f"{r['attempt'][:62]:62} {r['recall@1']:6.3f} {r['recall@5']:6.3f} {r['recall@10']:6.3f} "
              f"{r['map']:6.3f} {r['query_ms']:6.2f}")
    print(f"written {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
