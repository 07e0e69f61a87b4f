"""What the one look and the learned projection cost: model passes per query, projection time and size,
build time with and without learning.

Usage (after ``python -m pi_search.tools.benchmark_data benchmark``)::

    .venv/bin/python bench/look_cost.py [--queries 60] [--builds] [--items 1000]
                                        [--out bench/results/look-cost.json]

Times, at 1 interpreter thread and 1 BLAS thread, on the benchmark's first queries: the kept framing alone
(one model pass: each live camera frame), the whole look (kept framing + windows: a still frame, an upload, a
query), the learned projection of one and of eight vectors, and a search of the learned bundle with the kept
vector and with the look; ``--builds`` also times a view (made and embedded, its sensor noise drawn afresh
and drawn once) and builds the benchmark's catalog with and without learning,
alternately, and (``--items N``) a timing catalog of N items: the benchmark's catalog photos as they are,
mirrored, upside down and both, in turn (distinct photos of the same kind, for timing only: the generator
makes no larger catalog). Prints the figures and writes JSON. Measures only.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's pi_search

from pi_search import images  # noqa: E402
from pi_search.embed.build import build_bundle  # noqa: E402
from pi_search.live.catalog import LiveCatalog  # noqa: E402
from pi_search.model import look as looking  # noqa: E402
from pi_search.model.extractor import Extractor  # noqa: E402
from pi_search.model.framing import embed_query_image  # noqa: E402
from pi_search.model.shipped import SHIPPED_INT8, shipped_model  # noqa: E402
from pi_search.tools.evaluate import read_truth  # noqa: E402


def median_ms(fn, runs) -> float:
    out = []
    for r in runs:
        t0 = time.perf_counter()
        fn(r)
        out.append(time.perf_counter() - t0)
    return 1000 * statistics.median(out)


def timing_catalog(catalog: Path, out: Path, n: int) -> Path:
    """A catalog of ``n`` items at ``out`` made from the photos of ``catalog``: each photo as it is, then
    mirrored, upside down and both (RGB uint8 flipped, JPEG quality 90), until there are ``n``."""
    from pi_search.embed.catalog import read_catalog

    rows, _ = read_catalog(catalog)
    (out / "images").mkdir(parents=True, exist_ok=True)
    flips = (lambda a: a, lambda a: a[:, ::-1], lambda a: a[::-1], lambda a: a[::-1, ::-1])
    with open(out / "catalog.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "title", "price", "image"])
        for i in range(n):
            row, turn = rows[i % len(rows)], i // len(rows) % len(flips)
            name = f"{row.id}-{turn}"
            rgb = np.ascontiguousarray(flips[turn](images.read(row.image)))
            (out / "images" / f"{name}.jpg").write_bytes(images.encode_jpeg(rgb, 90))
            w.writerow([name, row.title, row.price or "", f"images/{name}.jpg"])
    return out


def side_by_side(catalog: Path, tmp: Path, ex, rounds: int) -> dict:
    """Builds of ``catalog`` without and with learning, alternately (a busy spell on the shared machine
    hits both): seconds of each run (and the CPU seconds of this process's threads), their means, items/s
    and the ratio."""
    times: dict = {"plain": [], "learned": []}
    cpu: dict = {"plain": [], "learned": []}
    order = [False, True] * max(1, rounds)
    items = 0
    for n, learn in enumerate(order):
        out = tmp / f"b{int(learn)}"
        shutil.rmtree(out, ignore_errors=True)
        t0, c0 = time.perf_counter(), time.process_time()
        items = build_bundle(catalog, out, ex, progress=False, learn=learn).items
        kind = "learned" if learn else "plain"
        times[kind].append(round(time.perf_counter() - t0, 2))
        cpu[kind].append(round(time.process_time() - c0, 2))
        print(f"{catalog.name}: build {n + 1}/{len(order)} ({kind}): {times[kind][-1]} s, "
              f"{cpu[kind][-1]} s of CPU", file=sys.stderr, flush=True)
    builds = {k: round(statistics.fmean(v), 2) for k, v in times.items()}
    cpus = {k: round(statistics.fmean(v), 2) for k, v in cpu.items()}
    return {"items": items, "build_runs_s": times, "build_s": builds,
            "items_s": {k: round(items / v, 1) for k, v in builds.items()},
            "build_ratio": round(builds["learned"] / builds["plain"], 2),
            "cpu_s": cpus, "cpu_ratio": round(cpus["learned"] / cpus["plain"], 2)}


def view_cost(catalog: Path, ex, items: int = 30, rounds: int = 2) -> dict:
    """ms to make and embed one view (``learn.catalog.item_views``, 6 an item, over the catalog's first
    ``items`` photos), with the sensor noise drawn afresh and drawn once, alternately; ``cpu``: the CPU ms
    of this process's threads (the rendering threads' and the model's) a view."""
    from pi_search.embed.catalog import read_catalog
    from pi_search.learn import catalog as learning

    rows, _ = read_catalog(catalog)
    photos = [(r.id, images.read(r.image)) for r in rows[:items]]
    times: dict = {"fresh": [], "once": []}
    cpu: dict = {"fresh": [], "once": []}
    for _ in range(max(1, rounds)):
        for kind in times:
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in learning.item_views(ex, photos, 6, noise_once=kind == "once"):
                pass
            times[kind].append(1000 * (time.perf_counter() - t0) / len(photos) / 6)
            cpu[kind].append(1000 * (time.process_time() - c0) / len(photos) / 6)
    out = {k: round(statistics.fmean(v), 2) for k, v in times.items()}
    out["cpu"] = {k: round(statistics.fmean(v), 2) for k, v in cpu.items()}
    return out


def main(argv=None) -> int:
    from threadpoolctl import threadpool_limits

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", type=Path, default=Path("var/benchmark"))
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--builds", action="store_true")
    ap.add_argument("--rounds", type=int, default=2, help="Builds of each kind, alternately (--builds).")
    ap.add_argument("--items", type=int, default=0, help="Also time a catalog of this many items (--builds).")
    ap.add_argument("--out", type=Path, default=Path("bench/results/look-cost.json"))
    args = ap.parse_args(argv)
    ex = Extractor(shipped_model(SHIPPED_INT8), num_threads=1)
    frames = [images.read(t.path) for t in read_truth(args.benchmark / "truth.csv")[:args.queries]]
    result: dict = {"queries": len(frames)}
    with tempfile.TemporaryDirectory(prefix="look-cost-") as tmp, threadpool_limits(1):
        if args.builds:
            result["view_ms"] = view_cost(args.benchmark / "catalog", ex)
            print(f"view_ms {result['view_ms']}", file=sys.stderr, flush=True)
            result.update({k: v for k, v in side_by_side(args.benchmark / "catalog", Path(tmp), ex,
                                                         args.rounds).items() if k != "items"})
            if args.items:
                big = timing_catalog(args.benchmark / "catalog", Path(tmp) / "timing" / "catalog", args.items)
                result["timing"] = side_by_side(big, Path(tmp) / "timing", ex, args.rounds)
        else:
            build_bundle(args.benchmark / "catalog", Path(tmp) / "b1", ex, progress=False)
        bundle = Path(tmp) / "b1"
        with LiveCatalog.open(bundle, extractor=ex, readonly=True) as cat:
            learned = cat.bundle.learned
            kept = [embed_query_image(ex, f) for f in frames]
            looks = [looking.look(ex, f) for f in frames]
            x1 = np.stack(kept)
            result.update({
                "kept_ms": round(median_ms(lambda f: embed_query_image(ex, f), frames), 2),
                "look_ms": round(median_ms(lambda f: looking.look(ex, f), frames), 2),
                "look_passes": 1 + len(looks[0].windows),
                "project_1_ms": round(median_ms(lambda i: learned.apply(x1[i]), range(len(x1))), 4),
                "project_8_ms": round(median_ms(lambda i: learned.apply(np.stack(
                    [looks[i].kept, *[v for _, v in looks[i].windows]])), range(len(looks))), 4),
                "search_kept_ms": round(median_ms(lambda v: cat.search(v, 5), kept), 3),
                "search_look_ms": round(median_ms(lambda s: looking.search(cat, s, 5), looks), 3),
                "learned_bytes": int(learned.matrix.nbytes + learned.mean.nbytes),
                "learned_dims": learned.dims,
                "hint_score": cat.bundle.manifest.learned.get("hint_score"),
                "hint_gain": cat.bundle.manifest.learned.get("hint_gain"),
                "items": len(cat),
            })
        shutil.rmtree(tmp, ignore_errors=True)
    for k, v in result.items():
        print(f"{k:16} {v}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
