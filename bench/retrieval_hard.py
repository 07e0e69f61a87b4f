"""Hard shots (small, off-centre, beside other things, dim): each framing / fusion idea against the kept one.

Usage (after ``python -m pi_search.tools.benchmark_data benchmark [--hard]`` and
``bench/retrieval_hard_windows.py`` on both benchmarks)::

    .venv/bin/python bench/retrieval_hard.py [--out bench/results/retrieval-hard.json]

Reads the cached window embeddings (int8 model, exact cosine search), prints recall per attempt on the
standard and the hard benchmark, with the hard set's per-condition table, and writes JSON. Measures only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's pi_search

from pi_search.model import (
    framing,  # noqa: E402
    settle,  # noqa: E402
)
from pi_search.tools.evaluate import by_condition, load_catalog, metrics, read_truth

CACHE = Path("var/cache")


def _norm(v):
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def ranks_from_scores(s: np.ndarray, truth_idx: np.ndarray) -> np.ndarray:
    own = s[np.arange(len(truth_idx)), truth_idx]
    return 1 + (s > own[:, None]).sum(axis=1)


def load(bench: Path):
    ids, _, _ = load_catalog(bench / "catalog")
    where = {i: n for n, i in enumerate(ids)}
    truth = read_truth(bench / "truth.csv")
    idx = np.array([where[t.item_id] for t in truth])
    win = dict(np.load(CACHE / f"{bench.name}-windows.npz"))
    return ids, truth, idx, win


def _topk(s: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores as a bundle returns them: known for each row's top ``d``, the row's d-th score elsewhere."""
    idx = np.argpartition(-s, d - 1, axis=1)[:, :d]
    top = np.take_along_axis(s, idx, 1)
    out = np.broadcast_to(top.min(1, keepdims=True), s.shape).copy()
    np.put_along_axis(out, idx, top, 1)
    known = np.zeros(s.shape, bool)
    np.put_along_axis(known, idx, True, 1)
    return out, known


def _fused_topk(kept: np.ndarray, windows: list[np.ndarray], kept_depth: int = settle.SETTLE_DEPTH,
                depth: int = settle.SETTLE_DEPTH) -> np.ndarray:
    """``settle.fuse`` on score matrices: (kept + best window) / 2 from top lists; unlisted items last."""
    k, known = _topk(kept, kept_depth)
    tops = [_topk(w, depth) for w in windows]
    best = np.stack([t[0] for t in tops]).max(0)
    known = known | np.any(np.stack([t[1] for t in tops]), 0)
    return np.where(known, (k + best) / 2, -9.0)


