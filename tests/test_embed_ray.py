"""index embed --engine ray (Ray Data on a Ray instance started for the run): the local engine's vectors, and
every catalog row embedded exactly once after a worker or the whole job is killed (SIGKILL) mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pi_search.embed import shards as sh
from pi_search.embed.catalog import read_catalog

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "pi_search" / "data" / "demo"
ACTOR = "ray::MapWorker(MapBatches(ShardEmbedder))"


def processes() -> dict[int, tuple[int, str]]:
    """Every process: pid -> (parent pid, command line)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError, ValueError):
            continue
        out[int(d.name)] = (ppid, cmd)
    return out


def descendants(pid: int) -> dict[int, str]:
    """The living descendants of ``pid`` (Ray's GCS, raylet, workers and actors of a run it started)."""
    procs = processes()
    children: dict[int, list[int]] = {}
    for p, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(p)
    found, todo = {}, list(children.get(pid, []))
    while todo:
        p = todo.pop()
        found[p] = procs[p][1]
        todo.extend(children.get(p, []))
    return found


def alive(pids) -> list[int]:
    procs = processes()
    return [p for p in pids if p in procs]


def wait_gone(pids, timeout: float = 60.0) -> list[int]:
    """Wait for the processes ``pids`` to exit; the ones still there after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < end:
        time.sleep(0.2)
    return alive(pids)


def embed_cmd(out: Path, *more: str) -> list[str]:
    return [str(Path(sys.executable).with_name("pi-search")), "index", "embed", str(DEMO), "--out", str(out),
            "--engine", "ray", "--shard-rows", "5", "--json", *more]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}


def shard_ids(out: Path) -> list[str]:
    """Ids of every embedded row of every shard, in shard order (duplicates kept, so they can be seen)."""
    ids = []
    for _, path in sorted(sh.shard_files(out).items()):
        ids += sh.read_shard(path, vectors=False).ids
    return ids


def vectors(out: Path) -> dict[str, np.ndarray]:
    table = {}
    for path in sh.shard_files(out).values():
        s = sh.read_shard(path)
        table.update(zip(s.ids, s.vectors, strict=True))
    return table


@pytest.fixture(scope="module")
def demo_reference(tmp_path_factory, extractor) -> dict[str, np.ndarray]:
    """The demo catalog's vectors by the local engine."""
    from pi_search.embed.local import embed_local

    out = tmp_path_factory.mktemp("local") / "s"
    embed_local(DEMO, out, extractor, shard_rows=50, progress=False)
    return vectors(out)


def demo_ids() -> list[str]:
    rows, problems = read_catalog(DEMO)
    assert not problems
    return [r.id for r in rows]


def assert_each_row_once(out: Path, reference: dict[str, np.ndarray]) -> None:
    ids = shard_ids(out)
    assert len(ids) == len(set(ids)), "a row was embedded twice"
    assert sorted(ids) == sorted(demo_ids()), "a row is missing"
    manifest = sh.ShardsManifest.read(out)
    assert manifest.complete and manifest.count == len(ids) == 150 and manifest.failed == 0
    got = vectors(out)
    worst = min(float(np.dot(got[i], reference[i])) for i in reference)
    assert worst >= 0.9999, worst
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def views_by_row(out: Path) -> dict[int, np.ndarray]:
    """Every shard's views to learn from, by catalog row: float32 [views, 1280]."""
    table = {}
    for _, path in sorted(sh.shard_files(out).items()):
        rows, vecs, _ = sh.read_views(path, 1280)
        for r in np.unique(rows):
            table[int(r)] = vecs[rows == r]
    return table


