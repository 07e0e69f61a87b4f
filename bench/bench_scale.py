"""Index scale benchmark: build time, file size, load time, RSS, latency and recall@10 of bundle layouts."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DIM = 1280
K = 10
ONLY: list[str] = []  # --only: measure just the layouts whose names contain one of these


# ----------------------------------------------------------------------------------------------- data
def real_embeddings(work: Path, limit: int) -> np.ndarray:
    """Embeddings of real photos by the shipped model: catalog views and crops, float32 [n, 1280]."""
    cache = work / f"real-{limit}.npy"
    if cache.is_file():
        return np.load(cache)
    from pi_search import images
    from pi_search.model.extractor import Extractor
    from pi_search.model.framing import embed_catalog_image, embed_query_image

    sources = sorted(Path("/usr/share/tuxpaint/stamps").rglob("*.png"))
    sources += sorted(Path("/usr/share/doc/opencv-doc/examples/data").glob("*.jpg"))
    try:
        import interior_photos

        sources += sorted(Path(interior_photos.get_photo_dir()).glob("*.jpg"))
    except Exception:  # the room photos are optional here
        pass
    ex = Extractor()
    rng = np.random.default_rng(0)
    out = []
    t0 = time.perf_counter()
    for path in sources:
        try:
            rgb = images.read(path)
        except Exception:
            continue
        if min(rgb.shape[:2]) < 32:
            continue
        out.append(embed_catalog_image(ex, rgb))
        h, w = rgb.shape[:2]
        for _ in range(3):
            s = rng.uniform(0.45, 0.8)
            ch, cw = int(h * s), int(w * s)
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            out.append(embed_query_image(ex, rgb[y:y + ch, x:x + cw]))
        if len(out) >= limit:
            break
    vecs = np.stack(out[:limit]).astype(np.float32)
    print(f"real: {len(vecs)} embeddings of {len(sources)} photos in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    np.save(cache, vecs)
    return vecs


def embedding_shape(real: np.ndarray | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, basis)`` of vectors shaped like the model's embeddings: ``mean + z @ basis`` with z standard
    normal [m, DIM] has the mean and covariance (spectrum and axes) of ``real`` when given, else a power-law
    spectrum on random axes (drawn from ``rng``)."""
    if real is not None and len(real) > DIM:
        mean = real.mean(axis=0)
        evals, evecs = np.linalg.eigh(np.cov(real, rowvar=False))
        evals = np.clip(evals, 1e-9, None)
    else:
        mean = np.abs(rng.standard_normal(DIM)).astype(np.float32) * 0.03
        evals = (np.arange(1, DIM + 1) ** -1.2) * 0.05
        evecs, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    return mean, (evecs * np.sqrt(evals)).T.astype(np.float32)  # basis [DIM, DIM]: z @ basis ~ N(0, cov)


