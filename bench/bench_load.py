"""Load benchmark on loopback: many /api/results pollers and /stream.mjpg viewers against a running daemon.

Starts `pi-search demo` (the shipped demo catalog, replayed camera frames), runs a short warm-up of the same
load (the server threads' first use makes their memory resident once), measures the daemon's RSS and the
inference rate alone, then under load (result clients polling with a short pause, MJPEG viewers reading
without pause; clients spread over several processes), then RSS again after the load. Prints a table and JSON.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import multiprocessing as mp
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

log = logging.getLogger("bench_load")
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


def start_daemon(
    port: int, state: Path, fps: float, log_path: Path, env: dict | None = None
) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("pi-search")
    cmd = [str(exe), "-v", "demo", "--port", str(port), "--fps", str(fps), "--state-dir", str(state)]
    with open(log_path, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the daemon did not become healthy within 300 s")


# ---------------------------------------------------------------- clients (run in worker processes)
def _results_client(port: int, stop_at: float, think: float, out: list, errors: list) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while time.time() < stop_at:
        t0 = time.perf_counter()
        try:
            conn.request("GET", "/api/results")
            r = conn.getresponse()
            body = r.read()
            dt = time.perf_counter() - t0
            if r.status != 200 or b'"matches"' not in body:
                errors.append(f"status {r.status}")
            else:
                out.append(dt)
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        if think:
            time.sleep(think)
    conn.close()


def _stream_client(port: int, stop_at: float, frames: list, errors: list) -> None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/stream.mjpg")
        r = conn.getresponse()
        if r.status != 200:
            errors.append(f"stream status {r.status}")
            return
        n = 0
        while time.time() < stop_at:
            chunk = r.read1(65536) if hasattr(r, "read1") else r.read(65536)
            if not chunk:
                errors.append("stream ended early")
                break
            n += chunk.count(b"--frame\r\n")
        frames.append(n)
        conn.close()
    except (OSError, http.client.HTTPException) as exc:
        errors.append(f"stream {type(exc).__name__}: {exc}")


def _worker(port: int, stop_at: float, n_results: int, n_streams: int, think: float, queue) -> None:
    lat: list[float] = []
    errors: list[str] = []
    frames: list[int] = []
    threads = [
        threading.Thread(target=_results_client, args=(port, stop_at, think, lat, errors))
        for _ in range(n_results)
    ]
    threads += [
        threading.Thread(target=_stream_client, args=(port, stop_at, frames, errors))
        for _ in range(n_streams)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put({"latencies": lat, "errors": errors, "frames": frames})


def run_load(
    port: int, seconds: float, results_clients: int, stream_clients: int, think: float, processes: int = 5
) -> dict:
    """Runs the clients for ``seconds``; returns latencies (s), errors and MJPEG frames per viewer."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    stop_at = time.time() + seconds
    per = [
        results_clients // processes + (1 if i < results_clients % processes else 0) for i in range(processes)
    ]
    procs = [ctx.Process(target=_worker, args=(port, stop_at, n, 0, think, queue)) for n in per if n]
    procs.append(ctx.Process(target=_worker, args=(port, stop_at, 0, stream_clients, think, queue)))
    for p in procs:
        p.start()
    parts = [queue.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(30)
    lat = [x for p in parts for x in p["latencies"]]
    return {
        "latencies": lat,
        "errors": [e for p in parts for e in p["errors"]],
        "frames": [f for p in parts for f in p["frames"]],
    }


def rate(port: int, seconds: float) -> float:
    """Inferences per second over ``seconds``, from the daemon's own counter."""
    a, t0 = metric(port, "pi_search_inferences_total"), time.monotonic()
    time.sleep(seconds)
    return (metric(port, "pi_search_inferences_total") - a) / (time.monotonic() - t0)


def bench(
    seconds: float,
    results_clients: int,
    stream_clients: int,
    think: float,
    fps: float,
    state: Path,
    processes: int,
    warmup: float = 10.0,
) -> dict:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_daemon(port, state, fps, Path(tmp) / "daemon.log")
        try:
            time.sleep(3)  # first frames
            rss_cold = rss_bytes(proc.pid)
            if warmup:  # first use of the server threads: their stacks and buffers become resident once
                run_load(port, warmup, results_clients, stream_clients, think, processes)
                time.sleep(5)
            rss_before = rss_bytes(proc.pid)
            rate_before = rate(port, 10)
            inf0, t0 = metric(port, "pi_search_inferences_total"), time.monotonic()
            load = run_load(port, seconds, results_clients, stream_clients, think, processes)
            rate_during = (metric(port, "pi_search_inferences_total") - inf0) / (time.monotonic() - t0)
            time.sleep(5)  # connections closed, threads idle
            rss_after = rss_bytes(proc.pid)
            rate_after = rate(port, 5)
            healthy = json.loads(
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10).read()
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    lat = np.asarray(load["latencies"]) * 1000.0
    return {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "setup": {
            "seconds": seconds,
            "results_clients": results_clients,
            "stream_clients": stream_clients,
            "think_s": think,
            "camera_fps": fps,
            "client_processes": processes + 1,
            "warmup_s": warmup,
        },
        "results_requests": int(lat.size),
        "results_rps": round(lat.size / seconds, 1),
        "results_ms": {
            "p50": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
            "p90": round(float(np.percentile(lat, 90)), 2) if lat.size else None,
            "p99": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
            "max": round(float(lat.max()), 2) if lat.size else None,
        },
        "errors": len(load["errors"]),
        "error_samples": sorted(set(load["errors"]))[:5],
        "stream_viewers_done": len(load["frames"]),
        "stream_frames_per_viewer": {
            "min": min(load["frames"], default=0),
            "max": max(load["frames"], default=0),
        },
        "rss_mb": {
            "cold": round(rss_cold / 1e6, 1),
            "before": round(rss_before / 1e6, 1),
            "after": round(rss_after / 1e6, 1),
            "change_pct": round(100.0 * (rss_after - rss_before) / rss_before, 1),
        },
        "inference_per_s": {
            "before": round(rate_before, 2),
            "during": round(rate_during, 2),
            "after": round(rate_after, 2),
        },
        "healthy_after": bool(healthy.get("ok")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--results-clients", type=int, default=50)
    ap.add_argument("--stream-clients", type=int, default=10)
    ap.add_argument(
        "--think", type=float, default=0.1, help="Pause of each /api/results client between polls."
    )
    ap.add_argument("--fps", type=float, default=5.0, help="Replay rate of the demo camera.")
    ap.add_argument("--processes", type=int, default=5, help="Processes the /api/results clients run in.")
    ap.add_argument("--warmup", type=float, default=10.0, help="Seconds of the same load before 'before'.")
    ap.add_argument("--state-dir", type=Path, default=Path(tempfile.gettempdir()) / "pi-search-bench-load")
    ap.add_argument("--json", type=Path, help="Also write the JSON here.")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = bench(
        args.seconds,
        args.results_clients,
        args.stream_clients,
        args.think,
        args.fps,
        args.state_dir,
        args.processes,
        args.warmup,
    )
    r = res["results_ms"]
    rows = [
        (
            "clients",
            f"{args.results_clients} x /api/results (pause {args.think} s), "
            f"{args.stream_clients} x /stream.mjpg, {args.seconds:.0f} s",
        ),
        ("/api/results", f"{res['results_requests']} requests, {res['results_rps']}/s"),
        ("latency ms", f"p50 {r['p50']}  p90 {r['p90']}  p99 {r['p99']}  max {r['max']}"),
        ("errors", str(res["errors"])),
        (
            "MJPEG frames/viewer",
            f"{res['stream_frames_per_viewer']['min']}..{res['stream_frames_per_viewer']['max']}",
        ),
        (
            "RSS MB",
            f"{res['rss_mb']['cold']} cold, {res['rss_mb']['before']} after warm-up, "
            f"{res['rss_mb']['after']} after the run "
            f"({res['rss_mb']['change_pct']:+.1f}%)",
        ),
        (
            "inferences/s",
            f"{res['inference_per_s']['before']} alone, {res['inference_per_s']['during']} under "
            f"load, {res['inference_per_s']['after']} after",
        ),
    ]
    for k, v in rows:
        print(f"{k:<20} {v}")
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