def test_ray_engine_gives_the_local_engines_vectors(catalog_dir, bundle_dir, extractor, tmp_path):
    """The vectors, and the views the build learns from (made and embedded by the actors), are the local
    engine's; a bundle built from the Ray shards learned the projection a build from the photos learns."""
    import ray

    from pi_search.embed.build import FromShards, build_bundle
    from pi_search.embed.local import embed_local
    from pi_search.embed.ray_engine import embed_ray

    local = embed_local(catalog_dir, tmp_path / "local", extractor, shard_rows=4, progress=False)
    report = embed_ray(catalog_dir, tmp_path / "ray", extractor, shard_rows=4, num_cpus=2, progress=False)
    assert not ray.is_initialized()          # the Ray it started is shut down again
    assert (report.engine, report.rows, report.shards, report.embedded) == ("ray", 16, 4, 16)
    assert sh.ShardsManifest.read(tmp_path / "ray").engine == "ray"
    ids = shard_ids(tmp_path / "ray")
    assert sorted(ids) == sorted(shard_ids(tmp_path / "local")) and len(ids) == len(set(ids)) == local.rows
    a, b = vectors(tmp_path / "local"), vectors(tmp_path / "ray")
    for i in a:
        assert float(np.dot(a[i], b[i])) >= 0.9999, i
    assert not [c for c in descendants(os.getpid()).values() if "raylet" in c or "gcs_server" in c]
    # 6 views of each of the 16 items, one more for every 4th (held out to calibrate with)
    assert report.views == local.views == 16 * 6 + 4
    va, vb = views_by_row(tmp_path / "local"), views_by_row(tmp_path / "ray")
    assert sorted(va) == sorted(vb) == list(range(16))
    for r in va:
        assert va[r].shape == vb[r].shape and va[r].shape[0] in (6, 7)
        assert float(np.min(np.sum(va[r] * vb[r], axis=1))) >= 0.9999, r
    built = build_bundle(catalog_dir, tmp_path / "b", extractor, source=FromShards(tmp_path / "ray"),
                         progress=False)
    assert built.manifest.learned["views_made_by"] == "index embed (ray)"
    assert built.manifest.learned["pairs"] == 16 * 6
    mine, theirs = (np.load(d / "learned_matrix.npy") for d in (tmp_path / "b", bundle_dir))
    assert mine.shape == theirs.shape == (384, 1280)
    assert np.allclose(mine, theirs, rtol=1e-3, atol=1e-3 * float(np.abs(theirs).max()))


def test_a_killed_worker_is_replaced_and_every_row_is_embedded_once(tmp_path, demo_reference):
    out = tmp_path / "s"
    proc = subprocess.Popen(embed_cmd(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env())
    killed, done_at_kill, seen = None, None, {}
    try:
        end = time.monotonic() + 300
        while killed is None and proc.poll() is None and time.monotonic() < end:
            seen.update(descendants(proc.pid))
            actors = [p for p, c in seen.items() if c.startswith(ACTOR) and alive([p])]
            if actors and out.is_dir() and sh.shard_files(out):
                done_at_kill = len(sh.shard_files(out))
                os.kill(actors[0], signal.SIGKILL)       # a Ray worker process dies mid-run
                killed = actors[0]
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert killed is not None, stderr
    assert done_at_kill < 30, "the run ended before the kill"
    assert proc.returncode == 0, stderr[-3000:]
    report = json.loads(stdout)
    assert report["embedded"] == 150 and report["resumed"] == 0
    assert_each_row_once(out, demo_reference)
    assert not wait_gone(seen), "Ray processes outlived the run"


def kill_embedding_after(out, shards: int) -> dict[int, str]:
    """Start ``pi-search index embed`` into ``out`` on Ray and SIGKILL it once ``shards`` shards are written;
    returns every process it had started (pid -> command line)."""
    proc = subprocess.Popen(embed_cmd(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env())
    seen: dict[int, str] = {}
    try:
        end = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < end:
            seen.update(descendants(proc.pid))
            if out.is_dir() and len(sh.shard_files(out)) >= shards:
                seen.update(descendants(proc.pid))
                os.kill(proc.pid, signal.SIGKILL)       # the whole job: pi-search index embed
                break
            time.sleep(0.05)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return seen


def test_a_killed_job_resumes_from_its_shards_and_embeds_every_row_once(tmp_path, demo_reference):
    out = tmp_path / "s"
    seen = kill_embedding_after(out, 3)
    before = {k: (p.stat().st_ino, p.stat().st_mtime_ns) for k, p in sh.shard_files(out).items()}
    assert 3 <= len(before) < 30
    assert not sh.ShardsManifest.read(out).complete
    core = [p for p, c in seen.items() if "/raylet " in c or "/gcs_server " in c]
    assert len(core) == 2 and not wait_gone(core, 30), "the raylet or GCS outlived the killed job"

    # started again at once, as a person would: an actor of the killed job may still finish its shard
    again = subprocess.run(embed_cmd(out), capture_output=True, text=True, env=env(), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads(again.stdout)
    assert report["resumed"] >= 5 * len(before) and report["embedded"] == 150 - report["resumed"]
    after = sh.shard_files(out)
    assert {k: (after[k].stat().st_ino, after[k].stat().st_mtime_ns) for k in before} == before
    assert_each_row_once(out, demo_reference)
    assert not wait_gone(seen, 120), "processes of the killed job outlived it"   # Ray's agents take a while


def test_a_killed_job_leaves_no_ray_process_behind(tmp_path):
    out = tmp_path / "s"
    seen = kill_embedding_after(out, 2)
    late = [p for p, c in seen.items() if "Agent" in c]   # Ray's DashboardAgent and RuntimeEnvAgent
    assert late, seen
    left = wait_gone(seen, 15)
    assert not left, [seen[p] for p in left]             # all gone at once, those two included