def synthetic(work: Path, n: int, real: np.ndarray | None, seed: int = 0) -> Path:
    """Clustered, anisotropic, L2-normalised vectors written to ``work/synth-N.npy`` (float32 [n, 1280]).

    A Gaussian mixture shaped like the model's embeddings: the mean and the covariance (spectrum and axes)
    come from real embeddings when given (else a power-law spectrum on random axes); cluster centres take
    60% of the variance, items scatter around them with the rest; about 50 items per cluster.
    """
    path = work / f"synth-{n}.npy"
    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    mean, basis = embedding_shape(real, rng)
    clusters = max(1, n // 50)
    centres = mean + np.sqrt(0.6) * rng.standard_normal((clusters, DIM)).astype(np.float32) @ basis
    out = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.float32, shape=(n, DIM))
    step = 50_000
    for i in range(0, n, step):
        m = min(step, n - i)
        c = rng.integers(0, clusters, m)
        x = centres[c] + np.sqrt(0.4) * rng.standard_normal((m, DIM)).astype(np.float32) @ basis
        out[i:i + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()
    del out
    os.replace(path.with_suffix(".tmp.npy"), path)
    return path


def make_queries(x: np.ndarray, nq: int, seed: int = 1, noise: float = 1.0) -> np.ndarray:
    """Camera-like queries: catalog items plus noise along the data's own directions (float32 [nq, 1280])."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x), nq, replace=False)
    base = np.asarray(x[np.sort(idx)], dtype=np.float32)
    other = np.asarray(x[np.sort(rng.choice(len(x), nq, replace=False))], dtype=np.float32)
    # Noise shaped like the differences between items (anisotropic), scaled relative to an item's norm.
    d = other - other.mean(axis=0)
    jitter = 0.02 * rng.standard_normal(base.shape).astype(np.float32)
    q = base + noise * d[rng.permutation(nq)] * 0.5 + jitter
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def exact_topk(x: np.ndarray, q: np.ndarray, k: int = K, step: int = 100_000) -> np.ndarray:
    """Exact full-dimension cosine top-k indices (int64 [nq, k]) of queries ``q`` in ``x``."""
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.zeros((len(q), k), np.int64)
    for i in range(0, len(x), step):
        s = q @ np.asarray(x[i:i + step], dtype=np.float32).T
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], 1)
        cand_i = np.concatenate([best_i, top + i], 1)
        o = np.argsort(-cand_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, o, 1), np.take_along_axis(cand_i, o, 1)
    return best_i


def recall(pred: list[np.ndarray], truth: np.ndarray) -> float:
    hits = [len(set(p[:K].tolist()) & set(t.tolist())) / K for p, t in zip(pred, truth, strict=True)]
    return float(np.mean(hits))


# ---------------------------------------------------------------------------------------------- bundles
def build(out: Path, x: np.ndarray, **opts) -> dict:
    """Write a bundle with bundle.write.write_bundle for synthetic vectors; returns timing and sizes."""
    from pi_search.bundle.items import Item
    from pi_search.bundle.write import BuildOptions, write_bundle

    if (out / "manifest.json").is_file():
        m = json.loads((out / "manifest.json").read_text())
    else:
        items = [Item(str(i), f"item {i}") for i in range(len(x))]
        m = write_bundle(out, x, items, model={"name": "synthetic", "sha256": "0" * 64, "dim": x.shape[1]},
                         options=BuildOptions.parse(**opts)).to_dict()
    return {"build_s": m["build_seconds"], "files_mb": _sizes(out)}


def derive(base: Path, out: Path, x: np.ndarray, *, store: str | None = None, usearch_dims: int | None = -1,
           usearch_dtype: str = "f16") -> dict:
    """A bundle sharing ``base``'s files (hard links) with another store precision or a usearch index."""
    from pi_search.bundle.backends.annoy import FILE as ANNOY_FILE
    from pi_search.bundle.backends.usearch import FILE, build_index
    from pi_search.bundle.manifest import PCA_COMPONENTS_FILE, PCA_MEAN_FILE, STORE_FILE, STORE_SCALE_FILE
    from pi_search.bundle.projection import ProjectedView, Projection
    from pi_search.bundle.store import write_store

    if (out / "manifest.json").is_file():
        m = json.loads((out / "manifest.json").read_text())
        return {"build_s": m["build_seconds"], "files_mb": _sizes(out)}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    m = json.loads((base / "manifest.json").read_text())
    t0 = time.perf_counter()
    for f in base.iterdir():
        if f.name == "manifest.json" or (store and f.name.startswith("vectors")):
            continue
        if usearch_dims != -1 and f.name == ANNOY_FILE:
            continue
        os.link(f, tmp / f.name)
    if store:
        write_store(tmp, x, store)
        scale = STORE_SCALE_FILE if store == "int8" else None
        m["store"] = {"file": STORE_FILE, "dtype": store, "scale": scale}
    if usearch_dims != -1:
        if m["projection"] and usearch_dims:
            p = Projection(np.load(tmp / PCA_MEAN_FILE), np.load(tmp / PCA_COMPONENTS_FILE),
                              m["projection"]["whiten"], 0.0)
            view = ProjectedView(x, p)
        else:
            view, m["projection"] = x, None
            for f in (PCA_MEAN_FILE, PCA_COMPONENTS_FILE):
                (tmp / f).unlink(missing_ok=True)
        build_index(tmp / FILE, view, usearch_dtype)
        m["index"] = {"backend": "usearch", "file": FILE, "metric": "cos", "dim": view.shape[1],
                      "dtype": usearch_dtype}
        m["n_trees"] = None
    m["build_seconds"] = round(time.perf_counter() - t0 + (0 if store and usearch_dims == -1 else 0), 3)
    (tmp / "manifest.json").write_text(json.dumps(m, indent=2))
    os.replace(tmp, out)
    return {"build_s": m["build_seconds"], "files_mb": _sizes(out)}


def _sizes(d: Path) -> dict:
    return {f.name: round(f.stat().st_size / 1e6, 2) for f in sorted(d.iterdir()) if f.is_file()}


def drop_cache(d: Path) -> None:
    """Evict a bundle's files from the page cache (POSIX_FADV_DONTNEED), so the next process starts cold."""
    for f in d.iterdir():
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


# ------------------------------------------------------------------------------------ fresh-process probe
def _rss() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = round(int(val.split()[0]) / 1024, 1)
    return out


def probe(bundle: Path, queries: Path, truth: Path, search: dict, nq: int,
          drop_after_open: bool = False) -> dict:
    """Runs in a fresh process: open the bundle, answer ``nq`` queries one by one, measure everything.

    ``drop_after_open``: evict the bundle's files from the page cache again once it is open (opening reads
    every byte to check it, which leaves the files cached), so the first queries start cold after all.
    """
    from pi_search.bundle.reader import Bundle

    q = np.load(queries)[:nq]
    t = np.load(truth)[:nq]
    rss0 = _rss()
    t0 = time.perf_counter()
    b = Bundle.open(bundle, search=search or None)
    load_ms = (time.perf_counter() - t0) * 1e3
    if drop_after_open:
        drop_cache(bundle)
    rss_load = _rss()
    lat, pred = [], []
    for v in q:
        s = time.perf_counter()
        matches = b.search(v, K)
        lat.append(time.perf_counter() - s)
        pred.append(np.array([m.index for m in matches]))
    lat_ms = np.array(lat) * 1e3
    rss_after = _rss()
    warm = []
    for v in q:  # the same queries again: the pages they need are now in the page cache
        s = time.perf_counter()
        b.search(v, K)
        warm.append(time.perf_counter() - s)
    warm_ms = np.array(warm) * 1e3
    return {"load_ms": round(load_ms, 1), "rss_start_mb": rss0, "rss_load_mb": rss_load,
            "rss_after_mb": rss_after, "first_ms": round(float(lat_ms[0]), 2),
            "p50_ms": round(float(np.percentile(lat_ms, 50)), 3),
            "p99_ms": round(float(np.percentile(lat_ms, 99)), 3),
            "warm_p50_ms": round(float(np.percentile(warm_ms, 50)), 3),
            "warm_p99_ms": round(float(np.percentile(warm_ms, 99)), 3),
            "recall10": round(recall(pred, t), 4), "queries": len(q)}


def run_probe(bundle: Path, work: Path, tag: str, search: dict | None, nq: int,
              drop_after_open: bool = False) -> dict:
    drop_cache(bundle)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--probe", str(bundle), "--probe-queries", str(work / f"q-{tag}.npy"),
           "--probe-truth", str(work / f"truth-{tag}.npy"), "--probe-search", json.dumps(search or {}),
           "--queries", str(nq)] + (["--probe-drop-after-open"] if drop_after_open else [])
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        err = res.stderr.strip()
        return {"error": err.splitlines()[-1] if err else f"exit {res.returncode}"}
    return json.loads(res.stdout)


