"""Catalog embedding throughput: the local engine (one process) against Ray Data on a real multi-node cluster.

Starts a Ray cluster of ``--nodes`` raylets on this machine (``ray.cluster_utils.Cluster``: separate raylet
processes, as on separate machines, sharing one host), embeds the same catalog with both engines and prints
items/s, items/s per core and items per CPU-second actually used (summed over every process of the run,
Ray's own included: the figure that other jobs on a busy machine disturb least). Writes
bench/results/embed-scaling.json.

    .venv/bin/python bench/bench_embed_scaling.py       # 2 nodes x 1 CPU, 2400 items; runs at nice 10
    .venv/bin/python bench/bench_embed_scaling.py --nodes 4 --cpus-per-node 4 --items 4000   # a bigger host
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

TICKS = os.sysconf("SC_CLK_TCK")
ITEMS_10M = 10_000_000


def make_catalog(root: Path, items: int) -> Path:
    """``items`` shop-listing photos (Tux Paint stamps on white, 640 px JPEG) as catalog.csv + images/."""
    from pi_search import images
    from pi_search.tools.benchmark_data import STAMPS_ROOT, load_rgba, on_white

    pngs = sorted(Path(STAMPS_ROOT).rglob("*.png"))
    if not pngs:
        sys.exit(f"no stamps under {STAMPS_ROOT}: apt-get install tuxpaint-stamps-default (install.sh --dev)")
    (root / "images").mkdir(parents=True, exist_ok=True)
    with open(root / "catalog.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "title", "price", "image"])
        for n in range(items):
            png = pngs[n % len(pngs)]
            item_id = f"{n:06d}-{png.stem}"[:60]
            (root / "images" / f"{item_id}.jpg").write_bytes(
                images.encode_jpeg(on_white(load_rgba(png), long_side=640), 90))
            w.writerow([item_id, png.stem.replace("_", " "), "1.00", f"images/{item_id}.jpg"])
    return root


def _tree(pid: int) -> dict[int, tuple[str, int]]:
    """``{pid: (name, ticks)}`` for ``pid`` and its living descendants: the process title's first word
    (Ray workers name themselves ``ray::ShardEmbedder``, ``ray::IDLE``...) and user + system CPU ticks, its
    waited-for children's included."""
    stats = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            comm, rest = (d / "stat").read_text().split(" (", 1)[1].rsplit(")", 1)
            argv = [a.decode(errors="replace") for a in (d / "cmdline").read_bytes().split(b"\0") if a]
        except (OSError, IndexError):
            continue
        fields = rest.split()
        name = Path(argv[0].split()[0]).name if argv and argv[0].strip() else comm
        if name.startswith("python") and len(argv) > 1:   # a Python service: name it by its script
            script = next((a for a in argv[1:] if not a.startswith("-")), "")
            name = f"python {Path(script).name}" if script else name
        stats[int(d.name)] = (int(fields[1]), name, sum(int(x) for x in fields[11:15]))  # ppid, name, ticks
    children: dict[int, list[int]] = {}
    for p, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(p)
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            out[p] = stats[p][1:]
        todo.extend(children.get(p, []))
    return out


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and all its living descendants (children that have exited and
    been waited for count in their parent's cutime/cstime)."""
    return sum(t for _, t in _tree(pid).values()) / TICKS


def cpu_by_process(pid: int) -> dict[str, float]:
    """CPU seconds of ``pid``'s tree by process name (where a Ray run's CPU goes), largest first."""
    acc: dict[str, float] = {}
    for name, ticks in _tree(pid).values():
        acc[name] = acc.get(name, 0.0) + ticks / TICKS
    return {k: round(v, 2) for k, v in sorted(acc.items(), key=lambda kv: -kv[1]) if v >= 0.01}


class CpuSampler:
    """CPU seconds of this process tree sampled every ``every`` s in a thread: (wall time, cpu) pairs."""

    def __init__(self, every: float = 1.0):
        import threading

        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), tree_cpu_seconds(os.getpid())))
            self._stop.wait(every)

    def stop(self) -> None:
        self.samples.append((time.time(), tree_cpu_seconds(os.getpid())))
        self._stop.set()
        self._thread.join()

    def at(self, t: float) -> float:
        """CPU seconds at wall time ``t`` (linear between samples)."""
        import numpy as np

        ts, cs = zip(*self.samples, strict=True)
        return float(np.interp(t, ts, cs))


