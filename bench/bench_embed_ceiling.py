"""What this host lets cores scale at all: the local engine in one process alone, then in one process per
core at once (no Ray), each held to its core. Their ratio per core is the ceiling for any engine here,
Ray included (bench_embed_scaling.py): cores that share a chip's cache and memory bandwidth, or a host's,
each go slower when all are busy. Writes bench/results/embed-ceiling.json.

    .venv/bin/python bench/bench_embed_ceiling.py          # 2 cores, 800 items, 2 rounds: about 6 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_embed_scaling import RATES, make_catalog, ratios, run_local, shown  # noqa: E402


def run_parallel(catalog: Path, work: Path, shard_rows: int, cpus: list[int]) -> dict:
    """One local process per core in ``cpus``, all embedding the catalog at once; per-core figures are the
    processes' means."""
    with ProcessPoolExecutor(len(cpus), mp_context=get_context("spawn")) as pool:
        jobs = [pool.submit(run_local, catalog, work / f"local-{c}", shard_rows, c) for c in cpus]
        each = [j.result() for j in jobs]
    out = {"engine": "local", "processes": len(cpus), "cores": len(cpus),
           "items": sum(r["items"] for r in each), "seconds": max(r["seconds"] for r in each)}
    for key in RATES:
        vals = [r[key] for r in each if r.get(key)]
        out[key] = round(sum(vals) / len(vals), 2) if len(vals) == len(each) else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=800, help="catalog items (made from the Tux Paint stamps)")
    ap.add_argument("--shard-rows", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="runs on every core, each followed by a lone run")
    ap.add_argument("--nice", type=int, default=10, help="lower this run's priority by this much")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "embed-ceiling.json")
    args = ap.parse_args()
    os.nice(args.nice)
    cpus = sorted(os.sched_getaffinity(0))
    work = Path(tempfile.mkdtemp(prefix="embed-ceiling-"))
    try:
        catalog = make_catalog(work / "catalog", args.items)
        runs = [run_local(catalog, work / "local", args.shard_rows)]
        print(json.dumps(runs[-1]), flush=True)
        for _ in range(args.rounds):   # alternate: a shared host's speed drifts over minutes
            runs.append(run_parallel(catalog, work, args.shard_rows, cpus))
            print(json.dumps(runs[-1]), flush=True)
            runs.append(run_local(catalog, work / "local", args.shard_rows))
            print(json.dumps(runs[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def alone(run):
        return run.get("processes", 1) == 1

    ratio = ratios(runs, lambda run: not alone(run), alone)
    result = {"machine": {"platform": platform.platform(), "cpus": len(cpus)},
              "args": {k: shown(v) for k, v in vars(args).items()}, "runs": runs, "all_cores_vs_one": ratio}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(cpus)} processes at once / one alone, per core: items/s {ratio['items_per_s_per_core']}, "
          f"steady {ratio['steady_items_per_s_per_core']}; wrote {args.out}")


if __name__ == "__main__":
    main()
