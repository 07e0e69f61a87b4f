"""Health first: /healthz latency while 50 long-pollers, 10 preview viewers and 5 uploaders load the daemon.

Starts `pi-search serve` on the demo bundle with a still scene (one replayed frame, so every long poll
waits its full 5 s), measures /healthz alone, then under load. Each health probe opens a new connection,
as the systemd watchdog script and the kiosk's start-up check do. Clients run in separate processes.
Prints p50/p95/p99/max and writes bench/results/health.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support.daemon import ROOT, Daemon, demo_bundle, scene  # noqa: E402


# ---------------------------------------------------------------- clients (run in worker processes)
def _poller(port: int, stop_at: float, out: dict) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    after = None
    while time.time() < stop_at:
        try:
            conn.request("GET", "/api/results" if after is None else f"/api/results?after={after}&wait=5")
            r = conn.getresponse()
            body = json.loads(r.read())
            out["polls"] += 1
            if r.status != 200:
                out["errors"].append(f"poll {r.status}")
                time.sleep(0.3)
            after = body.get("frame_id")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            out["errors"].append(f"poll {type(exc).__name__}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            time.sleep(0.3)
    conn.close()


def _viewer(port: int, stop_at: float, out: dict) -> None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/stream.mjpg")
        r = conn.getresponse()
        if r.status != 200:
            out["errors"].append(f"stream {r.status}")
            return
        n = 0
        while time.time() < stop_at:
            chunk = r.read1(65536)
            if not chunk:
                out["errors"].append("stream ended early")
                break
            n += chunk.count(b"Content-Type: image/jpeg")
        out["frames"].append(n)
        conn.close()
    except (OSError, http.client.HTTPException) as exc:
        out["errors"].append(f"stream {type(exc).__name__}")


def _multipart(photo: bytes) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"shot.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + photo + f"\r\n--{b}--\r\n".encode()
    return body, f"multipart/form-data; boundary={b}"


def _uploader(port: int, stop_at: float, photo: bytes, out: dict) -> None:
    body, ctype = _multipart(photo)
    while time.time() < stop_at:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("POST", "/api/search", body=body, headers={"Content-Type": ctype})
            r = conn.getresponse()
            r.read()
            out["uploads"] += 1
            if r.status != 200:
                out["errors"].append(f"upload {r.status}")
        except (OSError, http.client.HTTPException) as exc:
            out["errors"].append(f"upload {type(exc).__name__}")
        finally:
            conn.close()


def _health(port: int, stop_at: float, every: float, out: dict) -> None:
    while time.time() < stop_at:
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("GET", "/healthz")
            r = conn.getresponse()
            r.read()
            out["health_ms"].append((time.perf_counter() - t0) * 1000.0)
            if r.status != 200:
                out["errors"].append(f"healthz {r.status}")
        except (OSError, http.client.HTTPException) as exc:
            out["errors"].append(f"healthz {type(exc).__name__}")
        finally:
            conn.close()
        time.sleep(max(0.0, every - (time.perf_counter() - t0)))


def _worker(kind: str, n: int, port: int, stop_at: float, photo: bytes, every: float, queue) -> None:
    out = {"polls": 0, "uploads": 0, "frames": [], "health_ms": [], "errors": []}
    if kind == "poll":
        targets = [(_poller, (port, stop_at, out))] * n
    elif kind == "view":
        targets = [(_viewer, (port, stop_at, out))] * n
    elif kind == "upload":
        targets = [(_uploader, (port, stop_at, photo, out))] * n
    else:
        targets = [(_health, (port, stop_at, every, out))]
    threads = [threading.Thread(target=f, args=a) for f, a in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put(out)


def run_clients(port: int, seconds: float, pollers: int, viewers: int, uploaders: int, photo: bytes,
                every: float) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    stop_at = time.time() + seconds
    jobs = [("health", 1)]
    if pollers:
        jobs += [("poll", pollers // 2), ("poll", pollers - pollers // 2)]
    if viewers:
        jobs.append(("view", viewers))
    if uploaders:
        jobs.append(("upload", uploaders))
    procs = [ctx.Process(target=_worker, args=(k, n, port, stop_at, photo, every, queue))
             for k, n in jobs if n]
    for p in procs:
        p.start()
    parts = [queue.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(30)
    return {"polls": sum(p["polls"] for p in parts), "uploads": sum(p["uploads"] for p in parts),
            "frames": [f for p in parts for f in p["frames"]],
            "health_ms": [x for p in parts for x in p["health_ms"]],
            "errors": [e for p in parts for e in p["errors"]]}


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    if not a.size:
        return {"n": 0}
    return {"n": int(a.size), **{f"p{q}": round(float(np.percentile(a, q)), 1) for q in (50, 95, 99)},
            "max": round(float(a.max()), 1)}


def bench(seconds: float, pollers: int, viewers: int, uploaders: int, every: float, state: Path) -> dict:
    bundle = demo_bundle(state)
    with tempfile.TemporaryDirectory() as tmp:
        frames = scene(Path(tmp) / "still", 1)
        photo = sorted((ROOT / "pi_search" / "data" / "demo" / "frames").glob("*.jpg"))[5].read_bytes()
        with Daemon(frames, bundle, Path(tmp) / "daemon.log") as d:
            time.sleep(2)
            alone = run_clients(d.port, min(10.0, seconds), 0, 0, 0, photo, every)
            run_clients(d.port, 5, pollers, viewers, uploaders, photo, every)  # warm-up: threads' first use
            loaded = run_clients(d.port, seconds, pollers, viewers, uploaders, photo, every)
            threads = d.threads()
    return {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform(), "load_avg_at_end": os.getloadavg()},
        "setup": {"seconds": seconds, "long_pollers": pollers, "viewers": viewers, "uploaders": uploaders,
                  "health_every_s": every, "scene": "still (one replayed frame)", "upload_bytes": len(photo)},
        "healthz_alone_ms": percentiles(alone["health_ms"]),
        "healthz_loaded_ms": percentiles(loaded["health_ms"]),
        "long_polls": loaded["polls"], "uploads": loaded["uploads"],
        "preview_parts_per_viewer": [min(loaded["frames"], default=0), max(loaded["frames"], default=0)],
        "errors": len(loaded["errors"]), "error_samples": sorted(set(loaded["errors"]))[:5],
        "daemon_threads": threads,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--pollers", type=int, default=50)
    ap.add_argument("--viewers", type=int, default=10)
    ap.add_argument("--uploaders", type=int, default=5)
    ap.add_argument("--every", type=float, default=0.05, help="Seconds between health probes.")
    ap.add_argument("--state-dir", type=Path, default=Path(tempfile.gettempdir()) / "pi-search-bench-health")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "health.json")
    args = ap.parse_args()
    res = bench(args.seconds, args.pollers, args.viewers, args.uploaders, args.every, args.state_dir)
    a, b = res["healthz_alone_ms"], res["healthz_loaded_ms"]
    print(f"/healthz alone      n={a['n']}  p50 {a.get('p50')}  p95 {a.get('p95')}  p99 {a.get('p99')}  "
          f"max {a.get('max')} ms")
    print(f"/healthz under load n={b['n']}  p50 {b.get('p50')}  p95 {b.get('p95')}  p99 {b.get('p99')}  "
          f"max {b.get('max')} ms")
    print(f"load: {args.pollers} long polls ({res['long_polls']} answered), {args.viewers} viewers "
          f"({res['preview_parts_per_viewer'][0]}..{res['preview_parts_per_viewer'][1]} parts each), "
          f"{args.uploaders} uploaders ({res['uploads']} searches); {res['errors']} errors "
          f"{res['error_samples']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