def steady(out: Path, cpu: CpuSampler) -> tuple[float | None, float | None]:
    """Rows per second and rows per CPU-second between the first and the last shard file written: the rate
    once started (start-up of the cluster, the workers and the model left out)."""
    from pi_search.embed import shards as sh

    files = sorted(sh.shard_files(out).values(), key=lambda p: p.stat().st_mtime)
    if len(files) < 3:
        return None, None
    rows = sum(len(sh.read_shard(p, vectors=False).rows) for p in files[1:])
    t0, t1 = files[0].stat().st_mtime, files[-1].stat().st_mtime
    used = cpu.at(t1) - cpu.at(t0)
    return (rows / (t1 - t0) if t1 > t0 else None), (rows / used if used > 0 else None)


def run_local(catalog: Path, out: Path, shard_rows: int) -> dict:
    from pi_search.embed.local import embed_local
    from pi_search.model.extractor import Extractor

    shutil.rmtree(out, ignore_errors=True)
    sampler = CpuSampler()
    cpu0 = tree_cpu_seconds(os.getpid())
    t0 = time.perf_counter()
    report = embed_local(catalog, out, Extractor(), shard_rows=shard_rows, progress=False)
    wall = time.perf_counter() - t0
    cpu = tree_cpu_seconds(os.getpid()) - cpu0
    sampler.stop()
    rate, per_cpu = steady(out, sampler)
    n = report.embedded
    return {"engine": "local", "cores": 1, "items": n, "seconds": round(wall, 2),
            "items_per_s": round(n / wall, 2), "items_per_s_per_core": round(n / wall, 2),
            "steady_items_per_s_per_core": _round(rate), "cpu_seconds": round(cpu, 2),
            "items_per_cpu_s": round(n / cpu, 2), "steady_items_per_cpu_s": _round(per_cpu)}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def run_ray(catalog: Path, out: Path, shard_rows: int, nodes: int, cpus: int, store_mb: int) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from pi_search.embed.ray_engine import embed_ray
    from pi_search.model.extractor import Extractor

    shutil.rmtree(out, ignore_errors=True)
    sampler = CpuSampler()
    cpu0 = tree_cpu_seconds(os.getpid())
    before = cpu_by_process(os.getpid())      # this process's earlier runs count before the cluster's
    args = {"num_cpus": cpus, "object_store_memory": store_mb * 2**20}
    t_start = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={**args, "include_dashboard": False})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**args)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
        alive = [n for n in ray.nodes() if n["Alive"]]
        t0 = time.perf_counter()
        report = embed_ray(catalog, out, Extractor(), shard_rows=shard_rows, progress=False)
        wall = time.perf_counter() - t0
        cpu = tree_cpu_seconds(os.getpid()) - cpu0   # before shutdown: the cluster's processes still live
        by_process = {k: round(v - before.get(k, 0.0), 2) for k, v in cpu_by_process(os.getpid()).items()}
        sampler.stop()
    finally:
        ray.shutdown()
        cluster.shutdown()
    cores = nodes * cpus
    n = report.embedded
    rate, per_cpu = steady(out, sampler)
    return {"engine": "ray", "nodes": len(alive), "cores": cores, "items": n, "seconds": round(wall, 2),
            "cluster_start_s": round(t0 - t_start, 2), "items_per_s": round(n / wall, 2),
            "items_per_s_per_core": round(n / wall / cores, 2),
            "steady_items_per_s_per_core": _round(rate / cores if rate else None),
            "cpu_seconds": round(cpu, 2), "items_per_cpu_s": round(n / cpu, 2),
            "steady_items_per_cpu_s": _round(per_cpu), "cpu_seconds_by_process": by_process}


