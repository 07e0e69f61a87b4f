"""Where a big bundle loses recall, stage by stage, at up to ten million streamed synthetic items.

One streamed pass over the vectors (blocks shared between worker processes) finds, for each query, the
exact full-dimension top 10 (and keeps those vectors) and the top 10 by the int8 PCA store's estimate of the
cosine for several kept dimensions: the ceiling of the re-rank store at that size. Then coarse quantizers
of several list counts are trained on a spread sample, and the share of the true top 10 whose list is
among the ``nprobe`` lists nearest the query is counted: the ceiling of the inverted lists. Neither needs a
bundle, so a size's limits are known in minutes instead of a build of hours.

    nice -n 10 python bench/bench_big_stages.py --n 10000000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_scale  # noqa: E402
from bench_big import queries  # noqa: E402
from support.synth_stream import Synth  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
K = 10
STORE_DIMS = (512, 768, 1024, 1280)

_state: dict = {}


class _Projected:
    """Rows of ``x`` projected by ``proj`` as they are sliced: float32 [rows, dims]."""

    def __init__(self, x, proj, dims: int):
        self._x, self._proj, self.shape = x, proj, (x.shape[0], dims)

    def __getitem__(self, sl) -> np.ndarray:
        return self._proj(self._x[sl])


def _top_merge(best_s, best_i, s, ids, k):
    """Merge block scores ``s`` [nq, m] (row ids ``ids`` [m]) into the running best ``k``."""
    kk = min(k, s.shape[1])
    top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
    cs = np.concatenate([best_s, np.take_along_axis(s, top, 1)], 1)
    ci = np.concatenate([best_i, ids[top]], 1)
    o = np.argsort(-cs, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cs, o, 1), np.take_along_axis(ci, o, 1), top, o


def _init(n, real, q, mean, u):
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    _state.update(x=Synth(n, real), q=q, mean=mean, u=u)


def _work(blocks: list[int]) -> dict:
    """Exact and estimated top 10 over ``blocks``, with the exact winners' vectors."""
    x, q, mean, u = _state["x"], _state["q"], _state["mean"], _state["u"]
    nq = len(q)
    qy = (q - mean) @ u.T
    const = q @ mean - float(mean @ mean)
    best = {"full": (np.full((nq, K), -np.inf, np.float32), np.zeros((nq, K), np.int64))}
    vecs = np.zeros((nq, K, x.shape[1]), np.float32)
    for d in STORE_DIMS:
        best[d] = (np.full((nq, K), -np.inf, np.float32), np.zeros((nq, K), np.int64))
    for j in blocks:
        b = x.block(j)
        ids = np.arange(j * 10_000, j * 10_000 + len(b), dtype=np.int64)
        s = q @ b.T
        bs, bi = best["full"]
        bs, bi, top, o = _top_merge(bs, bi, s, ids, K)
        cand = np.concatenate([vecs, b[top]], 1)
        vecs = np.take_along_axis(cand, o[:, :, None], 1)
        best["full"] = (bs, bi)
        y = (b - mean) @ u.T
        off = b @ mean
        for d in STORE_DIMS:
            yd = y[:, :d]
            mx = np.abs(yd).max(axis=1)
            mx = np.where(mx > 0, mx, 1.0)
            yi = np.round(yd * (127.0 / mx[:, None])).astype(np.float32)
            est = (qy[:, :d] @ yi.T) * (mx / 127.0) + off + const[:, None]
            bs, bi = best[d]
            bs, bi, _, _ = _top_merge(bs, bi, est, ids, K)
            best[d] = (bs, bi)
    return {"best": best, "vecs": vecs}


