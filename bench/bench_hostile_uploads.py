"""Peak memory of a real daemon under 16 concurrent hostile uploads of each format, and whether it comes back.

For each format a 40 MP photo that compresses to a small file (flat, with a sparse grid of dots) is posted 16
times at once to /api/search; then the largest photo of that format the daemon accepts (just under its
decode bound). The daemon's resident memory is sampled every 10 ms: the peak over idle, what is left 5 s
after the last answer, the answers' statuses and how long the 16 took.

    .venv/bin/python bench/bench_hostile_uploads.py            # table
    .venv/bin/python bench/bench_hostile_uploads.py --json --out bench/results/hostile-uploads.json
    .venv/bin/python bench/bench_hostile_uploads.py --root /path/to/other/checkout   # the same attack on it
"""

from __future__ import annotations

import argparse
import collections
import http.client
import io
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from support import daemon as daemon_mod  # noqa: E402

W40, H40 = 7296, 5472  # 39.9 MP
CONCURRENT = 16


def _dots(shape, dtype, value):
    a = np.zeros(shape, dtype)
    a[::97, ::89] = value
    return a


def _pil(img, fmt, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def _cv(ext, a, *params) -> bytes:
    return cv2.imencode(ext, a, list(params))[1].tobytes()


SMALL_PNG = (cv2.IMWRITE_PNG_COMPRESSION, 9)
# name: maker of a width x height file of that format
FORMATS = {
    "PNG 16-bit RGBA": lambda w, h: _cv(".png", _dots((h, w, 4), np.uint16, 40000), *SMALL_PNG),
    "PNG 16-bit RGB": lambda w, h: _cv(".png", _dots((h, w, 3), np.uint16, 40000), *SMALL_PNG),
    "PNG 16-bit grey": lambda w, h: _pil(Image.fromarray(_dots((h, w), np.uint16, 40000)), "PNG"),
    "PNG 8-bit RGBA": lambda w, h: _pil(Image.new("RGBA", (w, h), (10, 20, 30, 128)), "PNG"),
    "PNG 8-bit RGB": lambda w, h: _pil(Image.new("RGB", (w, h), (10, 20, 30)), "PNG"),
    "PNG 8-bit grey": lambda w, h: _pil(Image.new("L", (w, h), 90), "PNG"),
    "PNG palette": lambda w, h: _pil(Image.new("P", (w, h), 3), "PNG"),
    "WebP": lambda w, h: _cv(".webp", _dots((h, w, 3), np.uint8, 200), cv2.IMWRITE_WEBP_QUALITY, 1),
    "JPEG progressive 4:4:4": lambda w, h: _pil(Image.new("RGB", (w, h), (1, 2, 3)), "JPEG",
                                                 progressive=True, subsampling=0),
    "JPEG baseline": lambda w, h: _pil(Image.new("RGB", (w, h), (1, 2, 3)), "JPEG"),
    "BMP": lambda w, h: _pil(Image.new("RGB", (w, h), (1, 2, 3)), "BMP"),
    "TIFF": lambda w, h: _pil(Image.new("RGB", (w, h), (1, 2, 3)), "TIFF", compression="tiff_deflate"),
    "GIF": lambda w, h: _pil(Image.new("L", (w, h), 9), "GIF"),
}


def largest_accepted(make) -> tuple[int, int]:
    """A 4:3 size of the format ``make`` writes whose decode takes just under this checkout's bound
    (images.MAX_DECODE_BYTES, judged by images.decode_cost), at most 40 MP."""
    sys.path.insert(0, str(HERE.parent))
    from pi_search import images

    w, h, need, _ = images.decode_cost(make(800, 600))
    pixels = min(W40 * H40, images.MAX_DECODE_BYTES / (need / (w * h)) * 0.98)
    w = int((pixels * 4 / 3) ** 0.5)
    return w, int(w * 3 / 4)


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def post(port: int, body: bytes, filename: str, results: list) -> None:
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n")
    data = head.encode() + body + f"\r\n--{boundary}--\r\n".encode()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        conn.request("POST", "/api/search", data,
                     {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        resp = conn.getresponse()
        resp.read()
        results.append(resp.status)
        conn.close()
    except OSError as exc:
        results.append(type(exc).__name__)


def attack(d, body: bytes, filename: str) -> dict:
    pid = d.proc.pid
    idle = rss(pid)
    peak = [idle]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], rss(pid))
            except OSError:
                return
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    results: list = []
    t0 = time.perf_counter()
    threads = [threading.Thread(target=post, args=(d.port, body, filename, results))
               for _ in range(CONCURRENT)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - t0
    time.sleep(5)
    stop.set()
    sampler.join()
    after = rss(pid)
    health = d.get("/healthz")[0]
    return {"file_bytes": len(body), "idle_mb": round(idle / 1e6, 1),
            "peak_over_idle_mb": round((peak[0] - idle) / 1e6, 1),
            "after_5s_over_idle_mb": round((after - idle) / 1e6, 1), "seconds": round(took, 2),
            "statuses": dict(collections.Counter(str(r) for r in results)), "healthz_after": health}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=daemon_mod.ROOT,
                    help="The checkout whose daemon is attacked.")
    ap.add_argument("--formats", nargs="*", default=list(FORMATS), help="Formats to send (default: all).")
    ap.add_argument("--only-40mp", action="store_true", help="Skip the largest accepted photos.")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    daemon_mod.ROOT = args.root.resolve()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = daemon_mod.demo_bundle(tmp / "state")
        frames = daemon_mod.scene(tmp / "frames", 1)
        with daemon_mod.Daemon(frames, bundle, tmp / "daemon.log", fps=2.0) as d:
            time.sleep(3)
            for name in args.formats:
                make = FORMATS[name]
                sizes = [("40 MP", (W40, H40))]
                if not args.only_40mp:
                    sizes.append(("largest accepted", largest_accepted(make)))
                for label, (w, h) in sizes:
                    if label != "40 MP" and (w, h) == (W40, H40):
                        continue  # every photo of this format up to the pixel cap is accepted
                    body = make(w, h)
                    row = {"format": name, "photo": f"{label} ({w}x{h})", **attack(d, body, "attack.img")}
                    rows.append(row)
                    print(f"{name:<24} {row['photo']:<30} {row['file_bytes'] / 1e6:7.2f} MB file  "
                          f"peak +{row['peak_over_idle_mb']:6.1f} MB  "
                          f"after 5 s +{row['after_5s_over_idle_mb']:6.1f} MB  "
                          f"{row['seconds']:6.2f} s  {row['statuses']}", flush=True)
    report = {"concurrent": CONCURRENT, "root": str(args.root), "cpu_count": os.cpu_count(), "rows": rows,
              "worst_peak_over_idle_mb": max(r["peak_over_idle_mb"] for r in rows)}
    print(f"worst peak over idle: {report['worst_peak_over_idle_mb']} MB")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
