"""Taught items: search latency over a 100k bundle with 0-10k taught items; recall with 1-3 taught views."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


def _pct(xs, p) -> float:
    return round(float(np.percentile(np.asarray(xs) * 1000.0, p)), 3)


# --------------------------------------------------------------------------------------------- latency
def scale_bundle(work: Path, n: int) -> tuple[Path, np.ndarray]:
    """The 100k synthetic bundle of bench_scale.py as built by default (whitened PCA 256, Annoy, float16
    store), built if missing."""
    import bench_scale

    x = np.load(bench_scale.synthetic(work, n, None), mmap_mode="r")
    out = work / f"b-synth-{n}-pca256w"
    bench_scale.build(out, x, dims=256, whiten=True, search="ann")
    return out, x


def taught_vectors(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """New items shaped like the catalog: catalog items moved along the data's own differences (float32)."""
    import bench_scale

    return bench_scale.make_queries(x, n, seed=seed, noise=1.5)


def latency(work: Path, n_bundle: int, counts: list[int], shots: int, nq: int, compact: bool = False
            ) -> list[dict]:
    from pi_search.bootstrap import single_threaded_blas
    from pi_search.bundle.reader import Bundle
    from pi_search.live import view
    from pi_search.live.catalog import LiveCatalog
    from pi_search.live.changes import ChangeStore

    single_threaded_blas()   # as the daemon runs
    bundle_dir, x = scale_bundle(work, n_bundle)
    rows = []
    for count in counts:
        store_file = work / f"taught-{count}x{shots}.sqlite"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{store_file}{suffix}").unlink(missing_ok=True)
        taught = taught_vectors(x, count * shots, seed=100 + count) if count else np.empty((0, x.shape[1]))
        store = ChangeStore(store_file, dim=x.shape[1])
        t0 = time.perf_counter()
        for i in range(count):
            store.add(f"t{i}", f"taught {i}", None, taught[i * shots:(i + 1) * shots])
        fill_s = time.perf_counter() - t0
        store.close()
        t0 = time.perf_counter()
        cat = LiveCatalog.open(bundle_dir, store=store_file)
        open_s = time.perf_counter() - t0
        # queries: half near catalog items, half near taught shots
        qb = bench_scale_queries(x, nq // 2 if count else nq, seed=7)
        qt = (taught[np.random.default_rng(8).choice(len(taught), nq - len(qb), replace=False)]
              + np.random.default_rng(9).normal(0, 0.01, (nq - len(qb), x.shape[1])).astype(np.float32)
              if count else np.empty((0, x.shape[1]), np.float32))
        queries = np.concatenate([qb, qt]).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        base = Bundle.open(bundle_dir)
        for q in queries:   # warm both (page cache, allocator), then time them alternately
            cat.search(q, 5)
            base.search(q, 5)
        times, base_times, cpu, base_cpu, found, got = [], [], [], [], 0, []

        def timed(fn, q, wall, busy):
            c0, t0 = time.thread_time(), time.perf_counter()
            out = fn(q, 5)
            wall.append(time.perf_counter() - t0)
            busy.append(time.thread_time() - c0)
            return out

        for j, q in enumerate(queries):
            # in turn, each first every other time: the first search of a query pays the page faults
            if j % 2:
                timed(base.search, q, base_times, base_cpu)
            res = timed(cat.search, q, times, cpu)
            if not j % 2:
                timed(base.search, q, base_times, base_cpu)
            got.append([m.id for m in res])
            if j >= len(qb):
                found += res[0].id == f"t{_owner(taught, q, shots)}"
        base.close()
        # the same searches with every taught shot scored exactly (no PCA pre-selection)
        exact_max, view.EXACT_TAUGHT_MAX = view.EXACT_TAUGHT_MAX, 10**9
        try:
            cat.reload()
            agree = np.mean([len(set(g) & {m.id for m in cat.search(q, 5)}) / 5
                             for g, q in zip(got, queries, strict=True)])
        finally:
            view.EXACT_TAUGHT_MAX = exact_max
        cat.reload()
        # one more add into the full store: the time until it is searchable (commit + state rebuild)
        extra = taught_vectors(x, shots, seed=5)
        t0 = time.perf_counter()
        cat.add("one more", None, extra, item_id="one-more")
        add_s = time.perf_counter() - t0
        assert cat.search(extra[0], 1)[0].id == "one-more"
        cat.close()
        rows.append({"bundle_items": n_bundle, "taught_items": count, "shots_per_item": shots,
                     "queries": len(queries),
                     "taught_vectors": count * shots, "search_p50_ms": _pct(times, 50),
                     "search_p99_ms": _pct(times, 99), "bundle_only_p50_ms": _pct(base_times, 50),
                     "merge_overhead_p50_ms": _pct(np.subtract(times, base_times), 50),
                     "search_cpu_p50_ms": _pct(cpu, 50), "bundle_only_cpu_p50_ms": _pct(base_cpu, 50),
                     "taught_top1": round(found / max(1, len(qt)), 4) if count else None,
                     "recall5_vs_exact_taught": round(float(agree), 4),
                     "add_searchable_ms": round(add_s * 1000, 1), "open_s": round(open_s, 3),
                     "fill_s": round(fill_s, 2),
                     "store_mb": round(store_file.stat().st_size / 1e6, 1)})
        if compact and count:
            rows[-1].update(compaction(bundle_dir, store_file, work, taught, shots))
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def compaction(bundle_dir: Path, store_file: Path, work: Path, taught: np.ndarray, shots: int) -> dict:
    """Fold a store into a copy of the bundle (hard links: the original stays as it is); time it."""
    import shutil

    from pi_search.live.catalog import LiveCatalog
    from pi_search.live.compact import compact

    copy = work / "compacted"
    for p in (copy, work / "compacted.changes.sqlite"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    shutil.copytree(bundle_dir, copy, copy_function=os.link)
    shutil.copy(store_file, work / "compacted.changes.sqlite")
    cat = LiveCatalog.open(copy)
    t0 = time.perf_counter()
    report = compact(copy, cat.store)
    seconds = time.perf_counter() - t0
    cat.reload()
    ok = all(cat.search(taught[i * shots], 1)[0].id == f"t{i}" for i in range(0, len(taught) // shots, 97))
    out = {"compact_s": round(seconds, 1), "compacted_rows": report["rows"],
           "pending_after": cat.store.pending(), "taught_found_after_compaction": ok}
    cat.close()
    shutil.rmtree(copy, ignore_errors=True)
    return out


def bench_scale_queries(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    import bench_scale

    return bench_scale.make_queries(x, n, seed=seed)


def _owner(taught: np.ndarray, q: np.ndarray, shots: int) -> int:
    """The taught item whose shot a query was made from (exact nearest shot)."""
    return int(np.argmax(taught @ q)) // shots


# ----------------------------------------------------------------------------------------------- views
def views(benchmark: Path, work: Path, max_views: int, seed: int, kind: str = "camera") -> list[dict]:
    """Recall on the public benchmark when camera views of each item are taught (1..max_views).

    The views are new renders of each item in a room (another seed than the queries); ``kind`` says how a
    shot is embedded, as the page and the CLI do: ``camera`` (like a query) or ``photo`` (like a catalog
    photo).
    """
    import csv

    from pi_search import images
    from pi_search.embed.build import build_bundle
    from pi_search.live.catalog import LiveCatalog
    from pi_search.live.changes import ChangeStore
    from pi_search.model.extractor import Extractor
    from pi_search.model.framing import embed_catalog_image, embed_query_image
    from pi_search.tools.benchmark_data import load_backgrounds, load_rgba, random_shot, render, select_stamps

    ex = Extractor()
    bundle = work / "views-bundle"
    if not (bundle / "manifest.json").is_file():
        build_bundle(benchmark / "catalog", bundle, ex, progress=False)
    with open(benchmark / "truth.csv", newline="") as f:
        truth = [(r["query_path"], r["item_id"]) for r in csv.DictReader(f)]
    qcache = work / "views-queries.npy"
    if qcache.is_file():
        qv = np.load(qcache)
    else:
        qv = np.stack([embed_query_image(ex, images.read(benchmark / p)) for p, _ in truth])
        np.save(qcache, qv)
    ids = [i for _, i in truth]
    stamps = {s.id: s for s in select_stamps()}
    vcache = work / f"views-taught-{kind}-{seed}-{max_views}.npz"
    embed_shot = embed_query_image if kind == "camera" else embed_catalog_image
    if vcache.is_file():
        z = np.load(vcache)
        tv, tids = z["vectors"], list(z["ids"])
    else:
        backgrounds = load_backgrounds()
        rng = np.random.default_rng(seed)
        tv, tids = [], []
        for item in sorted(set(ids)):
            rgba = load_rgba(stamps[item].path)
            for _ in range(max_views):
                frame = render(rgba, backgrounds, random_shot(rng, len(backgrounds)), rng)
                tv.append(embed_shot(ex, frame))
                tids.append(item)
        tv = np.stack(tv)
        np.savez(vcache, vectors=tv, ids=np.array(tids))
    by_item: dict[str, list[np.ndarray]] = {}
    for v, i in zip(tv, tids, strict=True):
        by_item.setdefault(str(i), []).append(v)
    empty: dict[str, list[np.ndarray]] = {}
    if kind == "camera":   # the empty scene of every shot (the same render without the item), cached
        bcache = work / f"views-empty-{seed}-{max_views}.npy"
        if bcache.is_file():
            bv = np.load(bcache)
        else:
            from pi_search.live.teach import embed_background

            backgrounds = load_backgrounds()
            rng = np.random.default_rng(seed)
            bv = []
            for item in sorted(set(ids)):
                rgba = load_rgba(stamps[item].path)
                clear = rgba.copy()
                clear[..., 3] = 0
                for _ in range(max_views):
                    shot = random_shot(rng, len(backgrounds))
                    render(rgba, backgrounds, shot, rng)   # keeps the random stream in step with the shots
                    scene = render(clear, backgrounds, shot, np.random.default_rng(99))
                    bv.append(embed_background(ex, scene))
            bv = np.stack(bv)
            np.save(bcache, bv)
        for v, i in zip(bv, tids, strict=True):
            empty.setdefault(str(i), []).append(v)

    def measure(name: str, n_views: int, keep_photo: bool, scene_out: bool = False) -> dict:
        from pi_search.live.teach import without_background

        store_file = work / f"views-{kind}-{name}.sqlite"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{store_file}{suffix}").unlink(missing_ok=True)
        store = ChangeStore(store_file, dim=ex.dim)
        for item, vs in by_item.items():
            if not n_views:
                continue
            if scene_out:   # each shot minus its own empty scene, as the page does after "Empty scene"
                vs = [without_background(v[None], b)[0] for v, b in zip(vs, empty[item], strict=True)]
            if keep_photo:
                store.edit(item, vectors=np.stack(vs[:n_views]),
                           base_item={"id": item, "title": item, "price": None, "extra": {}})
            else:   # the item known only from its camera views: the catalog photo's vector is masked
                store.remove(item, base_item={"id": item, "title": item, "price": None, "extra": {}})
                store.add(item, item, None, np.stack(vs[:n_views]))
        store.close()
        cat = LiveCatalog.open(bundle, store=store_file)
        r1 = r5 = 0
        for q, want in zip(qv, ids, strict=True):
            got = [m.id for m in cat.search(q, 5)]
            r1 += got[:1] == [want]
            r5 += want in got
        cat.close()
        row = {"condition": name, "shot_kind": kind, "catalog_photo": keep_photo, "taught_views": n_views,
               "empty_scene_out": scene_out,
               "queries": len(ids), "recall@1": round(r1 / len(ids), 4), "recall@5": round(r5 / len(ids), 4)}
        print(json.dumps(row), file=sys.stderr)
        return row

    rows = [measure("photo", 0, True)] if kind == "camera" else []
    rows += [measure(f"photo+{n}", n, True) for n in range(1, max_views + 1)]
    rows += [measure(f"views-{n}", n, False) for n in range(1, max_views + 1)]
    if kind == "camera":
        rows += [measure(f"photo+{n}-e", n, True, True) for n in range(1, max_views + 1)]
        rows += [measure(f"views-{n}-e", n, False, True) for n in range(1, max_views + 1)]
    return rows


def rooms(benchmark: Path, work: Path, seed: int) -> dict:
    """Why taught camera views can lower recall: with one camera view per item taught (``views``' "photo+1"),
    how many wrong top-1 answers were won by another item's shot, and how many of those shots were taken in
    the query's room. Room numbers come from replaying the renders of the benchmark (seed 0, 2 scenes of 3
    frames per item, as ``python -m pi_search.tools.benchmark_data benchmark`` makes it) and of ``views``."""
    import csv

    from pi_search.live.catalog import LiveCatalog
    from pi_search.tools.benchmark_data import (
        jitter,
        load_backgrounds,
        load_rgba,
        random_shot,
        render,
        select_stamps,
    )

    stamps = select_stamps()
    backgrounds = load_backgrounds()
    rng = np.random.default_rng(0)
    query_room = {}
    for st in stamps:
        rgba = load_rgba(st.path)
        for sc in range(2):
            shot = random_shot(rng, len(backgrounds))
            for fr in range(3):
                render(rgba, backgrounds, shot, rng)
                if fr == 0:
                    query_room[f"queries/{st.id}_s{sc}_f0.jpg"] = shot.bg
                shot = jitter(shot, rng)
    with open(benchmark / "truth.csv", newline="") as f:
        truth = [(r["query_path"], r["item_id"]) for r in csv.DictReader(f)]
    by_id = {s.id: s for s in stamps}
    rng = np.random.default_rng(seed)
    shot_room = {}
    for item in sorted({i for _, i in truth}):
        rgba = load_rgba(by_id[item].path)
        for v in range(3):
            shot = random_shot(rng, len(backgrounds))
            render(rgba, backgrounds, shot, rng)
            if v == 0:
                shot_room[item] = shot.bg
    qv = np.load(work / "views-queries.npy")
    cat = LiveCatalog.open(work / "views-bundle", store=work / "views-camera-photo+1.sqlite")
    wrong = stolen = same = 0
    for (path, want), q in zip(truth, qv, strict=True):
        top = cat.search(q, 1)[0]
        if top.id != want:
            wrong += 1
            if top.index == -1:       # won by a taught shot, not by a catalog photo
                stolen += 1
                same += shot_room[top.id] == query_room[path]
    cat.close()
    items = sorted(shot_room)
    chance = float(np.mean([shot_room[items[(i * 7 + 3) % len(items)]] == query_room[p]
                            for i, (p, _) in enumerate(truth)]))
    out = {"queries": len(truth), "wrong_top1": wrong, "won_by_another_items_shot": stolen,
           "that_shot_in_the_querys_room": same, "same_room_by_chance": round(chance, 4),
           "rooms": len(backgrounds)}
    print(json.dumps(out), file=sys.stderr)
    return out


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, default=Path("/tmp/pi-search-taught"),
                    help="data and bundles (the 100k bundle is made as bench_scale.py makes it)")
    ap.add_argument("--bundle-items", type=int, default=100_000)
    ap.add_argument("--taught", default="0,1000,10000", help="taught item counts")
    ap.add_argument("--shots", type=int, default=1, help="shots per taught item for the latency rows")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--benchmark", type=Path, default=ROOT / "var" / "benchmark",
                    help="public benchmark folder (python -m pi_search.tools.benchmark_data benchmark)")
    ap.add_argument("--views", type=int, default=3, help="most taught camera views per item (0: skip)")
    ap.add_argument("--shot-kinds", default="camera,photo", help="how taught shots are embedded")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--compact", action="store_true", help="also time a compaction of each store")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "taught.json")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    result = {"machine": {"cpu": platform.machine(), "cores": os.cpu_count(),
                          "python": platform.python_version(), "numpy": np.__version__,
                          "load_average_before": os.getloadavg()}}
    if not a.skip_latency:
        counts = [int(c) for c in a.taught.split(",") if c]
        result["latency"] = latency(a.work, a.bundle_items, counts, a.shots, a.queries, a.compact)
    if a.views:
        (a.work / "views").mkdir(exist_ok=True)
        result["views"] = []
        for kind in a.shot_kinds.split(","):
            result["views"] += views(a.benchmark, a.work / "views", a.views, seed=1, kind=kind)
        if "camera" in a.shot_kinds.split(","):
            result["rooms"] = rooms(a.benchmark, a.work / "views", seed=1)
    result["machine"]["load_average_after"] = os.getloadavg()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"JSON: {a.out}", file=sys.stderr)


