"""Upload benchmark: the daemon's peak memory (VmHWM) and latency under 16 concurrent 40 MP photo uploads."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np

log = logging.getLogger("bench_uploads")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout; the tests' photo corpus and catalog
BUDGET_MB = 300  # goal: VmHWM within idle + this


def pct(values, q):
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def status_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in kB, from /proc/PID/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def big_photos(out: Path, n: int, progressive: bool = False) -> list[Path]:
    """``n`` 40 MP-class JPEGs (7296x5472, q90): packaged real photos framed like a phone shot, enlarged;
    baseline as cameras write them, or progressive as many web images are."""
    import corpus
    import cv2

    paths = []
    for i, (_, _, name) in enumerate(corpus.PHOTO_ITEMS[:n]):
        rgb = corpus.handheld(corpus.full_size(corpus.wallpaper(name)), size=corpus.BIG_SIZE, seed=i)
        path = out / f"big-{i}.jpg"
        params = [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
        path.write_bytes(cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)[1].tobytes())
        paths.append(path)
        del rgb
    return paths


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def upload(url: str, path: Path, body_cache: dict) -> tuple[int, float, str]:
    """POST one photo to /api/search: (status, seconds, top match id or error)."""
    body, ctype = body_cache[path]
    req = urllib.request.Request(url + "/api/search?k=3", data=body, method="POST",
                                 headers={"Content-Type": ctype})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            out = json.loads(r.read())
            return r.status, time.perf_counter() - t0, out["matches"][0]["id"]
    except urllib.error.HTTPError as exc:
        return exc.code, time.perf_counter() - t0, json.loads(exc.read() or b"{}").get("error", "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--uploads", type=int, default=16, help="concurrent uploads (default 16)")
    ap.add_argument("--photos", type=int, default=4, help="distinct 40 MP photos (default 4)")
    ap.add_argument("--progressive", action="store_true",
                    help="progressive JPEGs (decoding holds all their coefficients: ~110 MB at 40 MP)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON report (default bench/results/uploads.json, uploads-progressive.json)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from conftest import CATALOG_PHOTOS, camera_view, load_photo, write_catalog

    from pi_search import images
    from pi_search.embed.build import build_bundle
    from pi_search.model.extractor import Extractor

    with tempfile.TemporaryDirectory(prefix="bench-uploads-") as tmp:
        tmp = Path(tmp)
        log.info("building the tests' 16-photo bundle and %d 40 MP photos", args.photos)
        bundle = tmp / "bundle"
        build_bundle(write_catalog(tmp / "catalog", CATALOG_PHOTOS), bundle, Extractor(), progress=False)
        photos = big_photos(tmp, args.photos, args.progressive)
        frames = tmp / "frames"
        frames.mkdir()
        frames.joinpath("coffee.jpg").write_bytes(images.encode_jpeg(camera_view(load_photo("skimage:coffee"))))
        bodies = {p: multipart(p.name, p.read_bytes()) for p in photos}
        sizes = [p.stat().st_size / 1e6 for p in photos]

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        exe = Path(sys.executable).with_name("pi-search")
        cmd = [str(exe), "serve", "--source", f"folder:{frames}", "--bundle", str(bundle),
               "--port", str(port), "--fps", "5"]
        with open(tmp / "serve.log", "wb") as serve_log:
            env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the daemon runs this checkout's code
            proc = subprocess.Popen(cmd, stdout=serve_log, stderr=subprocess.STDOUT, env=env)
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    try:
                        with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                            if r.status == 200:
                                break
                    except OSError:
                        time.sleep(0.2)
                else:
                    raise SystemExit("the daemon did not start:\n" + (tmp / "serve.log").read_text())
                time.sleep(2.0)
                idle = status_kb(proc.pid)  # serving the camera, no upload yet
                log.info("idle: VmRSS %.0f MB, VmHWM %.0f MB", idle["VmRSS"] / 1024, idle["VmHWM"] / 1024)
                warm = upload(url, photos[0], bodies)  # one upload alone first
                alone = status_kb(proc.pid)
                results: list = [None] * args.uploads
                start = threading.Barrier(args.uploads)

                def one(i):
                    start.wait()
                    results[i] = upload(url, photos[i % len(photos)], bodies)

                threads = [threading.Thread(target=one, args=(i,)) for i in range(args.uploads)]
                t0 = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                wall = time.perf_counter() - t0
                after = status_kb(proc.pid)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()

    statuses = {}
    for status, _, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    lat = [s * 1000 for status, s, _ in results if status == 200]
    delta_mb = (after["VmHWM"] - idle["VmHWM"]) / 1024
    report = {
        "uploads": args.uploads,
        "photo": {"pixels": "7296x5472", "megapixels": 39.9, "jpeg_mb": [round(s, 2) for s in sizes],
                  "progressive": args.progressive},
        "statuses": statuses,
        "top_matches": sorted({r[2] for r in results}),
        "idle_vmrss_mb": round(idle["VmRSS"] / 1024, 1),
        "idle_vmhwm_mb": round(idle["VmHWM"] / 1024, 1),
        "peak_vmhwm_mb": round(after["VmHWM"] / 1024, 1),
        "peak_over_idle_mb": round(delta_mb, 1),
        "budget_over_idle_mb": BUDGET_MB,
        "within_budget": delta_mb <= BUDGET_MB,
        "latency_ms": {"p50": round(pct(lat, 50), 1), "p95": round(pct(lat, 95), 1),
                       "max": round(max(lat), 1) if lat else None,
                       "mean": round(statistics.fmean(lat), 1) if lat else None},
        "one_upload": {"status": warm[0], "ms": round(warm[1] * 1000, 1),
                       "vmhwm_mb": round(alone["VmHWM"] / 1024, 1)},
        "wall_s": round(wall, 2),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }
    name = "uploads-progressive.json" if args.progressive else "uploads.json"
    args.out = args.out or ROOT / "bench" / "results" / name
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    kind = "progressive" if args.progressive else "baseline"
    mbs = ", ".join(f"{s:.1f}" for s in sizes)
    print(f"{args.uploads} concurrent uploads of 40 MP {kind} JPEGs ({mbs} MB): statuses {statuses}")
    print(f"daemon VmHWM: idle {report['idle_vmhwm_mb']:.0f} MB, peak {report['peak_vmhwm_mb']:.0f} MB "
          f"= idle + {delta_mb:.0f} MB (goal: idle + {BUDGET_MB} MB; after one upload alone: "
          f"{alone['VmHWM'] / 1024:.0f} MB)")
    ms = report["latency_ms"]
    print(f"upload latency: p50 {ms['p50']:.0f} ms, p95 {ms['p95']:.0f} ms "
          f"(all {args.uploads} sent at once, two decoded at a time; wall {wall:.1f} s)")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
