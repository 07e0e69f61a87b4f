"""What ``pi-search index relearn`` costs: seconds and items/s on the benchmark's catalog.

Usage (after ``python -m pi_search.tools.benchmark_data benchmark``)::

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/relearn_cost.py [--out bench/results/relearn-cost.json]

Builds the benchmark's catalog as ``index build`` does (in a temporary folder), makes two plain "counters"
(a wood-coloured and a grey surface with sensor noise) as the empty scenes, then relearns the bundle on them
(6 views an item, 1 interpreter thread, 1 BLAS thread; a copy for each step shrinkage, 1.0 and 0.2) and
times it end to end: views of every item's
thumbnail made and embedded, the fit, and the new bundle generation written and swapped in. Recall before
and after, when ``bench/retrieval_learned.py`` has cached the queries' looks (var/cache/): exact search of
the stored rows, the kept framing and the look (``settle.fuse`` of 20-deep lists). Prints the figures and
writes JSON. Measures only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's pi_search

import numpy as np  # noqa: E402

from pi_search.embed.build import build_bundle  # noqa: E402
from pi_search.learn import catalog as learning  # noqa: E402
from pi_search.learn.whiten import SHRINK  # noqa: E402
from pi_search.live.relearn import STEP_SHRINK, relearn  # noqa: E402
from pi_search.model.extractor import Extractor  # noqa: E402
from pi_search.model.shipped import SHIPPED_INT8, shipped_model  # noqa: E402
from pi_search.tools.evaluate import read_truth  # noqa: E402


def recall(bundle_dir: Path, standard: Path, hard: Path, cache: Path) -> dict:
    """Recall@1/5 of each benchmark's cached looks against the bundle's stored rows (exact), or {}."""
    from retrieval_learned import fused, ranks

    from pi_search.bundle.reader import Bundle
    from pi_search.tools.evaluate import metrics

    out = {}
    with Bundle.open(bundle_dir) as b:
        rows = b.store.full(np.arange(len(b)))
        ids = [r[1] for _, r in sorted(b.items.rows(list(range(len(b)))).items())]
        where = {i: n for n, i in enumerate(ids)}
        for name, bench in (("standard", standard), ("hard", hard)):
            f = cache / f"learn-{bench.name}-look.npz"
            if not f.is_file():
                continue
            z = np.load(f)
            idx = np.array([where[t.item_id] for t in read_truth(bench / "truth.csv")])
            q = b.to_learned(z["kept"])
            w = b.to_learned(z["windows"].reshape(-1, z["windows"].shape[-1])).reshape(
                z["windows"].shape[0], z["windows"].shape[1], -1)
            ks = q @ rows.T
            ws = np.einsum("qwd,nd->wqn", w, rows)
            out[name] = {"kept": metrics(ranks(ks, idx)), "look": metrics(ranks(fused(ks, ws), idx))}
    return out


def main(argv=None) -> int:
    from threadpoolctl import threadpool_limits

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", type=Path, default=Path("var/benchmark"))
    ap.add_argument("--hard", type=Path, default=Path("var/benchmark-hard"))
    ap.add_argument("--cache", type=Path, default=Path("var/cache"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/relearn-cost.json"))
    args = ap.parse_args(argv)
    ex = Extractor(shipped_model(SHIPPED_INT8), num_threads=1)
    rng = np.random.default_rng(0)
    scenes = [np.clip(np.full((360, 480, 3), c, np.float32) + rng.normal(0, 6, (360, 480, 3)), 0, 255)
              .astype(np.uint8) for c in ((150, 110, 70), (128, 128, 124))]
    with tempfile.TemporaryDirectory(prefix="relearn-cost-") as tmp, threadpool_limits(1):
        out = Path(tmp) / "bundle"
        build_bundle(args.benchmark / "catalog", out, ex, progress=False)
        before = recall(out, args.benchmark, args.hard, args.cache)
        after = {}
        for shrink in (STEP_SHRINK, SHRINK):   # the kept step's shrinkage first: it is the one timed
            copy = Path(tmp) / f"relearned-{shrink}"
            shutil.copytree(out, copy)
            t0 = time.perf_counter()
            report = relearn(copy, ex, backgrounds=scenes, progress=False, shrink=shrink)
            after[str(shrink)] = recall(copy, args.benchmark, args.hard, args.cache)
            if shrink == STEP_SHRINK:
                seconds, items = time.perf_counter() - t0, report["items"]
    result = {"items": items, "views_per_item": learning.VIEWS, "backgrounds": len(scenes),
              "seconds": round(seconds, 2), "items_per_s": round(items / seconds, 2),
              "step_shrinkage": STEP_SHRINK, "recall_before": before, "recall_after": after}
    for k, v in result.items():
        print(f"{k:16} {v}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
