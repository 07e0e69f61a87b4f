"""Catalog embedding throughput: the local engine (one process) against Ray Data on a real multi-node cluster.

Starts a Ray cluster of ``--nodes`` raylets on this machine (``ray.cluster_utils.Cluster``: separate raylet
processes, as on separate machines, sharing one host), embeds the same catalog with both engines and prints
items/s, items/s per core and items per CPU-second actually used (summed over every process of the run,
Ray's own and its exited workers included: the figure that other jobs on a busy machine disturb least).
The local engine runs on one core; local and Ray runs alternate (``--rounds``) so both see the same
stretch of a shared host's drifting speed. Writes bench/results/embed-scaling.json.

    .venv/bin/python bench/bench_embed_scaling.py       # 2 nodes x 1 CPU, 2400 items; runs at nice 10
    .venv/bin/python bench/bench_embed_scaling.py --nodes 4 --cpus-per-node 4 --items 4000   # a bigger host
"""

from __future__ import annotations

import argparse
import contextlib
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


def _name(proc: Path, comm: str) -> str:
    """A process's name as the report shows it: the title's first word (Ray workers name themselves
    ``ray::MapWorker(...)``, ``ray::IDLE``...), a Python service by its script."""
    argv = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
    name = Path(argv[0].split()[0]).name if argv and argv[0].strip() else comm
    if name.startswith("ray::"):   # an actor names the method it runs: "ray::MapWorker(...).submit"
        name = name[: name.rindex(")") + 1] if ")" in name else name
    if name.startswith("python") and len(argv) > 1:
        script = next((a for a in argv[1:] if not a.startswith("-")), "")
        name = f"python {Path(script).name}" if script else name
    return name


def _tree(pid: int) -> dict[tuple[int, int], tuple[str, int]]:
    """``{(pid, start tick): (name, ticks)}`` for ``pid`` and its living descendants: the name as it is now
    (a Ray worker takes its actor's name once started) and the process's own user + system CPU ticks (not
    its children's: they count as themselves)."""
    stats = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            comm, rest = (d / "stat").read_text().split(" (", 1)[1].rsplit(")", 1)
        except (OSError, IndexError):
            continue
        fields = rest.split()   # ppid, utime + stime, start time
        stats[int(d.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[19]), comm)
    children: dict[int, list[int]] = {}
    for p, (ppid, *_) in stats.items():
        children.setdefault(ppid, []).append(p)
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            _, ticks, start, comm = stats[p]
            with contextlib.suppress(OSError):   # exited meanwhile
                out[(p, start)] = (_name(Path(f"/proc/{p}"), comm), ticks)
        todo.extend(children.get(p, []))
    return out


class CpuLedger:
    """CPU seconds used by this process and its descendants since the ledger started, processes that exit
    before the end included (Ray stops its actors when a dataset is done): each process's own time as last
    seen, sampled every ``every`` s in a thread (a process that exits loses at most its last interval)."""

    def __init__(self, every: float = 1.0):
        import threading

        self._base = {key: ticks for key, (_, ticks) in _tree(os.getpid()).items()}
        self._last: dict[tuple[int, int], tuple[str, int]] = {}
        self.samples: list[tuple[float, float]] = []    # (wall time, CPU seconds so far)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sample()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        with self._lock:
            self._last.update(_tree(os.getpid()))
            used = sum(ticks - self._base.get(key, 0) for key, (_, ticks) in self._last.items())
            self.samples.append((time.time(), used / TICKS))

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self._sample()

    def stop(self) -> float:
        """Stop sampling; the CPU seconds used since the start."""
        self._stop.set()
        self._thread.join()
        self._sample()
        return self.samples[-1][1]

    def by_name(self) -> dict[str, float]:
        """CPU seconds since the start by process name (where a Ray run's CPU goes), largest first."""
        acc: dict[str, float] = {}
        for key, (name, ticks) in self._last.items():
            acc[name] = acc.get(name, 0.0) + (ticks - self._base.get(key, 0)) / TICKS
        return {k: round(v, 2) for k, v in sorted(acc.items(), key=lambda kv: -kv[1]) if v >= 0.01}

    def at(self, t: float) -> float:
        """CPU seconds at wall time ``t`` (linear between samples)."""
        import numpy as np

        ts, cs = zip(*self.samples, strict=True)
        return float(np.interp(t, ts, cs))


def steady(out: Path, cpu: CpuLedger, workers: int = 1) -> tuple[float | None, float | None]:
    """Rows per second and rows per CPU-second once every one of ``workers`` (embedding in parallel) has
    written its first shard and before the last ones finish: the shards completed after the ``workers``-th
    and up to the ``workers``-th last, over that time. Start-up (the cluster, the workers, the model, each
    worker's first shard) and the tail (fewer shards left than workers) are left out; with one worker, the
    first shard to the last."""
    from pi_search.embed import shards as sh

    files = sorted(sh.shard_files(out).values(), key=lambda p: p.stat().st_mtime)
    first, last = workers - 1, len(files) - workers
    if last - first < 2:
        return None, None
    rows = sum(len(sh.read_shard(p, vectors=False).rows) for p in files[first + 1 : last + 1])
    t0, t1 = files[first].stat().st_mtime, files[last].stat().st_mtime
    used = cpu.at(t1) - cpu.at(t0)
    return (rows / (t1 - t0) if t1 > t0 else None), (rows / used if used > 0 else None)