# -------------------------------------------------------------------------------------------- the plan
def configs(n: int, full: bool, usearch: bool) -> list[dict]:
    """Bundle layouts and query settings measured at ``n`` items."""
    ann = {"mode": "ann"}
    c = [
        {"name": "exact f32", "bundle": "pca256w-f32", "search": {"mode": "exact"}, "max_n": 200_000},
        {"name": "exact f16", "bundle": "pca256w", "search": {"mode": "exact"}, "max_n": 20_000},
    ]
    for sk, cand in ((10_000, 100), (20_000, 200)):
        c.append({"name": f"annoy pca256 50t sk{sk // 1000}k +rerank{cand} f16", "bundle": "pca256",
                  "search": {**ann, "search_k": sk, "candidates": cand}, "max_n": 200_000})
    for sk, cand in ((5_000, 100), (10_000, 100), (20_000, 200)):
        c.append({"name": f"annoy pca256w 50t sk{sk // 1000}k +rerank{cand} f16", "bundle": "pca256w",
                  "search": {**ann, "search_k": sk, "candidates": cand}})
    c.append({"name": "annoy pca256w 50t sk40k +rerank400 f16", "bundle": "pca256w",
              "search": {**ann, "search_k": 40_000, "candidates": 400}, "min_n": 500_000})
    for sk, cand in ((10_000, 100), (20_000, 200)):
        c.append({"name": f"annoy pca256w 50t sk{sk // 1000}k +rerank{cand} int8", "bundle": "pca256w-i8",
                  "search": {**ann, "search_k": sk, "candidates": cand}})
    if full:
        c.append({"name": "annoy full-d 100t sk40k", "bundle": "full100",
                  "search": {**ann, "search_k": 40_000, "candidates": 10}, "max_n": 20_000})
    if usearch:
        c.append({"name": "usearch full-d f16 (view)", "bundle": "us-full",
                  "search": {**ann, "candidates": 10}, "max_n": 20_000})
        for cand in (50, 100):
            c.append({"name": f"usearch pca256w f16 (view) +rerank{cand} f16", "bundle": "us-pca256w",
                      "search": {**ann, "candidates": cand}})
    c = [x for x in c if x.get("max_n", 1 << 62) >= n and x.get("min_n", 0) <= n]
    return [x for x in c if not ONLY or any(o in x["name"] for o in ONLY)]


