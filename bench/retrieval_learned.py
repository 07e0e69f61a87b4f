"""The learned projection (pi_search/learn/): what it gives on the public benchmarks, per attempt.

Usage (after ``python -m pi_search.tools.benchmark_data benchmark`` and ``... benchmark --hard``)::

    .venv/bin/python bench/retrieval_learned.py [--out bench/results/retrieval-learned.json]

Embeds the catalog photos (each of the catalog framings, ``framing.catalog_inputs``), the synthetic views
of the catalog photos (``learn.views``: made from the catalog only, seeds of their own; with their sensor
noise drawn afresh and drawn once) and every query's look (``model.look``: the kept framing and the windows),
cached under var/cache/; then fits each attempt on the catalog's views only and ranks every query exactly,
with the kept framing alone and with the look (``settle.fuse`` of 20-deep lists, as every way in does).
Nothing is learned from the queries. Prints a table and writes JSON. Measures only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's pi_search

from retrieval_hard import _topk  # noqa: E402  (this folder: scores as a bundle returns them)

from pi_search import images  # noqa: E402
from pi_search.learn import catalog as learning  # noqa: E402
from pi_search.learn import views as synth  # noqa: E402
from pi_search.learn.whiten import fit  # noqa: E402
from pi_search.model import (
    framing,  # noqa: E402
    settle,  # noqa: E402
)
from pi_search.model import look as looking  # noqa: E402
from pi_search.model.extractor import Extractor  # noqa: E402
from pi_search.model.shipped import SHIPPED_INT8, shipped_model  # noqa: E402
from pi_search.tools.evaluate import by_condition, load_catalog, metrics, read_truth  # noqa: E402

MAX_VIEWS = 8
SALTS = (1, 2)   # other samples of 6 views an item, to see how far recall moves with the sample alone


ONCE = "whitening, 6 views, shrinkage 0.2, 384 dims, noise drawn once"   # cheaper views, not kept
FRAMINGS = ("whole", "zoom", "tilt-", "tilt+", "tint")   # framing.catalog_inputs, in order
FEW = (0, 4)   # whole+tint: the two framings with the best standard recall, tried on other samples too


def _norm(v):
    return (v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def embed_looks(ex, truth, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """Kept framing float32 [q, dim] and windows float32 [q, 7, dim] of each query (cached)."""
    if cache.is_file():
        z = np.load(cache)
        return z["kept"], z["windows"]
    kept, wins = [], []
    for t in truth:
        seen = looking.look(ex, images.read(t.path))
        kept.append(seen.kept)
        wins.append(np.stack([v for _, v in seen.windows]))
    kept, wins = np.stack(kept).astype(np.float32), np.stack(wins).astype(np.float32)
    np.savez(cache, kept=kept, windows=wins)
    return kept, wins


def mirrored_views(ex, ids, rgbs) -> np.ndarray:
    """Half the rendering: 3 views an item (``views.views``, noise drawn once), each embedded as it is and
    mirrored: float32 [6 n, dim], L2-normalised, an item's six rows together."""
    from collections import deque

    rooms, noise = synth.room_backgrounds(), synth.SensorNoise(ex.size)
    others: deque = deque(maxlen=synth.OTHERS_KEPT)
    out = []
    for item_id, rgb in zip(ids, rgbs, strict=True):
        rgba = synth.cut_out(rgb)
        for v in synth.views(rgba, list(others), rooms, synth.item_rng(item_id), 3, ex.size, noise):
            out += [ex.embed(v), ex.embed(np.ascontiguousarray(v[:, ::-1]))]
        others.append(synth.shrink(rgba))
    return _norm(np.stack(out))


def fused(kept_s: np.ndarray, win_s: np.ndarray, d: int = settle.SETTLE_DEPTH) -> np.ndarray:
    """``settle.fuse`` on score matrices: kept [q, n], windows [w, q, n]."""
    k, known = _topk(kept_s, d)
    tops = [_topk(w, d) for w in win_s]
    best = np.stack([t[0] for t in tops]).max(0)
    known = known | np.any(np.stack([t[1] for t in tops]), 0)
    return np.where(known, (k + best) / 2, -9.0)