def _shown(v):
    """An argument as the report shows it: paths inside the checkout relative to it."""
    if isinstance(v, Path):
        v = v.resolve()
        return str(v.relative_to(ROOT)) if v.is_relative_to(ROOT) else str(v)
    return v


def same_vectors(a: Path, b: Path) -> float:
    """The lowest cosine between the two runs' vectors of the same id (1.0: identical)."""
    import numpy as np

    from pi_search.embed import shards as sh

    def table(d):
        out = {}
        for p in sh.shard_files(d).values():
            s = sh.read_shard(p)
            out.update(zip(s.ids, s.vectors, strict=True))
        return out

    ta, tb = table(a), table(b)
    assert sorted(ta) == sorted(tb), "the two engines embedded different rows"
    return float(min(np.dot(ta[i], tb[i]) for i in ta))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=2400, help="catalog items (made from the Tux Paint stamps)")
    ap.add_argument("--catalog", type=Path, help="embed this catalog instead of making one")
    ap.add_argument("--nodes", type=int, default=2, help="raylets in the Ray cluster (>= 2)")
    ap.add_argument("--cpus-per-node", type=int, default=1)
    ap.add_argument("--shard-rows", type=int, default=64)
    ap.add_argument("--store-mb", type=int, default=300, help="object store per node, MB")
    ap.add_argument("--nice", type=int, default=10, help="lower this run's priority by this much")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "embed-scaling.json")
    args = ap.parse_args()
    os.nice(args.nice)
    load_at_start = round(os.getloadavg()[0], 2)
    work = Path(tempfile.mkdtemp(prefix="embed-scaling-"))
    try:
        catalog = args.catalog or make_catalog(work / "catalog", args.items)
        print(f"catalog {catalog}: {args.items if not args.catalog else '?'} items; "
              f"load {os.getloadavg()[0]:.2f}", flush=True)
        runs = [run_local(catalog, work / "local", args.shard_rows)]
        print(json.dumps(runs[-1]), flush=True)
        runs.append(run_ray(catalog, work / "ray", args.shard_rows, args.nodes, args.cpus_per_node,
                            args.store_mb))
        print(json.dumps(runs[-1]), flush=True)
        cosine = same_vectors(work / "local", work / "ray")
        runs.append(run_local(catalog, work / "local", args.shard_rows))   # again: the load may have changed
        print(json.dumps(runs[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    local = [r for r in runs if r["engine"] == "local"]
    ray_run = runs[1]

    def mean(key):
        vals = [r[key] for r in local if r.get(key)]
        return sum(vals) / len(vals) if vals else None

    ratio = {k: round(ray_run[k] / mean(k), 3) if ray_run.get(k) and mean(k) else None
             for k in ("items_per_s_per_core", "steady_items_per_s_per_core", "items_per_cpu_s",
                       "steady_items_per_cpu_s")}
    per_core = ray_run["steady_items_per_s_per_core"] or ray_run["items_per_s_per_core"]
    projection = {str(c): round(ITEMS_10M / (per_core * c) / 3600, 2) for c in (16, 64, 256)}
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "load_at_start": load_at_start, "load_at_end": round(os.getloadavg()[0], 2)},
              "args": {k: _shown(v) for k, v in vars(args).items()},
              "runs": runs, "ray_vs_local": ratio, "min_cosine_ray_vs_local": round(cosine, 6),
              "hours_for_10m_items_by_cores": projection,
              "note": "measured on a shared 2-core machine while other jobs ran: wall-clock rates are "
                      "disturbed; items per CPU-second much less so"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"ray / local: items/s per core {ratio['items_per_s_per_core']}, steady "
          f"{ratio['steady_items_per_s_per_core']}, items per CPU-second {ratio['items_per_cpu_s']}, steady "
          f"{ratio['steady_items_per_cpu_s']}; "
          f"lowest cosine {cosine:.6f}")
    print("10M items at the Ray per-core rate: "
          + ", ".join(f"{c} cores {h} h" for c, h in projection.items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