def strategies(win: dict, cat: np.ndarray) -> dict:
    """name -> (scores [queries, items], model passes per frame)."""
    s = {k: v @ cat.T for k, v in win.items()}
    groups = {g: [k for k in s if k.startswith(g + "_")] for g in ("g2", "g3", "g4")}
    out = {"kept: centre square zoomed 0.65": (s["c65"], 1),
           "whole centre square": (s["c100"], 1)}
    for g, keys in groups.items():
        stack = np.stack([s[k] for k in keys])
        out[f"max over {g} ({len(keys)} windows)"] = (stack.max(0), len(keys))
        both = np.stack([s["c65"], *[s[k] for k in keys]])
        out[f"max over kept + {g}"] = (both.max(0), len(keys) + 1)
        for lam in (0.5, 1.0):
            out[f"kept + {lam} x max over {g}"] = (s["c65"] + lam * stack.max(0), len(keys) + 1)
        top2 = np.sort(both, axis=0)[-2:].mean(0)
        out[f"mean of best 2 of kept + {g}"] = (top2, len(keys) + 1)
    for k in ("c80", "c65lift", "c65lift60"):
        if k in s:
            out[f"query framing {k}"] = (s[k], 1)
    for name, keys in (("g2 + g3", groups["g2"] + groups["g3"]), ("g3 + g4", groups["g3"] + groups["g4"])):
        out[f"kept + 1.0 x max over {name}"] = (s["c65"] + np.stack([s[k] for k in keys]).max(0),
                                                len(keys) + 1)
    out["(kept + max over g2) / 2, top-20 lists"] = (
        _fused_topk(s["c65"], [s[k] for k in groups["g2"]]), len(groups["g2"]) + 1)
    out["(kept + max over g2 and the centre square) / 2, top-20 lists"] = (
        _fused_topk(s["c65"], [s[k] for k in groups["g2"]] + [s["c100"]]), len(groups["g2"]) + 2)
    out["(kept + max over g2, the centre square, zoom 0.8) / 2, top-20 lists"] = (
        _fused_topk(s["c65"], [s[k] for k in groups["g2"]] + [s["c100"], s["c80"]]), len(groups["g2"]) + 3)
    out["(mean of kept and zoom 0.8 + max over g2) / 2, top-20 lists"] = (
        _fused_topk((s["c65"] + s["c80"]) / 2, [s[k] for k in groups["g2"]]), len(groups["g2"]) + 2)
    out["(kept + max over g2 and the middle window of g3) / 2, top-20 lists"] = (
        _fused_topk(s["c65"], [s[k] for k in groups["g2"]] + [s["g3_4"]]), len(groups["g2"]) + 2)
    allk = [s["c65"], *[s[k] for g in groups.values() for k in g]]
    out["max over kept + all grids"] = (np.stack(allk).max(0), len(allk))
    return out


def _settled(win: dict, cat: np.ndarray, width: int = 640, height: int = 480):
    """Per query: the kept framing's top score, the settled look's top score and its window (settle.fuse)."""
    boxes = settle.settle_windows(width, height)
    prefix = {(3, 2, 0.6): "g2", (3, 3, 0.5): "g3", (4, 3, 0.4): "g4"}
    keys = [k for g in settle.SETTLE_GRID for k in sorted((k for k in win if k.startswith(prefix[g] + "_")),
                                                           key=lambda k: int(k.split("_")[1]))]
    keys += ["c100"] if settle.SETTLE_CENTRE else []  # the whole centre square
    assert len(keys) == len(boxes), "the cached windows must be settle.SETTLE_GRID's"
    kept = win["c65"] @ cat.T
    ws = [win[k] @ cat.T for k in keys]
    fused = _fused_topk(kept, ws)
    top = fused.argmax(axis=1)
    per = np.stack([w[np.arange(len(top)), top] for w in ws])
    gain = per.max(axis=0) - kept[np.arange(len(top)), top]
    return kept.max(axis=1), fused.max(axis=1), [boxes[w] for w in per.argmax(axis=0)], gain, top


def hint_rates(cat: np.ndarray, data: dict, empty: Path) -> dict:
    """How often the guide's hint fires: live (kept framing only) and after the settled look; and how often
    the first match is wrong when it fires and when it does not."""
    sets = {name: (d[3], d[2]) for name, d in data.items()}
    if (CACHE / f"{empty.name}-windows.npz").is_file():
        sets["empty scenes"] = (dict(np.load(CACHE / f"{empty.name}-windows.npz")), None)
    target = framing.target_box(640, 480)
    out = {}
    for name, (win, idx) in sets.items():
        live, settled, regions, gain, top = _settled(win, cat)
        live_top = (win["c65"] @ cat.T).argmax(axis=1)
        fire_live = np.array([settle.hint(float(x), None, target) is not None for x in live])
        fire_settled = np.array([settle.hint(float(x), r, target, float(g)) is not None
                                 for x, r, g in zip(settled, regions, gain, strict=True)])
        row = {"queries": len(live), "live": round(float(fire_live.mean()), 4),
               "settled": round(float(fire_settled.mean()), 4),
               "settled, weak score only": round(float(np.mean(settled < settle.HINT_SCORE)), 4),
               "top score p10/p50/p90 (live)": [round(float(np.percentile(live, q)), 3)
                                                for q in (10, 50, 90)],
               "top score p10/p50/p90 (settled)": [round(float(np.percentile(settled, q)), 3)
                                                   for q in (10, 50, 90)]}
        if idx is not None:
            for label, fire, first in (("live", fire_live, live_top), ("settled", fire_settled, top)):
                wrong = first != idx
                row[f"{label}: first wrong when it fires / when not"] = [
                    round(float(wrong[fire].mean()), 3) if fire.any() else None,
                    round(float(wrong[~fire].mean()), 3) if (~fire).any() else None]
        out[name] = row
    return out