def stream(n: int, real: np.ndarray, q: np.ndarray, mean, u, workers: int) -> dict:
    x = Synth(n, real)
    chunks = [list(range(i, x.blocks, workers * 8)) for i in range(workers * 8)]
    t0 = time.perf_counter()
    nq = len(q)
    best = {k: (np.full((nq, K), -np.inf, np.float32), np.zeros((nq, K), np.int64))
            for k in ("full", *STORE_DIMS)}
    vecs = np.zeros((nq, K, x.shape[1]), np.float32)
    ctx = mp.get_context("fork")
    with ctx.Pool(workers, initializer=_init, initargs=(n, real, q, mean, u)) as pool:
        for done, part in enumerate(pool.imap_unordered(_work, chunks), 1):
            for key, (ps, pi) in part["best"].items():
                bs, bi = best[key]
                cs, ci = np.concatenate([bs, ps], 1), np.concatenate([bi, pi], 1)
                o = np.argsort(-cs, axis=1, kind="stable")[:, :K]
                best[key] = (np.take_along_axis(cs, o, 1), np.take_along_axis(ci, o, 1))
                if key == "full":
                    cv = np.concatenate([vecs, part["vecs"]], 1)
                    vecs = np.take_along_axis(cv, o[:, :, None], 1)
            print(f"  streamed {done}/{len(chunks)} parts in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)
    return {"best": best, "vecs": vecs, "seconds": time.perf_counter() - t0}


def coarse(train: np.ndarray, q: np.ndarray, tv: np.ndarray, nlist: int, probes: list[int],
           threads: int, flat: bool = False) -> dict:
    """Share of the true top 10 (vectors ``tv`` [nq, K, d]) in the ``nprobe`` lists nearest each query."""
    import faiss

    from pi_search.bundle.backends.ivfpq import FLAT_LISTS_MAX, TwoLevelLists, _kmeans

    faiss.omp_set_num_threads(threads)
    d = train.shape[1]
    t0 = time.perf_counter()
    lists = TwoLevelLists(faiss, train, nlist) if nlist > FLAT_LISTS_MAX and not flat else None
    centroids = lists.centroids if lists else _kmeans(faiss, train, nlist, 1)
    train_s = time.perf_counter() - t0
    flat = faiss.IndexFlatL2(d)
    flat.add(centroids)
    _, qlist = flat.search(np.ascontiguousarray(q), max(probes))
    tv = np.ascontiguousarray(tv.reshape(-1, d))
    tlist = (lists.assign(tv) if lists else flat.search(tv, 1)[1][:, 0]).reshape(len(q), -1)
    out = {"nlist": nlist, "train_s": round(train_s, 1), "train_rows": len(train)}
    some = np.ascontiguousarray(train[:200_000])
    sizes = np.bincount(lists.assign(some) if lists else flat.search(some, 1)[1][:, 0], minlength=nlist)
    out["list_size_cv"] = round(float(sizes.std() / max(sizes.mean(), 1e-9)), 3)
    for p in probes:
        hit = [np.isin(tlist[i], qlist[i, :p]).mean() for i in range(len(q))]
        out[f"nprobe{p}"] = round(float(np.mean(hit)), 4)
    return out


def _key(row: dict) -> tuple:
    if row["stage"] == "store":
        return ("store", row["n"], row["dims"])
    return ("lists", row["n"], row["nlist"], row["whiten_power"], row["index_dims"], row["flat"])


def save(out: Path, rows: list[dict], n: int, stream_s: float, queries: int) -> None:
    """Merge ``rows`` into the report ``out``: a row replaces the earlier one of the same measurement."""
    old = json.loads(out.read_text()) if out.is_file() else {}
    keys = {_key(r) for r in rows}
    merged = [r for r in old.get("rows", []) if _key(r) not in keys] + rows
    streams = {**old.get("stream_s", {}), str(n): round(stream_s)}
    out.write_text(json.dumps({"machine": bench_scale._machine(), "queries": queries, "stream_s": streams,
                               "rows": sorted(merged, key=lambda r: (r["n"], r["stage"] != "store"))},
                              indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/pi-search-big"))
    ap.add_argument("--lists", default="4096:1:256,16384:1:256,16384:0.5:256",
                    help="inverted lists measured, as nlist:whitening power:PCA dims[:flat] (flat: one "
                         "k-means even past FLAT_LISTS_MAX)")
    ap.add_argument("--probes", default="64,128,256,512,1024")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "big-stages.json")
    a = ap.parse_args()
    from threadpoolctl import threadpool_limits

    from pi_search.bundle.backends.ivfpq import FLAT_LISTS_MAX, TRAIN_ROWS_MAX, sample
    from pi_search.bundle.projection import fit_pca

    a.work.mkdir(parents=True, exist_ok=True)
    real = bench_scale.real_embeddings(a.work, 3000)
    with threadpool_limits(1):
        x = Synth(a.n, real)
        q = queries(x, 1000)[:a.queries]
        smp = sample(x)
        p = fit_pca(smp, x.shape[1] - 1)
    u = np.concatenate([p.components, np.zeros((1, x.shape[1]), np.float32)])   # 1279 axes + a zero row
    cache = a.work / f"stages-{a.n}-{a.queries}.npz"
    if cache.is_file():
        z = np.load(cache)
        best = {"full": (z["full_s"], z["full_i"])}
        best.update({d: (z[f"s{d}"], z[f"i{d}"]) for d in STORE_DIMS})
        vecs = z["vecs"]
        stream_s = float(z["seconds"])
    else:
        r = stream(a.n, real, q, p.mean, u, a.workers)
        best, vecs, stream_s = r["best"], r["vecs"], r["seconds"]
        np.savez(cache, full_s=best["full"][0], full_i=best["full"][1], vecs=vecs, seconds=stream_s,
                 **{f"s{d}": best[d][0] for d in STORE_DIMS}, **{f"i{d}": best[d][1] for d in STORE_DIMS})
    truth = best["full"][1]
    rows = []
    for d in STORE_DIMS:
        r10 = bench_scale.recall(list(best[d][1]), truth)
        rows.append({"stage": "store", "n": a.n, "dims": d, "recall10": round(r10, 4)})
        print(f"  store ceiling, int8 pca{d}: {r10:.4f}", file=sys.stderr, flush=True)
    gap = best["full"][0][:, 9] - best["full"][0][:, 10 - 2]
    print(f"  median score of the 10th: {np.median(best['full'][0][:, 9]):.4f}; gap 9th-10th "
          f"{np.median(np.abs(gap)):.5f}", file=sys.stderr)
    probes = [int(v) for v in a.probes.split(",")]
    var = ((((smp[:100_000] - p.mean) @ p.components.T) ** 2).mean(0)).astype(np.float32)
    samples: dict[int, np.ndarray] = {}
    for spec in a.lists.split(","):
        nlist, power, idims, *how = spec.split(":")
        nlist, power, idims = int(nlist), float(power), int(idims)
        flat = bool(how and how[0] == "flat")
        # whitening to the power ``power``: 0 the plain PCA, 1 fully whitened (every axis of variance 1)
        c = p.components[:idims] / (np.maximum(var[:idims], 1e-12) ** (power / 2))[:, None]

        def proj(v, c=c):
            y = (v - p.mean) @ c.T
            return (y / np.linalg.norm(y, axis=-1, keepdims=True)).astype(np.float32)

        want = min(max(262_144, 39 * nlist), TRAIN_ROWS_MAX)
        key = (want, power, idims)
        if key not in samples:
            samples.clear()
            with threadpool_limits(a.workers):
                samples[key] = proj(smp) if want <= len(smp) else sample(_Projected(x, proj, idims), want)
        r = coarse(samples[key], proj(q), proj(vecs), nlist, probes, a.workers, flat)
        r.update(stage="lists", n=a.n, index_dims=idims, whiten_power=power,
                 flat=flat or nlist <= FLAT_LISTS_MAX)
        rows.append(r)
        print(f"  lists: {json.dumps(r)}", file=sys.stderr, flush=True)
        save(a.out, rows, a.n, stream_s, a.queries)
    save(a.out, rows, a.n, stream_s, a.queries)


if __name__ == "__main__":
    main()
