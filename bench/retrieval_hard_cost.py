"""What the settled look costs: the live loop with and without it, side by side, and the settle stage alone.

Usage::

    .venv/bin/python bench/retrieval_hard_cost.py [--rounds 3] [--seconds 6] [--json FILE]

1. The worker on the demo's replayed camera (15 fps) and on a still scene with sensor noise, through
   ``bench/bench_daemon.py``'s ``run_pipeline``, with the settled look off (as before) and on, the two
   configurations alternating ``--rounds`` times in one run: frame-to-result p50/p95 of inferred frames and
   the ratio of the p50s. 2. The settled look itself (``Worker.settle``: its windows' model passes and
   searches) on hard benchmark frames, timed in turn with one kept query pass on the same frames.
Prints figures; asserts nothing. On a busy machine compare the ratios, not the milliseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from bench_daemon import demo_setup, noisy_copies, run_pipeline  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--hard", type=Path, default=Path("var/benchmark-hard"))
    ap.add_argument("--frames", type=int, default=60, help="hard benchmark frames for the settle timing")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from pi_search import images
    from pi_search.bundle.reader import Bundle
    from pi_search.model.extractor import Extractor
    from pi_search.model.framing import embed_query_image, window_input
    from pi_search.model.settle import SETTLE_DEPTH, fuse, settle_windows
    from pi_search.pipeline.worker import Worker

    tmp = Path(tempfile.mkdtemp(prefix="bench-settle-"))
    extractor = Extractor(num_threads=1)
    bundle_dir, frames = demo_setup(tmp / "state", extractor)
    bundle = Bundle.open(bundle_dir, extractor=extractor)
    still = noisy_copies(sorted(frames.glob("*.jpg"))[0], tmp / "still")

    settle_ms: list[float] = []
    orig_settle = Worker.settle

    def timed_settle(self, frame):
        r = orig_settle(self, frame)
        if r is not None:
            settle_ms.append(r.settle_ms)
        return r

    Worker.settle = timed_settle
    runs: dict = {}
    for _ in range(args.rounds):
        for scene, folder in (("changing, 15 fps", frames), ("still + noise, 15 fps", still)):
            for on in (False, True):
                Worker.settle_enabled = on
                n0 = len(settle_ms)
                r = run_pipeline(extractor, bundle, folder, args.seconds, 15.0, {})
                r["settles"] = len(settle_ms) - n0
                runs.setdefault(f"{scene}, settled look {'on' if on else 'off'}", []).append(r)
    Worker.settle = orig_settle
    Worker.settle_enabled = True
    live = {}
    for name, rs in runs.items():
        live[name] = {"p50_ms": round(statistics.median(r["latency_ms"]["p50"] for r in rs), 2),
                      "p95_ms": round(statistics.median(r["latency_ms"]["p95"] for r in rs), 2),
                      "inferences_per_s": round(statistics.fmean(r["inferences_per_s"] for r in rs), 2),
                      "cpu_cores": round(statistics.fmean(r["cpu_cores"] for r in rs), 3),
                      "settles": sum(r["settles"] for r in rs)}
    for scene in ("changing, 15 fps", "still + noise, 15 fps"):
        off, on = live[f"{scene}, settled look off"], live[f"{scene}, settled look on"]
        live[f"{scene}: p50 ratio on/off"] = round(on["p50_ms"] / max(off["p50_ms"], 1e-9), 3)

    # One inferred frame through Worker.process (gate off): the kept framing alone, and with a window from
    # the settled look (two model passes), in turn on the same hard frames.
    from pi_search.camera import Frame
    from pi_search.config import load_config

    svc = Worker(None, extractor, bundle, load_config(None, {"gate.enabled": False}), source_name="bench")
    paths = sorted(args.hard.glob("queries/*_f0.jpg"))[: args.frames]
    one, two = [], []
    for n, p in enumerate(paths):
        rgb = images.read(p)
        # The same frame twice: the second is the same item for the smoother, so the window is used.
        for region, out in ((None, one), ((0.55, 0.4, 1.0, 1.0), two)):
            svc._region = region
            t0 = time.perf_counter()
            r = svc.process(Frame(rgb=rgb, index=n, t=time.time()))
            out.append(time.perf_counter() - t0)
            assert (r.guide["region"] is None) == (region is None), "the window was not used"
    frame = {"frames": len(paths), "kept_only_ms_p50": round(1000 * float(np.median(one)), 2),
             "with_window_ms_p50": round(1000 * float(np.median(two)), 2)}
    frame["ratio"] = round(frame["with_window_ms_p50"] / frame["kept_only_ms_p50"], 3)

    # The settle stage alone on hard frames, in turn with one kept pass.
    paths = sorted(args.hard.glob("queries/*_f0.jpg"))[: args.frames]
    kept_s, settle_s = [], []
    n_windows = 0
    for p in paths:
        rgb = images.read(p)
        t0 = time.perf_counter()
        vec = embed_query_image(extractor, rgb)
        bundle.search(vec, 5)
        kept_s.append(time.perf_counter() - t0)
        h, w = rgb.shape[:2]
        t0 = time.perf_counter()
        wins = []
        for box in settle_windows(w, h):
            v = extractor.embed(window_input(rgb, box, extractor.size))
            wins.append((box, bundle.search(v, SETTLE_DEPTH)))
        fuse(bundle.search(vec, SETTLE_DEPTH), wins, 5)  # as Worker.settle
        settle_s.append(time.perf_counter() - t0)
        n_windows = len(wins)
    bundle.close()
    stage = {"frames": len(paths), "windows": n_windows,
             "kept_pass_ms_p50": round(1000 * float(np.median(kept_s)), 2) if kept_s else None,
             "settle_ms_p50": round(1000 * float(np.median(settle_s)), 2) if settle_s else None,
             "settle_ms_p95": round(1000 * float(np.percentile(settle_s, 95)), 2) if settle_s else None,
             "in_service_ms_p50": round(float(np.median(settle_ms)), 2) if settle_ms else None}
    if kept_s:
        stage["settle_over_kept_pass"] = round(stage["settle_ms_p50"] / stage["kept_pass_ms_p50"], 2)
    report = {"live": live, "runs": runs, "one_frame": frame, "settle_stage": stage}
    for name, v in live.items():
        print(f"{name:48} {v}")
    print("one inferred frame (Worker.process):", frame)
    print("settle stage:", stage)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
