"""Slow clients: how fast a normal client is served while N slow-header connections come from one address.

Starts `pi-search serve` on the demo bundle, opens N connections that send their headers one byte a second
and never finish (reopened at once when the server closes them, as an attacker would), waits for the
server's limits to act, then times a normal client's GET /, /healthz and /api/results (a new connection
each, like a browser's first request). Prints p50/p95/max per path, how many slow connections the server
held and closed, and writes bench/results/slow_clients.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support.daemon import ROOT, Daemon, demo_bundle, scene  # noqa: E402
from support.slow_clients import SlowClients  # noqa: E402

PATHS = ("/", "/healthz", "/api/results")


def timed_get(port: int, path: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        return r.status, (time.perf_counter() - t0) * 1000.0
    except (OSError, http.client.HTTPException):
        return 0, (time.perf_counter() - t0) * 1000.0
    finally:
        conn.close()


def summary(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"n": int(a.size), "p50": round(float(np.percentile(a, 50)), 1),
            "p95": round(float(np.percentile(a, 95)), 1), "max": round(float(a.max()), 1)}


def bench(slow: int, rounds: int, ramp: float, state: Path) -> dict:
    bundle = demo_bundle(state)
    with tempfile.TemporaryDirectory() as tmp, \
            Daemon(scene(Path(tmp) / "frames", 4), bundle, Path(tmp) / "daemon.log") as d:
        baseline = {p: [timed_get(d.port, p)[1] for _ in range(rounds)] for p in PATHS}
        clients = SlowClients(d.port, slow).start()
        try:
            time.sleep(ramp)
            held = d.sockets() - 1
            times: dict[str, list[float]] = {p: [] for p in PATHS}
            failures = 0
            for _ in range(rounds):
                for p in PATHS:
                    status, ms = timed_get(d.port, p)
                    failures += status != 200
                    times[p].append(ms)
                time.sleep(0.2)
            opened, closed = clients.opened, clients.closed_by_server
        finally:
            clients.stop()
        threads = d.threads()
    return {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform(), "load_avg_at_end": os.getloadavg()},
        "setup": {"slow_connections": slow, "source": "127.0.0.1", "byte_every_s": 1.0, "ramp_s": ramp,
                  "rounds": rounds},
        "alone_ms": {p: summary(v) for p, v in baseline.items()},
        "under_attack_ms": {p: summary(v) for p, v in times.items()},
        "failures": failures,
        "slow_connections_held_by_server": held,
        "slow_connections_opened": opened, "slow_connections_closed_by_server": closed,
        "daemon_threads": threads,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--slow", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--ramp", type=float, default=15.0, help="Seconds of attack before measuring.")
    ap.add_argument("--state-dir", type=Path, default=Path(tempfile.gettempdir()) / "pi-search-bench-health")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "slow_clients.json")
    args = ap.parse_args()
    res = bench(args.slow, args.rounds, args.ramp, args.state_dir)
    for p in PATHS:
        a, b = res["alone_ms"][p], res["under_attack_ms"][p]
        print(f"{p:<13} alone p50 {a['p50']} max {a['max']} ms | with {args.slow} slow connections "
              f"p50 {b['p50']} p95 {b['p95']} max {b['max']} ms")
    print(f"failures {res['failures']}; slow connections held by the server "
          f"{res['slow_connections_held_by_server']}; opened {res['slow_connections_opened']}, "
          f"closed by the server {res['slow_connections_closed_by_server']}; "
          f"daemon threads {res['daemon_threads']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
