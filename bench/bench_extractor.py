"""Extraction latency of the shipped int8 and float models, per runtime and thread count (table + JSON)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def installed_runtimes() -> list[str]:
    from pi_search.model.extractor import RUNTIMES

    return [r for r in RUNTIMES if importlib.util.find_spec(r) is not None]


def measure(model: Path, runtime: str, threads: int, runs: int, warmup: int) -> dict:
    from pi_search import images
    from pi_search.export.photos import held_out_paths
    from pi_search.model.extractor import Extractor
    from pi_search.model.framing import to_model_input

    x = Extractor(model, num_threads=threads, runtime=runtime)
    frames = [to_model_input(images.read(p)) for p in held_out_paths()[:10]]
    for i in range(warmup):
        x.embed(frames[i % len(frames)])
    times = []
    for i in range(runs):
        t = time.perf_counter()
        x.embed(frames[i % len(frames)])
        times.append((time.perf_counter() - t) * 1000)
    return {"model": model.name, "dtype": x.input.dtype, "runtime": runtime, "version": x.runtime_version,
            "threads": threads, "runs": runs, "median_ms": float(np.median(times)),
            "p90_ms": float(np.percentile(times, 90)), "size_mb": model.stat().st_size / 1e6}


def main() -> None:
    from pi_search.model.shipped import SHIPPED_FLOAT, SHIPPED_INT8, models_dir

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=100, help="timed warm runs per configuration (>= 50)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    args = ap.parse_args()
    rows = []
    for runtime in installed_runtimes():
        for name in (SHIPPED_INT8, SHIPPED_FLOAT):
            for threads in (int(t) for t in args.threads.split(",")):
                rows.append(measure(models_dir() / name, runtime, threads, args.runs, args.warmup))
    by = {(r["runtime"], r["dtype"], r["threads"]): r["median_ms"] for r in rows}
    print(f"{'runtime':<26} {'model':<8} {'threads':>7} {'median ms':>10} {'p90 ms':>8} {'int8/float':>10}")
    for r in rows:
        ratio = ""
        if r["dtype"] == "uint8" and (r["runtime"], "float32", r["threads"]) in by:
            ratio = f"{r['median_ms'] / by[(r['runtime'], 'float32', r['threads'])]:.2f}"
        label = "int8" if r["dtype"] == "uint8" else "float32"
        print(f"{r['runtime'] + ' ' + r['version']:<26} {label:<8} {r['threads']:>7} "
              f"{r['median_ms']:>10.2f} {r['p90_ms']:>8.2f} {ratio:>10}")
    result = {"machine": {"platform": platform.platform(), "machine": platform.machine(),
                          "python": platform.python_version()}, "results": rows}
    print(json.dumps(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
