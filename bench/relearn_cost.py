"""What ``pi-search index relearn`` costs: seconds and items/s on the benchmark's catalog.

Usage (after ``python -m pi_search.tools.benchmark_data benchmark``)::

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/relearn_cost.py [--out bench/results/relearn-cost.json]

Builds the benchmark's catalog as ``index build`` does (in a temporary folder), keeps two of its query
photos as the counter's empty scenes, then relearns the bundle on them (6 views an item, 1 interpreter
thread, 1 BLAS thread) and times it end to end: views of every item's thumbnail made and embedded, the fit,
and the new bundle generation written and swapped in. Prints the figures and writes JSON. Measures only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's pi_search

from pi_search import images  # noqa: E402
from pi_search.index.build import build_bundle  # noqa: E402
from pi_search.learn import catalog as learning  # noqa: E402
from pi_search.learn.relearn import relearn  # noqa: E402
from pi_search.model.extractor import Extractor  # noqa: E402
from pi_search.model.shipped import SHIPPED_INT8, shipped_model  # noqa: E402
from pi_search.tools.evaluate import read_truth  # noqa: E402


def main(argv=None) -> int:
    from threadpoolctl import threadpool_limits

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", type=Path, default=Path("var/benchmark"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/relearn-cost.json"))
    args = ap.parse_args(argv)
    ex = Extractor(shipped_model(SHIPPED_INT8), num_threads=1)
    scenes = [images.read(t.path) for t in read_truth(args.benchmark / "truth.csv")[:2]]
    with tempfile.TemporaryDirectory(prefix="relearn-cost-") as tmp, threadpool_limits(1):
        out = Path(tmp) / "bundle"
        build_bundle(args.benchmark / "catalog", out, ex, progress=False)
        t0 = time.perf_counter()
        report = relearn(out, ex, backgrounds=scenes, progress=False)
        seconds = time.perf_counter() - t0
    result = {"items": report["items"], "views_per_item": learning.VIEWS, "backgrounds": len(scenes),
              "seconds": round(seconds, 2), "items_per_s": round(report["items"] / seconds, 2)}
    for k, v in result.items():
        print(f"{k:16} {v}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