def ranks(s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    own = s[np.arange(len(idx)), idx]
    return (1 + (s > own[:, None]).sum(axis=1)).astype(np.int64)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", type=Path, default=Path("var/benchmark"))
    ap.add_argument("--hard", type=Path, default=Path("var/benchmark-hard"))
    ap.add_argument("--cache", type=Path, default=Path("var/cache"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/retrieval-learned.json"))
    args = ap.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    ex = Extractor(shipped_model(SHIPPED_INT8), num_threads=1)
    ids, paths, _ = load_catalog(args.benchmark / "catalog")
    cat_file = args.cache / "learn-catalog-v2.npz"
    if cat_file.is_file():
        z = np.load(cat_file)
        framed, views, owners, view_s = z["framed"], z["views"], z["owners"], float(z["view_s"])
        views_once, once_s = z["views_once"], float(z["once_s"])
    else:
        rgbs = [images.read(p) for p in paths]
        framed = np.stack([[ex.embed(x) for x in framing.catalog_inputs(r, ex.size)] for r in rgbs]
                          ).astype(np.float32)   # [n, 5, dim]: each catalog framing as the model gives it
        t0 = time.perf_counter()
        views, owners = learning.view_vectors(ex, zip(ids, rgbs, strict=True), MAX_VIEWS, noise_once=False)
        view_s = (time.perf_counter() - t0) / len(ids) / MAX_VIEWS
        t0 = time.perf_counter()
        views_once, _ = learning.view_vectors(ex, zip(ids, rgbs, strict=True), MAX_VIEWS, noise_once=True)
        once_s = (time.perf_counter() - t0) / len(ids) / MAX_VIEWS
        np.savez(cat_file, framed=framed, views=views, owners=owners, view_s=view_s, views_once=views_once,
                 once_s=once_s)
    cat = _norm(framed.mean(axis=1))   # framing.embed: the mean of the framings, L2-normalised
    print(f"{len(ids)} items, {len(views)} views, {1000 * view_s:.1f} ms per view (make + embed), "
          f"{1000 * once_s:.1f} ms with the sensor noise drawn once")
    up_file = args.cache / "learn-catalog-uploads.npy"
    if not up_file.is_file():   # each catalog photo uploaded as a query: its look (on white: one framing)
        ups = []
        for p in paths:
            seen = looking.look(ex, images.read(p))
            assert not seen.windows, p
            ups.append(seen.kept)
        np.save(up_file, np.stack(ups).astype(np.float32))
    seeds_file = args.cache / "learn-catalog-salts.npz"   # other samples of the views (views.item_rng's salt)
    if seeds_file.is_file():
        salted = dict(np.load(seeds_file))
    else:
        rgbs = [images.read(p) for p in paths]
        salted = {f"{kind}{salt}": learning.view_vectors(ex, zip(ids, rgbs, strict=True), 6,
                                                         noise_once=kind == "once", salt=salt)[0]
                  for salt in SALTS for kind in ("fresh", "once")}
        salted["mirrored"] = mirrored_views(ex, ids, rgbs)
        np.savez(seeds_file, **salted)
    uploads = np.load(up_file)
    slot = np.tile(np.arange(MAX_VIEWS), len(ids))
    sets = {}
    for name, bench in (("standard", args.benchmark), ("hard", args.hard)):
        truth = read_truth(bench / "truth.csv")
        where = {i: n for n, i in enumerate(ids)}
        idx = np.array([where[t.item_id] for t in truth])
        kept, wins = embed_looks(ex, truth, args.cache / f"learn-{bench.name}-look.npz")
        sets[name] = (truth, idx, kept, wins)

    def attempt(label: str, project, note: str = "", cat=cat) -> dict:
        c = project(cat)
        row = {"attempt": label, "note": note}
        for name, (truth, idx, kept, wins) in sets.items():
            q = project(kept)
            w = project(wins.reshape(-1, wins.shape[-1])).reshape(wins.shape[0], wins.shape[1], -1)
            ks = q @ c.T
            ws = np.einsum("qwd,nd->wqn", w, c)
            rk, rl = ranks(ks, idx), ranks(fused(ks, ws), idx)
            row[name] = {"kept": metrics(rk), "look": metrics(rl)}
            if name == "hard":
                top_k = [ids[j] for j in np.argmax(ks, axis=1)]
                top_l = [ids[j] for j in np.argmax(fused(ks, ws), axis=1)]
                row["hard_conditions"] = {"kept": by_condition(rk, truth, top_k),
                                          "look": by_condition(rl, truth, top_l)}
        row["uploads"] = metrics(ranks(project(uploads) @ c.T, np.arange(len(ids))))
        r = [row[n][m]["recall@1"] for n in ("standard", "hard") for m in ("kept", "look")]
        r5 = [row[n]["look"]["recall@5"] for n in ("standard", "hard")]
        print(f"{label:58} std {r[0]:.3f} look {r[1]:.3f} (r5 {r5[0]:.3f}) | hard {r[2]:.3f} "
              f"look {r[3]:.3f} (r5 {r5[1]:.3f}) | uploads {row['uploads']['recall@1']:.3f}", flush=True)
        return row

    rows = [attempt("none: the model's embeddings as they come", _norm)]
    for n_views in (2, 4, 6, 8):
        for shrink in ((0.01, 0.1, 0.2, 0.3) if n_views == 6 else (0.2,)):
            sel = slot < n_views
            t0 = time.perf_counter()
            lw = fit(views[sel], cat[owners[sel]], cat, shrink=shrink)
            fit_s = time.perf_counter() - t0
            rows.append(attempt(f"whitening, {n_views} views per item, shrinkage {shrink}", lw.apply,
                                f"fit {fit_s:.1f} s"))
            rows[-1].update(views=n_views, shrinkage=shrink, dims=lw.dims)
    sel = slot < 6
    for dims in (768, 512, 384, 256):
        lw = fit(views[sel], cat[owners[sel]], cat, shrink=0.2, dims=dims)
        rows.append(attempt(f"whitening, 6 views, shrinkage 0.2, {dims} dims", lw.apply))
        rows[-1].update(views=6, shrinkage=0.2, dims=dims)
    for n_views in (4, 5):   # fewer views make a build cheaper: at the kept dims
        few = slot < n_views
        lw = fit(views[few], cat[owners[few]], cat, shrink=0.2, dims=384)
        rows.append(attempt(f"whitening, {n_views} views, shrinkage 0.2, 384 dims", lw.apply))
        rows[-1].update(views=n_views, shrinkage=0.2, dims=384)
    lw = fit(views[sel], cat[owners[sel]], cat, shrink=0.2, lda=True)
    rows.append(attempt(f"plain LDA, 6 views, shrinkage 0.2 ({lw.dims} dims)", lw.apply))
    rows[-1].update(views=6, shrinkage=0.2, dims=lw.dims, lda=True)
    # a cheaper build: the views' sensor noise drawn once; the catalog photo in fewer framings
    lw = fit(views_once[sel], cat[owners[sel]], cat, shrink=0.2, dims=384)
    rows.append(attempt(ONCE, lw.apply, f"{1000 * once_s:.1f} ms a view against {1000 * view_s:.1f}"))
    rows[-1].update(views=6, shrinkage=0.2, dims=384, noise_once=True)
    names = FRAMINGS
    for keep in ((0,), (0, 1), (0, 4), (0, 1, 4), (0, 2, 3)):
        few = _norm(framed[:, list(keep)].mean(axis=1))
        lw = fit(views_once[sel], few[owners[sel]], few, shrink=0.2, dims=384)
        label = "+".join(names[k] for k in keep)
        rows.append(attempt(f"{ONCE}, catalog photo {label}", lw.apply, cat=few))
        rows[-1].update(views=6, shrinkage=0.2, dims=384, noise_once=True, catalog_framings=len(keep))
    few = _norm(framed[:, list(FEW)].mean(axis=1))
    few_label = "+".join(names[k] for k in FEW)
    six = np.repeat(np.arange(len(ids)), 6)
    lw = fit(salted["mirrored"], cat[six], cat, shrink=0.2, dims=384)
    rows.append(attempt(f"{ONCE}, 3 rendered and 3 their mirror images", lw.apply, "half the rendering"))
    rows[-1].update(views=6, shrinkage=0.2, dims=384, noise_once=True, mirrored=True)
    for salt in SALTS:   # how far recall moves with the sample of views alone: before, and as kept
        lw = fit(salted[f"fresh{salt}"], cat[six], cat, shrink=0.2, dims=384)
        rows.append(attempt(f"whitening, 6 views, shrinkage 0.2, 384 dims, another sample of views ({salt})",
                            lw.apply))
        rows[-1].update(views=6, shrinkage=0.2, dims=384, salt=salt)
        lw = fit(salted[f"once{salt}"], cat[six], cat, shrink=0.2, dims=384)
        rows.append(attempt(f"{ONCE}, another sample of views ({salt})", lw.apply))
        rows[-1].update(views=6, shrinkage=0.2, dims=384, noise_once=True, salt=salt)
        lw = fit(salted[f"once{salt}"], few[six], few, shrink=0.2, dims=384)
        rows.append(attempt(f"{ONCE}, catalog photo {few_label}, another sample of views ({salt})", lw.apply,
                            cat=few))
        rows[-1].update(views=6, shrinkage=0.2, dims=384, noise_once=True, salt=salt,
                        catalog_framings=len(FEW))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"items": len(ids), "view_ms": round(1000 * view_s, 2),
                                    "view_once_ms": round(1000 * once_s, 2),
                                    "attempts": rows}, indent=1) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
