"""Big-catalog benchmark: ivfpq bundles of 1M, 3M and 10M streamed synthetic vectors, against exact search.

Nothing holds all the vectors: they are made block by block from per-block seeds (support/synth_stream.py) as
the bundle build reads them, and the exact full-dimension ground truth rides along the build's first full
pass (batched matrix products per block). Every bundle is then probed in a fresh process (page cache
dropped, one thread): cold and warm latency, resident memory after 1,000 queries, recall@10.

``--learned``: the bundle is built with a learned projection, as ``index build`` learns one for ivfpq (a
whitening cut to as many axes as the store has dims, ``pi_search.learn.whiten.PairStats``; ``--learn-dims``
another cut, 0 every axis), folded by the writer into its PCA. The synthetic
items have no photos, so it learns from their own "views": for ``LEARN_ITEMS`` items, ``LEARN_VIEWS``
perturbations each drawn like the camera-like queries (``bench_scale.make_queries``) from a seed stream of
their own (never the queries'). The ground truth is then exact search in the learned space (the whole
projection, normalised), computed alongside block by block.

    nice -n 10 python bench/bench_big.py --sizes 1000000,3000000,10000000 --work /tmp/big/w
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_scale  # noqa: E402
from support.synth_stream import CHUNK, StreamedTopK, Synth  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
K = 10
THREADS = 1     # threads the build may use (--threads); queries always run on one
LEARN_ITEMS = 20_000   # --learned: items whose views the whitening learns from
LEARN_VIEWS = 4        # ... views an item
LEARN_SEED = 7         # ... their own seed stream (the queries use 1)
LEARN_DIMS = -1        # --learn-dims: the learned axes kept (-1: the store's dims, as index build; 0: all)
DROP_AFTER_OPEN = False   # --drop-after-open: the probes evict the bundle from the page cache once it is open


class SyntheticItems(Sequence):
    """``Item("i", "item i")`` for rows 0..n-1, made when read (ten million Item objects would take GBs)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        from pi_search.bundle.items import Item

        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not 0 <= i < self.n:
            raise IndexError(i)
        return Item(str(i), f"item {i}")

    def __iter__(self) -> Iterator:
        from pi_search.bundle.items import Item

        for i in range(self.n):
            yield Item(str(i), f"item {i}")


def queries(x: Synth, nq: int, seed: int = 1) -> np.ndarray:
    """Camera-like queries (``bench_scale.make_queries``) from the items of 20 random blocks: float32
    [nq, 1280] (the blocks are independent draws of the same mixture: their items are a fair sample).
    """
    rng = np.random.default_rng(seed)
    blocks = np.sort(rng.choice(x.blocks, min(20, x.blocks), replace=False))
    pool = np.concatenate([x.block(int(j)) for j in blocks])
    return bench_scale.make_queries(pool, nq, seed=seed)


def learn(x: Synth, dims: int | None, items: int = LEARN_ITEMS, views: int = LEARN_VIEWS,
          seed: int = LEARN_SEED) -> tuple:
    """A whitening learned from the catalog's own camera-like views, cut to ``dims`` axes (None: all), as
    ``index build`` learns one for ivfpq: ``(Learned, manifest info)`` (``learn_stats``)."""
    stats, info = learn_stats(x, items, views, seed)
    t0 = time.perf_counter()
    learned = stats.fit(dims=dims)
    info["seconds"] = round(info["seconds"] + time.perf_counter() - t0, 2)
    print(f"  learned a {learned.dims}-d whitening from {stats.pairs} views of {stats.items} items in "
          f"{info['seconds']:.0f} s", file=sys.stderr, flush=True)
    return learned, info