def run_local(catalog: Path, out: Path, shard_rows: int, core: int | None = None) -> dict:
    """The local engine with this process held to one core (``core``, default the first it may use;
    ``sched_setaffinity``): its items/s is then exactly the items/s of one core."""
    from pi_search.embed.local import embed_local
    from pi_search.model.extractor import Extractor

    shutil.rmtree(out, ignore_errors=True)
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed) if core is None else core})
    try:
        sampler = CpuLedger()
        t0 = time.perf_counter()
        # the photos alone: the learning sample's views are a fixed 20,000 items (bench/look_cost.py)
        report = embed_local(catalog, out, Extractor(), shard_rows=shard_rows, progress=False, views=0)
        wall = time.perf_counter() - t0
        cpu = sampler.stop()
    finally:
        os.sched_setaffinity(0, allowed)
    rate, per_cpu = steady(out, sampler)
    n = report.embedded
    return {"engine": "local", "cores": 1, "items": n, "seconds": round(wall, 2),
            "items_per_s": round(n / wall, 2), "items_per_s_per_core": round(n / wall, 2),
            "steady_items_per_s_per_core": _round(rate), "cpu_seconds": round(cpu, 2),
            "items_per_cpu_s": round(n / cpu, 2), "steady_items_per_cpu_s": _round(per_cpu)}


RATES = ("items_per_s_per_core", "steady_items_per_s_per_core", "items_per_cpu_s", "steady_items_per_cpu_s")


def mean_of(runs: list[dict], key: str, which) -> float | None:
    """The mean of ``key`` over the runs ``which(run)`` picks (None where no run has it)."""
    vals = [r[key] for r in runs if which(r) and r.get(key)]
    return sum(vals) / len(vals) if vals else None


def ratios(runs: list[dict], top, bottom) -> dict[str, float | None]:
    """Each of ``RATES``: the mean over the runs ``top`` picks / the mean over those ``bottom`` picks."""
    out = {}
    for key in RATES:
        a, b = mean_of(runs, key, top), mean_of(runs, key, bottom)
        out[key] = round(a / b, 3) if a and b else None
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def run_ray(catalog: Path, out: Path, shard_rows: int, nodes: int, cpus: int, store_mb: int) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from pi_search.embed.ray_engine import embed_ray
    from pi_search.model.extractor import Extractor

    shutil.rmtree(out, ignore_errors=True)
    sampler = CpuLedger()
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
        report = embed_ray(catalog, out, Extractor(), shard_rows=shard_rows, progress=False, views=0)
        wall = time.perf_counter() - t0
        cpu = sampler.stop()
        by_process = sampler.by_name()
    finally:
        ray.shutdown()
        cluster.shutdown()
    cores = nodes * cpus
    n = report.embedded
    rate, per_cpu = steady(out, sampler, workers=cores)    # embed_ray's default: one actor per CPU
    return {"engine": "ray", "nodes": len(alive), "cores": cores, "items": n, "seconds": round(wall, 2),
            "cluster_start_s": round(t0 - t_start, 2), "items_per_s": round(n / wall, 2),
            "items_per_s_per_core": round(n / wall / cores, 2),
            "steady_items_per_s_per_core": _round(rate / cores if rate else None),
            "cpu_seconds": round(cpu, 2), "items_per_cpu_s": round(n / cpu, 2),
            "steady_items_per_cpu_s": _round(per_cpu), "cpu_seconds_by_process": by_process}


def shown(v):
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
    ap.add_argument("--rounds", type=int, default=2, help="Ray runs, each followed by a local run")
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
        # local, then Ray and local in turn: a shared host's speed drifts over minutes, and each engine's
        # mean then spans the same stretch of time
        runs = [run_local(catalog, work / "local", args.shard_rows)]
        print(json.dumps(runs[-1]), flush=True)
        cosine = 1.0
        for _ in range(args.rounds):
            runs.append(run_ray(catalog, work / "ray", args.shard_rows, args.nodes, args.cpus_per_node,
                                args.store_mb))
            print(json.dumps(runs[-1]), flush=True)
            cosine = min(cosine, same_vectors(work / "local", work / "ray"))
            runs.append(run_local(catalog, work / "local", args.shard_rows))
            print(json.dumps(runs[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def is_ray(run):
        return run["engine"] == "ray"

    ratio = ratios(runs, is_ray, lambda run: not is_ray(run))
    per_core = (mean_of(runs, "steady_items_per_s_per_core", is_ray)
                or mean_of(runs, "items_per_s_per_core", is_ray))
    projection = {str(c): round(ITEMS_10M / (per_core * c) / 3600, 2) for c in (16, 64, 256)}
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "load_at_start": load_at_start, "load_at_end": round(os.getloadavg()[0], 2)},
              "args": {k: shown(v) for k, v in vars(args).items()},
              "runs": runs, "ray_vs_local": ratio, "min_cosine_ray_vs_local": round(cosine, 6),
              "projection_items_per_s_per_core": round(per_core, 2),
              "hours_for_10m_items_by_cores": projection,
              "note": "local runs held to one core; local and Ray runs alternate and the ratios compare "
                      "their means; a busy or shared host disturbs wall-clock rates, items per CPU-second "
                      "less so"}
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
