"""The Ray Data engine: a streaming read of the catalog's photos feeds a pool of embedding actors that write
the shards (``pi-search index embed --engine ray``; needs ``pip install 'pi-search[cluster]'``).

Pipeline, one dataset row per shard of work (``Plan.work``), so a shard is always written whole by one task:

    from_items(pending shards)
      -> map(read_photos)           Ray tasks: read the shard's image files (bytes; nothing decoded yet)
      -> map_batches(ShardEmbedder) an actor pool: one LiteRT interpreter per actor, made once in __init__;
                                    decodes, frames (5 model passes per photo), writes the shard file
      -> iter_rows() in the driver  one small summary per shard (counts; never vectors) for the progress

Ray restarts an actor that dies and retries its shard; a shard file is written atomically under its number,
so a retried shard replaces the same file with the same rows: every row ends up embedded exactly once.
The catalog directory and ``--out`` must be at the same path on every node (a shared file system).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import PiSearchError
from ..learn.catalog import VIEWS
from ..model.extractor import Extractor
from ..progress import Progress
from . import reaper
from . import shards as sh
from .local import EmbedReport, embed_work, framing_threads, prepare, read_bytes

log = logging.getLogger(__name__)

READ_CPUS = 0.1      # a read task mostly waits on the disk
INSTALL = "pip install 'pi-search[cluster]'"


def import_ray():
    """The ``ray`` module with Ray Data, or a PiSearchError naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise PiSearchError(f"--engine ray needs Ray Data, not installed here ({exc}): {INSTALL}") from exc
    return ray


def read_photos(work: dict) -> dict:
    """Read stage: ``work`` plus ``data`` (each image file's bytes, b"" where unreadable) and ``errors`` (""
    or the reason), both lists of n."""
    data, errors = [], []
    for path in work["paths"]:
        blob, err = read_bytes(path)
        data.append(blob or b"")
        errors.append(err or "")
    return {**work, "data": data, "errors": errors}


class ShardEmbedder:
    """One actor: one interpreter (made once, here), called with batches of shards (numpy batch format:
    columns of equal length, one entry per shard); writes each shard, returns ``shard``, ``embedded``,
    ``failed``, ``views`` (int64 [batch]) and ``pid`` (the actor's process, for logs and fault tests)."""

    def __init__(self, model_path: str | None, threads: int, out_dir: str):
        self.extractor = Extractor(model_path, num_threads=threads)
        self.out_dir = out_dir
        framing_threads(threads)   # for the actor's life: its process embeds and nothing else

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {"shard": [], "embedded": [], "failed": [], "views": [], "pid": []}
        for n in range(len(batch["shard"])):
            work = {key: batch[key][n] for key in batch}
            work["errors"] = [e or None for e in work["errors"]]
            done = embed_work(self.extractor, work, self.out_dir)
            for key in ("shard", "embedded", "failed", "views"):
                out[key].append(done[key])
            out["pid"].append(os.getpid())
        return {key: np.asarray(val, np.int64) for key, val in out.items()}


def _init(ray, address: str | None, num_cpus: float | None) -> bool:
    """Connect to ``address`` (``auto``, ``ray://...``, ``HOST:PORT``) or start Ray on this machine; returns
    True when this call connected (and so must disconnect, or stop the Ray it started: ``ray.shutdown``)."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:   # a running cluster: its own settings apply
        try:
            ray.init(address=address, **({} if address.startswith("ray://") else {"log_to_driver": False}))
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise PiSearchError(f"cannot join the Ray cluster at {address} ({first}); start it with ray "
                                "start --head (docs/cluster.md) or give its --address") from exc
    else:
        # Workers import the same pi_search as this process (a checkout works without being installed).
        root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        # "local": a new instance even when RAY_ADDRESS or an earlier `ray start` names another one
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path}})
    return True


def embed_ray(catalog_dir: str | Path, out_dir: str | Path, extractor, *, address: str | None = None,
              actors: int | None = None, actor_cpus: float | None = None, threads: int = 1,
              shard_rows: int = sh.DEFAULT_SHARD_ROWS, strict: bool = False, progress: bool = True,
              num_cpus: float | None = None, views: int = VIEWS) -> EmbedReport:
    """Embed every usable row of ``catalog_dir`` into shards in ``out_dir`` on a Ray cluster.

    ``address``: the cluster to join (None: start Ray on this machine with ``num_cpus``). ``actors``:
    embedding actors (default: one per CPU of the cluster, less room for the read tasks); ``actor_cpus``:
    CPUs reserved per actor (default: what leaves ``READ_CPUS`` per actor free for the read stage).
    ``extractor`` (the driver's) gives the model file and the manifest's model fields; each actor loads
    the same file. ``views``: synthetic camera views of each item of the learning sample, made and embedded
    by the actors with the photos of their shards (0: none). Shards already in ``out_dir`` are skipped.
    """
    ray = import_ray()
    t0 = time.perf_counter()
    # Ray prints its workers' and raylets' messages on stdout; they belong on stderr with the other logs
    # (stdout carries --json)
    quiet = contextlib.redirect_stdout(sys.stderr)
    quiet.__enter__()
    started = False
    bar = writer = watcher = None
    try:
        if not address and not ray.is_initialized():   # Ray started here: it ends with this run, however
            watcher = reaper.watch()
        started = _init(ray, address, num_cpus)    # first: a wrong --address fails before any work
        plan, writer, problems = prepare(catalog_dir, out_dir, extractor, shard_rows, strict, views)
        report = EmbedReport(Path(out_dir), "ray", plan.rows, plan.shards, resumed=writer.done_rows,
                             skipped=problems)
        if writer.pending:
            cpus = float(ray.cluster_resources().get("CPU", 1.0))
            n_actors = actors or max(1, int(cpus // threads))
            n_actors = min(n_actors, len(writer.pending))
            per_actor = actor_cpus or max(0.05, min(float(threads), cpus / n_actors - READ_CPUS))
            log.info("ray: %d actor(s) of %.2f CPU, %d shard(s) to write, %g CPU in the cluster", n_actors,
                     per_actor, len(writer.pending), cpus)
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            ctx.print_on_execution_start = False
            work = [plan.work(k) for k in writer.pending]
            ds = ray.data.from_items(work, override_num_blocks=len(work))
            ds = ds.map(read_photos, num_cpus=READ_CPUS)
            ds = ds.map_batches(ShardEmbedder, batch_size=1, batch_format="numpy", num_cpus=per_actor,
                                compute=ray.data.ActorPoolStrategy(size=n_actors), zero_copy_batch=True,
                                fn_constructor_kwargs={"model_path": str(extractor.path), "threads": threads,
                                                       "out_dir": str(writer.dir.resolve())})
            bar = Progress(plan.rows, writer.done_rows, progress)
            for row in ds.iter_rows():
                report.embedded += int(row["embedded"])
                report.failed += int(row["failed"])
                report.views += int(row["views"])
                bar.update(int(row["embedded"]) + int(row["failed"]))
        report.manifest = writer.finish("ray")
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        if started:
            ray.shutdown()
        reaper.stop(watcher)
        quiet.__exit__(None, None, None)
    report.failed = report.manifest.failed
    report.seconds = time.perf_counter() - t0
    return report