def tracked(bench: Path, cat: np.ndarray, data) -> dict:
    """The next frame of each scene (``_f1``, the item moved a little), live: the kept framing alone, and with
    the window the settled look picked on the first frame (the worker's two passes per frame)."""
    from pi_search import images
    from pi_search.model.extractor import Extractor
    from pi_search.model.framing import to_model_input
    from pi_search.model.shipped import SHIPPED_INT8, shipped_model

    ids, truth, idx, win = data
    _, _, regions, _, _ = _settled(win, cat)
    ex = Extractor(shipped_model(SHIPPED_INT8), num_threads=1)
    kept, region = [], []
    for t, box in zip(truth, regions, strict=True):
        rgb = images.read(Path(str(t.path).replace("_f0.jpg", "_f1.jpg")))
        kept.append(ex.embed(to_model_input(rgb, ex.size, framing.QUERY_CROP)))
        region.append(ex.embed(framing.window_input(rgb, box, ex.size)))
    k, r = np.stack(kept) @ cat.T, np.stack(region) @ cat.T
    out = {}
    for name, scores in (("next frame, kept framing only", k),
                         ("next frame, kept + the settled window (settle.search_mean)", (k + r) / 2)):
        ranks = ranks_from_scores(scores, idx)
        m = metrics(ranks)
        out[name] = {"recall@1": m["recall@1"], "recall@5": m["recall@5"], "passes": 1 if scores is k else 2,
                     "conditions": by_condition(ranks, truth)}
        print(f"{name:52} R@1 {m['recall@1']:.3f} R@5 {m['recall@5']:.3f}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--standard", type=Path, default=Path("var/benchmark"))
    ap.add_argument("--hard", type=Path, default=Path("var/benchmark-hard"))
    ap.add_argument("--empty", type=Path, default=Path("var/empty-scenes"))
    ap.add_argument("--no-tracked", action="store_true", help="skip the next-frame check (model passes)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/retrieval-hard.json"))
    args = ap.parse_args(argv)
    cat = np.load(CACHE / "catalog-kept.npy")
    result = {"attempts": []}
    data = {name: load(b) for name, b in (("standard", args.standard), ("hard", args.hard))}
    per = {name: strategies(d[3], cat) for name, d in data.items()}
    for attempt in per["hard"]:
        row = {"attempt": attempt, "passes": per["hard"][attempt][1]}
        for name, (_ids, truth, idx, _) in data.items():
            r = ranks_from_scores(per[name][attempt][0], idx)
            m = metrics(r)
            row[name] = {k: m[k] for k in ("recall@1", "recall@5", "map")}
            if name == "hard":
                row["conditions"] = by_condition(r, truth)
        result["attempts"].append(row)
        print(f"{attempt[:44]:44} {row['passes']:3d}  std {row['standard']['recall@1']:.3f} "
              f"{row['standard']['recall@5']:.3f}  hard {row['hard']['recall@1']:.3f} "
              f"{row['hard']['recall@5']:.3f}  " + " ".join(f"{c['recall@1']:.2f}"
                                                             for c in row["conditions"]), flush=True)
    if not args.no_tracked:
        result["tracked"] = tracked(args.hard, cat, data["hard"])
    result["hint"] = hint_rates(cat, data, args.empty)
    for name, v in result["hint"].items():
        print(name, v)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