def ensure_bundle(name: str, work: Path, tag: str, x: np.ndarray, built: dict) -> Path:
    d = work / f"b-{tag}-{name}"
    if name in built:
        return d
    t0 = time.perf_counter()
    if name == "pca256":
        built[name] = build(d, x, dims=256, search="ann", store_dtype="float16", n_trees=50)
    elif name == "pca256w":
        built[name] = build(d, x, dims=256, whiten=True, search="ann", store_dtype="float16", n_trees=50)
    elif name == "pca256w-f32":
        built[name] = derive(ensure_bundle("pca256w", work, tag, x, built), d, x, store="float32")
    elif name == "pca256w-i8":
        built[name] = derive(ensure_bundle("pca256w", work, tag, x, built), d, x, store="int8")
    elif name == "full100":
        built[name] = build(d, x, dims=None, search="ann", store_dtype="float16", n_trees=100)
    elif name == "us-full":
        built[name] = derive(ensure_bundle("pca256w", work, tag, x, built), d, x, usearch_dims=None)
    elif name == "us-pca256w":
        built[name] = derive(ensure_bundle("pca256w", work, tag, x, built), d, x, usearch_dims=256)
    print(f"  built {d.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return d


def pca_cap(x: np.ndarray, q: np.ndarray, truth: np.ndarray, dims: int, whiten: bool) -> float:
    """Recall@10 of exact search in the PCA space alone (no re-ranking): the ceiling of projection only."""
    from pi_search.bundle.projection import fit_pca

    p = fit_pca(x, dims, whiten=whiten)
    step, proj = 100_000, []
    for i in range(0, len(x), step):
        proj.append(p.apply(np.asarray(x[i:i + step])))
    return recall(list(exact_topk(np.concatenate(proj), p.apply(q))), truth)


def run_set(name: str, x: np.ndarray, work: Path, nq: int, full: bool, usearch: bool) -> list[dict]:
    print(f"== {name}: {len(x)} items", file=sys.stderr, flush=True)
    tag = f"{name}-{len(x)}"
    q = make_queries(x, nq)
    t0 = time.perf_counter()
    truth = exact_topk(x, q)
    np.save(work / f"q-{tag}.npy", q)
    np.save(work / f"truth-{tag}.npy", truth)
    per_query = round((time.perf_counter() - t0) * 1e3 / nq, 3)
    rows = [{"set": name, "n": len(x), "name": "numpy exact f32 in RAM (reference)", "p50_ms": per_query,
             "recall10": 1.0, "note": "batched ground-truth pass, 2 threads"}]
    if len(x) <= 200_000 and not ONLY:
        for whiten in (False, True):
            label = f"pca256{'-whiten' if whiten else ''} exact (no re-rank)"
            rows.append({"set": name, "n": len(x), "name": label,
                         "recall10": round(pca_cap(x, q, truth, 256, whiten), 4)})
            print(f"  {rows[-1]['name']}: {rows[-1]['recall10']}", file=sys.stderr, flush=True)
    built: dict = {}
    for c in configs(len(x), full, usearch):
        d = ensure_bundle(c["bundle"], work, tag, x, built)
        r = run_probe(d, work, tag, c["search"], nq)
        row = {"set": name, "n": len(x), "name": c["name"], **built[c["bundle"]], **r}
        rows.append(row)
        print(f"  {c['name']}: {json.dumps(r)}", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    head = (f"{'set':<8} {'items':>8}  {'layout and query':<46} {'build s':>7} {'files MB':>8} "
            f"{'load ms':>7} "
            f"{'RSS load':>13} {'RSS 1k q':>13} {'p50 ms':>7} {'p99 ms':>7} {'warm p50':>8} {'warm p99':>8} "
            f"{'R@10':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        files = sum(r.get("files_mb", {}).values()) if r.get("files_mb") else None
        rl, ra = r.get("rss_load_mb", {}), r.get("rss_after_mb", {})

        def rss(d):
            return f"{d['RssAnon']:.0f}+{d['RssFile']:.0f}" if d else ""

        lines.append(f"{r['set']:<8} {r['n']:>8}  {r['name'][:46]:<46} {_f(r.get('build_s'), 7, 1)} "
                     f"{_f(files, 8, 0)} {_f(r.get('load_ms'), 7, 1)} {rss(rl):>13} {rss(ra):>13} "
                     f"{_f(r.get('p50_ms'), 7, 2)} {_f(r.get('p99_ms'), 7, 2)} "
                     f"{_f(r.get('warm_p50_ms'), 8, 2)} {_f(r.get('warm_p99_ms'), 8, 2)} "
                     f"{_f(r.get('recall10'), 6, 3)}"
                     + (f"  {r['error']}" if r.get("error") else ""))
    lines.append("RSS: anonymous+file-backed MB of the query process (fresh process, cold page cache); "
                 "p50/p99: 1,000 queries from a cold page cache; warm: the same queries again.")
    return "\n".join(lines)


def _f(v, w, p):
    return f"{v:>{w}.{p}f}" if isinstance(v, (int, float)) else " " * w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated synthetic catalog sizes")
    ap.add_argument("--real", type=int, default=3000, help="real embeddings to measure (0: none)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/pi-search-scale"), help="data and bundles")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    ap.add_argument("--no-usearch", action="store_true")
    ap.add_argument("--usearch-max", type=int, default=200_000, help="largest size with usearch indexes")
    ap.add_argument("--full", action="store_true", help="also Annoy on full 1280-d vectors (slow to build)")
    ap.add_argument("--probe", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--probe-queries", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--probe-truth", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--probe-search", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--probe-drop-after-open", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--only", default="", help="comma-separated name fragments of the layouts to measure")
    a = ap.parse_args()
    ONLY.extend(o for o in a.only.split(",") if o)
    if a.probe:
        search = json.loads(a.probe_search)
        print(json.dumps(probe(a.probe, a.probe_queries, a.probe_truth, search, a.queries,
                               a.probe_drop_after_open)))
        return
    a.work.mkdir(parents=True, exist_ok=True)
    rows = []
    real = real_embeddings(a.work, a.real) if a.real else None
    if real is not None:
        rows += run_set("real", real, a.work, min(a.queries, len(real) // 3), True, not a.no_usearch)
    for n in (int(s) for s in a.sizes.split(",") if s):
        x = np.load(synthetic(a.work, n, real), mmap_mode="r")
        rows += run_set("synth", x, a.work, a.queries, a.full and n <= 20_000,
                        not a.no_usearch and n <= a.usearch_max)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"machine": _machine(), "rows": rows}, indent=1))
    print(table(rows))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"machine": _machine(), "rows": rows}, indent=1))
    print(f"JSON: {a.out}", file=sys.stderr)


def _machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


if __name__ == "__main__":
    main()
