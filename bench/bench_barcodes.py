"""Barcodes: decode rate by condition and code size, cost per frame, and the live loop with and without.

Usage::

    .venv/bin/python bench/bench_barcodes.py [--trials 20] [--rounds 3] [--seconds 6] [--out FILE]

1. Decode rate: EAN-13 codes drawn by zxing-cpp's writer (random valid numbers) printed on real photos
   (tests/corpus.py: packaged wallpapers as 640x480 camera frames and as 12 MP phone photos), at 10-45% of
   the frame's width, in each condition (plain, tilted 15 degrees, dim, blurred, JPEG quality 70), at
   random places; camera frames are read as the live loop reads them (``read_codes(fast=True)`` on the
   RGB frame), phone photos as uploads and ``pi-search query`` (``codes_in_photo`` on the JPEG bytes).
2. Cost: ms per 640x480 frame (with and without a code) and per 12 MP photo (JPEG decode included).
3. The live loop with the barcode reader off (before) and on, alternating ``--rounds`` times in one run
   (``bench/bench_daemon.py``'s ``run_pipeline``, the demo's camera frames at 15 fps and a still scene):
   frame-to-result p50/p95 of inferred frames and their ratio.
Prints figures; asserts nothing. On a busy machine compare the ratios, not the milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

WIDTHS = (0.10, 0.20, 0.30, 0.45)
CONDITIONS = ("plain", "tilted 15 degrees", "dim (30% light)", "out of focus (sigma 1 px at 640 wide)",
              "JPEG quality 70")


def _ean(rng) -> str:
    body = "".join(str(d) for d in rng.integers(0, 10, 12))
    total = sum(int(c) * (3 if i % 2 == 0 else 1) for i, c in enumerate(reversed(body)))
    return body + str((10 - total % 10) % 10)


def _scene(corpus, photo, code_text, width, condition, rng):
    """``photo`` (RGB) with the code at a random place in ``condition``; returns (RGB, JPEG quality)."""
    import cv2

    code = corpus.barcode(code_text)
    h, w = photo.shape[:2]
    margin = width / 2 + 0.03
    at = (rng.uniform(margin, 1 - margin), rng.uniform(0.25, 0.75))
    angle = 15.0 * rng.choice([-1, 1]) if condition.startswith("tilted") else float(rng.uniform(-3, 3))
    img = corpus.with_code(photo, code, width, at=at, angle=angle)
    if condition.startswith("dim"):
        img = (img.astype(np.float32) * 0.3 + rng.normal(0, 2, img.shape)).clip(0, 255).astype(np.uint8)
    elif condition.startswith("blurred"):
        img = cv2.GaussianBlur(img, (0, 0), w / 640)   # the same defocus whatever the picture's size
    return img, 70 if condition.startswith("JPEG") else 92


def decode_rates(trials: int) -> tuple[list[dict], dict]:
    import corpus
    import cv2

    from pi_search.barcodes.decode import read_codes
    from pi_search.barcodes.pictures import codes_in_photo

    rng = np.random.default_rng(0)
    walls = corpus.wallpapers()[:4]
    phones = [corpus.handheld(corpus.full_size(p), seed=n) for n, p in enumerate(walls[:2])]
    frames = [cv2.resize(p, (640, 480), interpolation=cv2.INTER_AREA) for p in phones] + [
        cv2.resize(corpus.cover(corpus.full_size(p), 1600, 1200), (640, 480), interpolation=cv2.INTER_AREA)
        for p in walls[2:]]
    rows = []
    cost = {"frame_no_code_ms": [], "frame_with_code_ms": [], "phone_photo_ms": []}
    for where, pictures in (("camera frame 640x480", frames), ("phone photo 4032x3024", phones)):
        for condition in CONDITIONS:
            for width in WIDTHS:
                hits = 0
                n = trials if where.startswith("camera") else max(4, trials // 4)
                for t in range(n):
                    text = _ean(rng)
                    img, q = _scene(corpus, pictures[t % len(pictures)], text, width, condition, rng)
                    data = corpus.jpeg_bytes(img, q)
                    t0 = time.perf_counter()
                    if where.startswith("camera"):
                        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                                           cv2.COLOR_BGR2RGB)
                        t0 = time.perf_counter()
                        found = read_codes(rgb, fast=True)
                        cost["frame_with_code_ms"].append((time.perf_counter() - t0) * 1000)
                    else:
                        found = codes_in_photo(data)
                        cost["phone_photo_ms"].append((time.perf_counter() - t0) * 1000)
                    hits += [c.text for c in found] == [text]
                rows.append({"picture": where, "condition": condition, "width": width, "trials": n,
                             "decoded": hits, "rate": round(hits / n, 3)})
                print(f"{where:<22} {condition:<34} {width:>4.0%}: {hits}/{n}", flush=True)
    for f in frames * 10:
        t0 = time.perf_counter()
        read_codes(f, fast=True)
        cost["frame_no_code_ms"].append((time.perf_counter() - t0) * 1000)
    summary = {k: {"p50": round(statistics.median(v), 2), "p95": round(float(np.percentile(v, 95)), 2),
                   "n": len(v)} for k, v in cost.items()}
    return rows, summary


def live_loop(rounds: int, seconds: float) -> dict:
    from bench_daemon import demo_setup, noisy_copies, run_pipeline

    import pi_search.pipeline.codes as codes_mod
    from pi_search.bundle.reader import Bundle
    from pi_search.model.extractor import Extractor

    tmp = Path(tempfile.mkdtemp(prefix="bench-codes-"))
    extractor = Extractor(num_threads=1)
    bundle_dir, frames = demo_setup(tmp / "state", extractor)
    bundle = Bundle.open(bundle_dir, extractor=extractor)
    still = noisy_copies(sorted(frames.glob("*.jpg"))[0], tmp / "still")
    real = codes_mod.available
    runs: dict = {}
    try:
        for _ in range(rounds):
            for scene, folder in (("changing, 15 fps", frames), ("still + noise, 15 fps", still)):
                for on in (False, True):
                    codes_mod.available = real if on else (lambda: False)
                    r = run_pipeline(extractor, bundle, folder, seconds, 15.0, {})
                    runs.setdefault(f"{scene}, barcodes {'on' if on else 'off'}", []).append(r)
    finally:
        codes_mod.available = real
        bundle.close()
    live = {}
    for name, rs in runs.items():
        live[name] = {"p50_ms": round(statistics.median(r["latency_ms"]["p50"] for r in rs), 2),
                      "p95_ms": round(statistics.median(r["latency_ms"]["p95"] for r in rs), 2),
                      "inferences_per_s": round(statistics.fmean(r["inferences_per_s"] for r in rs), 2),
                      "cpu_cores": round(statistics.fmean(r["cpu_cores"] for r in rs), 3)}
    for scene in ("changing, 15 fps", "still + noise, 15 fps"):
        off, on = live[f"{scene}, barcodes off"], live[f"{scene}, barcodes on"]
        live[f"{scene}: p50 ratio on/off"] = round(on["p50_ms"] / max(off["p50_ms"], 1e-9), 3)
    return live


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20, help="codes per cell on camera frames (a quarter on "
                                                           "phone photos)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--no-live", action="store_true", help="skip the live loop runs")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    rows, cost = decode_rates(args.trials)
    print(json.dumps(cost, indent=2))
    live = None if args.no_live else live_loop(args.rounds, args.seconds)
    if live:
        print(json.dumps(live, indent=2))
    import zxingcpp

    result = {"decoder": f"zxing-cpp {getattr(zxingcpp, '__version__', '3.1.1')}", "rates": rows,
              "cost_ms": cost, "live": live, "machine": {"cpu": platform.machine(), "cores": os.cpu_count()}}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