def table(result: dict) -> str:
    lines = []
    if result.get("latency"):
        lines.append(f"{'bundle':>8} {'taught':>7} {'vectors':>8} {'p50 ms':>7} {'p99 ms':>7} "
                     f"{'bundle p50':>10} {'overhead':>8} {'cpu p50':>7} {'bundle cpu':>10} {'top1':>5} "
                     f"{'R@5 vs exact':>12} {'add ms':>7} {'compact s':>9}")
        for r in result["latency"]:
            t1 = f"{r['taught_top1']:.2f}" if r["taught_top1"] is not None else "-"
            lines.append(f"{r['bundle_items']:>8} {r['taught_items']:>7} {r['taught_vectors']:>8} "
                         f"{r['search_p50_ms']:>7.3f} {r['search_p99_ms']:>7.3f} "
                         f"{r['bundle_only_p50_ms']:>10.3f} {r['merge_overhead_p50_ms']:>8.3f} "
                         f"{r['search_cpu_p50_ms']:>7.3f} {r['bundle_only_cpu_p50_ms']:>10.3f} "
                         f"{t1:>5} {r['recall5_vs_exact_taught']:>12.3f} {r['add_searchable_ms']:>7.1f} "
                         f"{r.get('compact_s', float('nan')):>9.1f}")
    if result.get("views"):
        lines.append("")
        lines.append(f"{'condition':<11} {'shots as':>8} {'photo':>5} {'views':>5} {'empty out':>9} "
                     f"{'R@1':>6} {'R@5':>6}")
        for r in result["views"]:
            photo = "yes" if r["catalog_photo"] else "no"
            out = "yes" if r.get("empty_scene_out") else "no"
            lines.append(f"{r['condition']:<11} {r['shot_kind']:>8} {photo:>5} {r['taught_views']:>5} "
                         f"{out:>9} {r['recall@1']:>6.3f} {r['recall@5']:>6.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