def learn_stats(x: Synth, items: int = LEARN_ITEMS, views: int = LEARN_VIEWS,
                seed: int = LEARN_SEED) -> tuple:
    """The sums a whitening is fitted from (``PairStats``), of the catalog's own camera-like views, and the
    manifest's info.

    ``items`` items from blocks spread over the catalog (up to 100 blocks, chosen from the seed stream
    ``seed``); each item's ``views`` views are the item plus half the offset of another sampled item from
    the sample's mean plus a little jitter, normalised: ``bench_scale.make_queries``'s draw, from seeds of
    their own.
    """
    from pi_search.learn.whiten import SHRINK, PairStats

    t0 = time.perf_counter()
    rng = np.random.default_rng([seed, 0])
    blocks = np.sort(rng.choice(x.blocks, min(100, x.blocks), replace=False))
    each = -(-items // len(blocks))
    pool = np.concatenate([x.block(int(j))[np.sort(rng.choice(min(CHUNK, x.n - int(j) * CHUNK),
                                                              min(each, CHUNK), replace=False))]
                           for j in blocks])[:items]
    centre = pool.mean(axis=0)
    stats = PairStats(pool.shape[1])
    for i in range(len(pool)):
        vr = np.random.default_rng([seed, 1, i])
        other = pool[vr.integers(0, len(pool), views)]
        v = pool[i] + (other - centre) * 0.5 + 0.02 * vr.standard_normal(other.shape).astype(np.float32)
        stats.add(pool[i], v / np.linalg.norm(v, axis=1, keepdims=True))
    info = {"type": "whitening", "items": stats.items, "views_per_item": views, "pairs": stats.pairs,
            "shrinkage": SHRINK, "seconds": round(time.perf_counter() - t0, 2),
            "from": "synthetic camera-like views of the catalog's own items"}
    return stats, info


def learn_dims(store_dims: int) -> int | None:
    """The learned axes kept for a store of ``store_dims`` (``LEARN_DIMS``)."""
    return store_dims if LEARN_DIMS == -1 else (LEARN_DIMS or None)


class LearnedTopK:
    """``StreamedTopK`` in a learned space: each block (counted once) goes through ``learned`` first."""

    def __init__(self, gt: StreamedTopK, learned):
        self.gt, self.learned = gt, learned
        self.seconds = 0.0

    def __call__(self, start: int, block: np.ndarray) -> None:
        if start in self.gt.seen:
            return
        t0 = time.perf_counter()
        z = self.learned.apply(block)
        self.seconds += time.perf_counter() - t0
        self.gt(start, z)


def build(n: int, real: np.ndarray, work: Path, opts: dict, nq: int,
          learned: bool = False) -> tuple[Path, dict]:
    """Stream ``n`` vectors into an ivfpq bundle (and the queries' exact top 10 alongside); ``learned``:
    with a projection learned from the catalog's own views, folded into the PCA, and the ground truth in
    its space."""
    from threadpoolctl import threadpool_limits

    from pi_search.bundle.write import BuildOptions, write_bundle

    tag = f"{n}-learned" if learned else f"{n}"
    out = work / f"ivfpq-{tag}"
    info_path = work / f"build-{tag}.json"
    if (out / "manifest.json").is_file() and info_path.is_file():
        return out, json.loads(info_path.read_text())
    shutil.rmtree(out, ignore_errors=True)
    with threadpool_limits(THREADS):
        import faiss

        faiss.omp_set_num_threads(THREADS)
        t0 = time.perf_counter()
        x = Synth(n, real)
        q = queries(x, nq)
        proj, learned_info, learn_s = None, None, 0.0
        if learned:
            proj, learned_info = learn(x, learn_dims(int(opts["dims"])))
            learn_s = learned_info["seconds"]
            gt = StreamedTopK(proj.apply(q), n)
            x.observers.append(LearnedTopK(gt, proj))
        else:
            gt = StreamedTopK(q, n)
            x.observers.append(gt)
        made = x.seconds   # blocks made for the queries and the learning: not the build's
        setup_s = time.perf_counter() - t0
        print(f"  {n}: generator and queries ready in {setup_s:.0f} s", file=sys.stderr, flush=True)
        model = {"name": "synthetic", "sha256": "0" * 64, "dim": 1280}
        m = write_bundle(out, x, SyntheticItems(n), model=model,
                         options=BuildOptions.parse(backend="ivfpq", **opts), learned=proj,
                         learned_info=learned_info).to_dict()
        if not gt.complete:   # not expected: the store pass reads every block
            for j in range(x.blocks):
                if j * CHUNK not in gt.seen:
                    x.block(j)
        truth = gt.result()
    np.save(work / f"q-{tag}.npy", q)
    np.save(work / f"truth-{tag}.npy", truth)
    build_s = float(m["build_seconds"])
    truth_s = gt.seconds + (x.observers[0].seconds if learned else 0.0)
    gen_s = x.seconds - made   # making the vectors while the writer read them
    info = {"build_s": round(build_s, 1), "generate_s": round(gen_s, 1), "truth_s": round(truth_s, 1),
            "build_net_s": round(build_s - gen_s - truth_s, 1), "blocks_made": x.blocks_made,
            "files_mb": bench_scale._sizes(out), "memory": m["memory"], "index": m["index"],
            "projection": m["projection"], "setup_s": round(setup_s, 1), "threads": THREADS}
    if learned:
        info.update(learned=m["learned"], learn_s=round(learn_s, 1), load=os.getloadavg())
    info_path.write_text(json.dumps(info, indent=1))
    print(f"  {n}: built in {build_s:.0f} s (making vectors {gen_s:.0f} s, ground truth "
          f"{truth_s:.0f} s)", file=sys.stderr, flush=True)
    return out, info


def derive_whitened(src: Path, out: Path, opts: dict) -> dict:
    """A whitened copy of the plain-PCA bundle ``src``: new inverted lists, every other file shared (``src``
    already whitened: new lists by this code, on the same projection).

    The int8 store holds the PCA coordinates on the unit axes whether or not the projection is whitened, so
    only ``pca_components.npy`` (the axes divided by the square root of their variance, measured on a spread
    sample of the store) and ``index.faiss`` change; the rest is hard-linked. Saves making ten million
    vectors again to compare the two.
    """
    from types import SimpleNamespace

    from threadpoolctl import threadpool_limits

    from pi_search.bundle import pca_store
    from pi_search.bundle.backends import ivfpq
    from pi_search.bundle.files import fingerprint
    from pi_search.bundle.memory import needs

    info_path = out.parent / f"build-{out.name}.json"
    if (out / "manifest.json").is_file() and info_path.is_file():
        return json.loads(info_path.read_text())
    m = json.loads((src / "manifest.json").read_text())
    relist = bool(m["projection"]["whiten"])   # already whitened: new lists only, the same projection
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    t0 = time.perf_counter()
    for f in src.iterdir():
        if f.is_file() and f.name not in ("manifest.json", ivfpq.FILE, ivfpq.SCALE_FILE,
                                          "pca_components.npy"):
            os.link(f, tmp / f.name)
    with threadpool_limits(THREADS):
        import faiss

        faiss.omp_set_num_threads(THREADS)
        axes = np.load(src / "pca_components.npy")
        if relist:
            comps = axes
            os.link(src / "pca_components.npy", tmp / "pca_components.npy")
        else:
            unit = pca_store.ProjectedRows(tmp, axes)
            y = ivfpq.sample(_Coordinates(unit))
            var = (y.astype(np.float64) ** 2).mean(axis=0)
            comps = axes / np.sqrt(np.maximum(var, 1e-4 * var.max()))[:, None].astype(np.float32)
            np.save(tmp / "pca_components.npy", comps.astype(np.float32))
            del y
        options = SimpleNamespace(nlist=opts["nlist"], pq_bytes=opts["pq_bytes"], nprobe=0,
                                  index_dims=opts["index_dims"])
        m["index"] = ivfpq.IvfPq().build(tmp, pca_store.ProjectedRows(tmp, comps), options)
    m["projection"]["whiten"] = True
    m["search"]["nprobe"] = m["index"]["nprobe"]
    m["files"].pop(ivfpq.SCALE_FILE, None)
    m["files"] = {p.name: fingerprint(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    m["memory"] = needs(tmp, m)
    m["build_seconds"] = round(time.perf_counter() - t0, 1)
    m["derived_from"] = src.name
    (tmp / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
    os.replace(tmp, out)
    base = json.loads((src.parent / f"build-{src.name.split('-')[-1]}.json").read_text())
    info = {**base, "derived_s": m["build_seconds"], "files_mb": bench_scale._sizes(out),
            "memory": m["memory"], "index": m["index"], "projection": m["projection"]}
    info_path.write_text(json.dumps(info, indent=1))
    print(f"  {out.name}: new lists in {m['build_seconds']:.0f} s", file=sys.stderr, flush=True)
    return info


class _Coordinates:
    """The raw PCA coordinates ``y`` of a store (int8 times its scale): float32 [rows, dims] when sliced."""

    def __init__(self, rows):
        self._r, self.shape = rows, rows.shape

    def __getitem__(self, sl) -> np.ndarray:
        return self._r.store[sl].astype(np.float32) * self._r.scale[sl][:, None]


def probe_rows(n: int, bundle: Path, work: Path, info: dict, opts: dict, probes: list[dict], nq: int,
               tag: str = "") -> list:
    rows = []
    for search in probes:
        r = bench_scale.run_probe(bundle, work, tag or f"{n}", search, nq, DROP_AFTER_OPEN)
        ix = info["index"]
        w = "w" if info["projection"]["whiten"] else ""
        pq = f"PQ{ix['pq_m']}x{ix['pq_bits']}fs" if ix.get("fast_scan") else f"PQ{ix['pq_bytes']}"
        name = (f"ivfpq IVF{ix['nlist']},{pq} on pca{ix['dim']}{w} nprobe{search['nprobe']} "
                f"+rerank{search['candidates']} int8 pca{opts['dims']}")
        if info.get("learned"):
            d = info["learned"]["dims"]
            name += f" learned {d}-d (folded)" if d != 1280 else " learned (folded)"
        if DROP_AFTER_OPEN:
            name += ", cache dropped after the open's check"
        row = {"set": "synth", "n": n, "name": name, "search": search, **info, **r,
               **({"drop_after_open": True} if DROP_AFTER_OPEN else {})}
        rows.append(row)
        print(f"  {name}: {json.dumps(r)}", file=sys.stderr, flush=True)
    return rows


def run_size(n: int, real: np.ndarray, work: Path, opts: dict, probes: list[dict], nq: int,
             learned: bool = False) -> list[dict]:
    print(f"== {n} items" + (" (learned projection)" if learned else ""), file=sys.stderr, flush=True)
    bundle, info = build(n, real, work, opts, nq, learned)
    return probe_rows(n, bundle, work, info, opts, probes, nq, f"{n}-learned" if learned else "")


def caps(n: int, real: np.ndarray, dims: list[int], nq: int, out: Path) -> list[dict]:
    """Recall@10 of exact search in the PCA space alone, per kept dimension: the ceiling of a PCA store.

    Scored three ways: the store's estimate of the full cosine (``pca_store``: PCA coordinates plus the exact
    ``m . x`` term) in float32 and in int8, and the plain cosine of the projected vectors.
    """
    from threadpoolctl import threadpool_limits

    from pi_search.bundle.backends.ivfpq import sample
    from pi_search.bundle.pca_store import axes
    from pi_search.bundle.projection import fit_pca

    with threadpool_limits(1):
        x = Synth(n, real)
        q = queries(x, nq)
        gt = StreamedTopK(q, n)
        x.observers.append(gt)
        p = fit_pca(sample(x), max(dims))
        u = axes(p.components)
        y = np.empty((n, max(dims)), np.float32)
        off = np.empty(n, np.float32)
        for j in range(x.blocks):
            b = x.block(j)
            y[j * CHUNK:j * CHUNK + len(b)] = (b - p.mean) @ u.T
            off[j * CHUNK:j * CHUNK + len(b)] = b @ p.mean
        truth = gt.result()
        qy = (q - p.mean) @ u.T
        const = q @ p.mean - float(p.mean @ p.mean)
        rows = []
        for d in sorted(dims):
            for kind in ("estimate f32", "estimate int8", "PCA cosine"):
                mat = np.ascontiguousarray(y[:, :d])      # one [n, d] copy at a time
                if kind == "estimate int8":
                    mx = np.abs(mat).max(axis=1)
                    mx = np.where(mx > 0, mx, 1.0)
                    mat = np.round(mat * (127.0 / mx[:, None])).astype(np.int8).astype(np.float32)
                    mat *= (mx / 127.0)[:, None]
                elif kind == "PCA cosine":
                    mat /= np.linalg.norm(mat, axis=1, keepdims=True)
                pred = []
                for i in range(0, nq, 100):
                    qq = qy[i:i + 100, :d]
                    if kind == "PCA cosine":
                        sc = (qq / np.linalg.norm(qq, axis=1, keepdims=True)) @ mat.T
                    else:
                        sc = qq @ mat.T + off + const[i:i + 100, None]
                    pred += list(np.argpartition(-sc, K, axis=1)[:, :K])
                del mat
                r10 = round(bench_scale.recall(pred, truth), 4)
                rows.append({"n": n, "dims": d, "score": kind, "recall10": r10})
                print(f"  cap {d} dims, {kind}: {r10}", file=sys.stderr, flush=True)
    out.write_text(json.dumps({"machine": bench_scale._machine(), "rows": rows,
                               "explained_variance": round(p.explained, 4)}, indent=1))
    return rows


def learned_caps(n: int, real: np.ndarray, dims: list[int], nq: int, out: Path) -> list[dict]:
    """Recall@10 of exact search over ``n`` items with a learned whitening (``learn``, cut to ``d`` axes by
    default, all with ``--learn-dims 0``), against exact search in its space, scoring every item in a PCA of
    ``d`` dims of that space five ways:

    - "folded, int8 store": the product's own path (``fold_learned``, ``pca_store.write`` and its
      ``Scorer``): the cosine of the PCA reconstructions, every row counted with the mean length outside;
    - "folded, float32": the same score without the int8 rounding;
    - "exact row lengths": the same with each row's own length (what folding saves computing);
    - "reconstruction only": the rows' part outside the kept axes left out;
    - "two-step": the unfolded path, the PCA of the normalised learned rows and the store's estimate there.
    """
    import tempfile

    from threadpoolctl import threadpool_limits

    from pi_search.bundle import pca_store
    from pi_search.bundle.projection import fit_pca, fold_learned, outside

    rows = []
    with threadpool_limits(THREADS):
        x = Synth(n, real)
        q = queries(x, nq)
        stats, _ = learn_stats(x)
        xs = x[0:n]
        for d in sorted(dims):
            learned = stats.fit(dims=learn_dims(d))
            z = (xs - learned.mean) @ learned.matrix.T
            zn = np.linalg.norm(z, axis=1)
            zq = (q - learned.mean) @ learned.matrix.T
            exact = (z / zn[:, None]) @ (zq / np.linalg.norm(zq, axis=1, keepdims=True)).T    # [n, nq]
            truth = np.argsort(-exact, axis=0)[:K].T
            del exact

            def recall(scores: np.ndarray, truth=truth) -> float:
                pred = np.argpartition(-scores, K, axis=0)[:K].T
                return round(bench_scale.recall(list(pred), truth), 4)

            sample = z[::max(1, n // 262_144)]
            pca = fit_pca(sample, d, whiten=True)
            u = pca.components / np.linalg.norm(pca.components, axis=1, keepdims=True)
            y, yq = (z - pca.mean) @ u.T, (zq - pca.mean) @ u.T
            a, mu2, rest = u @ pca.mean, float(pca.mean @ pca.mean), outside(sample, pca)
            num = y @ yq.T + (y @ a)[:, None] + (yq @ a)[None, :] + mu2
            recon = (y * y).sum(axis=1) + 2 * (y @ a) + mu2
            folded = fold_learned(pca, learned, rest)
            with tempfile.TemporaryDirectory() as tmp:
                pca_store.write(Path(tmp), xs, folded.mean, folded.components, fold=folded.fold)
                scorer = pca_store.Scorer(np.load(Path(tmp) / pca_store.STORE_FILE),
                                          np.load(Path(tmp) / pca_store.SCALE_FILE),
                                          np.load(Path(tmp) / pca_store.OFFSET_FILE), folded.mean,
                                          folded.components, folded.fold)
                every = np.arange(n)
                int8 = np.stack([scorer.scores(every, v) for v in q], axis=1)
            zu = z / zn[:, None]
            two = fit_pca(zu[::max(1, n // 262_144)], d, whiten=True)
            u2 = two.components / np.linalg.norm(two.components, axis=1, keepdims=True)
            qn = zq / np.linalg.norm(zq, axis=1, keepdims=True)
            two_step = ((zu - two.mean) @ u2.T) @ ((qn - two.mean) @ u2.T).T + (zu @ two.mean)[:, None]
            kinds = (("folded, int8 store", int8), ("folded, float32", num / np.sqrt(recon + rest)[:, None]),
                     ("exact row lengths", num / zn[:, None]),
                     ("reconstruction only", num / np.sqrt(recon)[:, None]), ("two-step", two_step))
            for kind, sc in kinds:
                rows.append({"n": n, "dims": d, "learned_dims": learned.dims, "score": kind,
                             "recall10": recall(sc)})
                print(f"  learned cap {d} dims, {kind}: {rows[-1]['recall10']}", file=sys.stderr, flush=True)
            del y, num, int8, two_step, zu
    out.write_text(json.dumps({"machine": {**bench_scale._machine(), "load": os.getloadavg()}, "rows": rows,
                               "queries": nq, "learn_items": LEARN_ITEMS}, indent=1))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,3000000,10000000")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/pi-search-big"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "big.json")
    ap.add_argument("--dims", type=int, default=512, help="PCA dims of the int8 re-rank store")
    ap.add_argument("--pq-bytes", type=int, default=32)
    ap.add_argument("--index-dims", type=int, default=256, help="PCA dims the inverted lists are built on")
    ap.add_argument("--nlist", type=int, default=0, help="0: automatic")
    ap.add_argument("--probes", default="32:500,64:500,64:1000,128:1000",
                    help="nprobe:candidates pairs measured")
    ap.add_argument("--threads", type=int, default=1, help="threads for building (queries use one)")
    ap.add_argument("--keep", action="store_true", help="keep the bundles (they take GBs)")
    ap.add_argument("--no-whiten", action="store_true", help="lists over the plain PCA (default: whitened)")
    ap.add_argument("--drop-after-open", action="store_true",
                    help="probes evict the bundle from the page cache again once it is open (opening checks "
                         "every byte, which leaves it cached): the first queries start cold")
    ap.add_argument("--learned", action="store_true",
                    help="learn a whitening from the catalog's own views and fold it into the PCA; exact "
                         "search in its space is the ground truth")
    ap.add_argument("--learn-dims", type=int, default=-1,
                    help="--learned: the learned axes kept (-1: as many as the store's --dims, as index "
                         "build does; 0: every axis)")
    ap.add_argument("--caps", type=int, default=0, metavar="N",
                    help="only measure the PCA re-rank ceiling at N items (bench/results/big-caps.json)")
    ap.add_argument("--cap-dims", default="128,256,384,512")
    ap.add_argument("--learned-caps", type=int, default=0, metavar="N",
                    help="only measure how a folded learned projection scores against the two-step path at "
                         "N items, exact search (bench/results/big-learned-caps.json; --cap-dims)")
    ap.add_argument("--relist", type=int, default=0, metavar="N",
                    help="new inverted lists (this code, --nlist) for the kept bundle of N items; probe them")
    ap.add_argument("--derive-whitened", type=int, default=0, metavar="N",
                    help="whiten the kept plain-PCA bundle of N items (new lists only) and probe it")
    a = ap.parse_args()
    global THREADS, DROP_AFTER_OPEN, LEARN_DIMS
    THREADS = max(1, a.threads)
    LEARN_DIMS = a.learn_dims
    DROP_AFTER_OPEN = a.drop_after_open
    # the fresh probe processes import this checkout's pi_search, whatever the venv points at
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    a.work.mkdir(parents=True, exist_ok=True)
    real = bench_scale.real_embeddings(a.work, 3000)
    if a.learned_caps:
        name = "big-learned-caps.json" if LEARN_DIMS == 0 else "big-learned-caps-cut.json"
        learned_caps(a.learned_caps, real, [int(d) for d in a.cap_dims.split(",")], a.queries,
                     a.out.with_name(name))
        return
    if a.caps:
        caps(a.caps, real, [int(d) for d in a.cap_dims.split(",")], a.queries,
             a.out.with_name("big-caps.json"))
        return
    opts = {"dims": a.dims, "pq_bytes": a.pq_bytes, "nlist": a.nlist, "whiten": not a.no_whiten,
            "index_dims": a.index_dims}
    probes = [{"mode": "ann", "nprobe": int(p.split(":")[0]), "candidates": int(p.split(":")[1])}
              for p in a.probes.split(",")]
    old = json.loads(a.out.read_text())["rows"] if a.out.is_file() else []
    sizes = [int(s) for s in a.sizes.split(",") if s]
    if a.relist:
        a.derive_whitened = a.relist
    if a.derive_whitened:
        sizes = [a.derive_whitened]
    for n in sizes:
        if a.derive_whitened:
            out = a.work / f"ivfpq-{n}-{'relist' if a.relist else 'w'}"
            info = derive_whitened(a.work / f"ivfpq-{n}", out, opts)
            rows = probe_rows(n, out, a.work, info, opts, probes, a.queries)
        else:
            rows = run_size(n, real, a.work, opts, probes, a.queries, a.learned)
        names = {(r["n"], r["name"]) for r in rows}
        old = [r for r in old if (r["n"], r["name"]) not in names] + rows
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"machine": {**bench_scale._machine(), "load": os.getloadavg()},
                                     "rows": sorted(old, key=lambda r: r["n"])}, indent=1))
        if not a.keep:
            shutil.rmtree(a.work / f"ivfpq-{n}{'-learned' if a.learned else ''}", ignore_errors=True)
    print(bench_scale.table(old))
    print(f"JSON: {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
