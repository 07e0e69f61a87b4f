"""Several catalog photos per item against one: recall@1/5, build time, bundle size (public benchmark).

Usage::

    .venv/bin/python bench/bench_photos.py [--items 150] [--photos 1 2 3] [--out bench/results/photos.json]

Writes the public benchmark once with the most photos asked for (``benchmark_data benchmark --photos N``:
the further photos of an item are other views of the same object: another angle, light and crop), then
for each number of photos a catalog of the first N photos of every item (the same queries), builds its
bundle (timed, both the default exact search and Annoy), and searches every query (the first frame of each
scene) through the bundle as the daemon does (``Bundle.search``: items, each once, by their best photo).
Never asserts anything: it measures.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _catalog(src: Path, dst: Path, photos: int) -> None:
    """``dst``: the catalog of ``src`` with the first ``photos`` rows of every item (images hard-linked: a
    catalog's images must be inside it)."""
    dst.mkdir(parents=True, exist_ok=True)
    if not (dst / "images").exists():
        shutil.copytree(src / "images", dst / "images", copy_function=os.link)
    with open(src / "catalog.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    seen: dict[str, int] = {}
    keep = [rows[0]]
    for r in rows[1:]:
        seen[r[0]] = seen.get(r[0], 0) + 1
        if seen[r[0]] <= photos:
            keep.append(r)
    with open(dst / "catalog.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(keep)


def _fusions(bundle: Path, queries: np.ndarray, truth: list) -> dict:
    """Recall@1/5 when an item's score fuses its photos' cosines otherwise than by the best one (exact
    scores of every photo): the mean, and the best plus a fifth of the second best."""
    import sqlite3

    from pi_search.bundle.photos import split

    v = np.load(bundle / "vectors.npy").astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    con = sqlite3.connect(bundle / "items.sqlite")
    owners = [split(r[0])[0] for r in con.execute("SELECT id FROM items ORDER BY idx")]
    con.close()
    items = sorted(set(owners))
    of = np.array([items.index(o) for o in owners])
    scores = queries @ v.T
    out = {}
    for name in ("best photo", "mean", "best + 0.2 x second"):
        r1 = r5 = 0
        for qi, (_, item) in enumerate(truth):
            per = []
            for k in range(len(items)):
                s = np.sort(scores[qi][of == k])[::-1]
                per.append(s[0] if name == "best photo" else s.mean() if name == "mean"
                           else s[0] + 0.2 * (s[1] if len(s) > 1 else s[0]))
            rank = int(np.sum(np.array(per) > per[items.index(item)])) + 1
            r1 += rank == 1
            r5 += rank <= 5
        out[name] = {"recall_at_1": round(r1 / len(truth), 4), "recall_at_5": round(r5 / len(truth), 4)}
    return out


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=150, help="benchmark items (the first N selected stamps)")
    p.add_argument("--photos", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--work", type=Path, default=ROOT / "var" / "bench-photos")
    p.add_argument("--out", type=Path, default=None, help="JSON report (e.g. bench/results/photos.json)")
    args = p.parse_args(argv)

    from pi_search import images
    from pi_search.bundle.reader import Bundle
    from pi_search.bundle.write import BuildOptions
    from pi_search.embed.build import build_bundle
    from pi_search.model.extractor import Extractor
    from pi_search.model.framing import embed_query_image
    from pi_search.tools.benchmark_data import make_benchmark

    most = max(args.photos)
    bench = args.work / f"benchmark-{args.items}-p{most}"
    if not (bench / "benchmark.json").is_file():
        make_benchmark(bench, seed=0, scenes=2, burst=1, limit=args.items, photos=most)
    with open(bench / "truth.csv", newline="") as f:
        truth = [(bench / r["query_path"], r["item_id"]) for r in csv.DictReader(f)]
    extractor = Extractor(num_threads=1)
    queries = np.stack([embed_query_image(extractor, images.read(q)) for q, _ in truth])
    rows = []
    for n in sorted(args.photos):
        cat = args.work / f"catalog-{args.items}-p{n}"
        _catalog(bench / "catalog", cat, n)
        for search in ("exact", "ann"):
            out = args.work / f"bundle-{args.items}-p{n}-{search}"
            t0 = time.perf_counter()
            report = build_bundle(cat, out, extractor, progress=False, options=BuildOptions(search=search),
                                  dims=None if search == "exact" else -1)
            build_s = time.perf_counter() - t0
            ranks = []
            t0 = time.perf_counter()
            with Bundle.open(out, extractor=extractor) as b:
                for vec, (_, item) in zip(queries, truth, strict=True):
                    ids = [m.id for m in b.search(vec, 10)]
                    assert len(ids) == len(set(ids)), "an item came back twice"
                    ranks.append(ids.index(item) + 1 if item in ids else 0)
            search_ms = (time.perf_counter() - t0) / len(truth) * 1000.0
            r = np.array(ranks)
            row = {"photos_per_item": n, "search": search, "items": report.items, "photos": report.photos,
                   "queries": len(truth), "recall_at_1": round(float(np.mean((r >= 1) & (r <= 1))), 4),
                   "recall_at_5": round(float(np.mean((r >= 1) & (r <= 5))), 4),
                   "hits_at_1": int(np.sum(r == 1)), "hits_at_5": int(np.sum((r >= 1) & (r <= 5))),
                   "build_s": round(build_s, 2), "bundle_bytes": _size(out),
                   "search_ms": round(search_ms, 3)}
            if search == "exact" and n > 1:
                row["fusions"] = _fusions(out, queries, truth)
            rows.append(row)
            print(f"{n} photo(s)/item {search:>5}: {row['items']} items, {row['photos']} photos, "
                  f"recall@1 {row['recall_at_1']:.3f} recall@5 {row['recall_at_5']:.3f}, build "
                  f"{row['build_s']:.1f} s, bundle {row['bundle_bytes'] / 1e6:.2f} MB, search "
                  f"{row['search_ms']:.2f} ms/query", flush=True)
    result = {"benchmark": {"items": args.items, "scenes_per_item": 2, "seed": 0, "queries": len(truth)},
              "rows": rows, "machine": {"cpu_count": os.cpu_count(), "machine": platform.machine()},
              "extractor_threads": 1}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
