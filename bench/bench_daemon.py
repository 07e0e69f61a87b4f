"""Daemon benchmark: frame-to-result latency, stage shares, gate, flicker, CPU, RSS, MJPEG viewers' cost."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

log = logging.getLogger("bench_daemon")
ROOT = Path(__file__).resolve().parent.parent
STAGES = ("gate", "preprocess", "extract", "search", "encode")


def pct(values, q):
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


# ---------------------------------------------------------------- data
def demo_setup(state: Path, extractor):
    """The shipped demo catalog's bundle and its replayed camera frames (real photos)."""
    from pi_search.ops.demo import demo_bundle, demo_data

    return demo_bundle(extractor, state, progress=False), demo_data() / "frames"


def noisy_copies(src: Path, out: Path, n: int = 8, sigma: float = 3.0, seed: int = 0) -> Path:
    """``n`` copies of one frame with sensor-like noise: a still scene as a camera delivers it."""
    from pi_search import images

    rng = np.random.default_rng(seed)
    rgb = images.read(src)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        noisy = np.clip(rgb.astype(np.float32) + rng.normal(0, sigma, rgb.shape), 0, 255).astype(np.uint8)
        (out / f"still_{i:02d}.jpg").write_bytes(images.encode_jpeg(noisy, 92))
    return out


def hand_held(rgb: np.ndarray, n: int, rng, shift: float = 0.03, sigma: float = 4.0) -> list[np.ndarray]:
    """``n`` frames of one still object held by hand: a few pixels of jitter, sensor noise."""
    h, w = rgb.shape[:2]
    dy, dx = int(h * shift), int(w * shift)
    out = []
    for _ in range(n):
        y, x = rng.integers(0, 2 * dy + 1), rng.integers(0, 2 * dx + 1)
        crop = rgb[y:h - 2 * dy + y, x:w - 2 * dx + x].astype(np.float32)
        out.append(np.clip(crop + rng.normal(0, sigma, crop.shape), 0, 255).astype(np.uint8))
    return out


# ---------------------------------------------------------------- in-process
def run_pipeline(extractor, bundle, frames_dir: Path, seconds: float, fps: float, overrides: dict) -> dict:
    """The worker on a folder source for ``seconds``; every published result is recorded."""
    from pi_search.camera import open_source
    from pi_search.config import load_config
    from pi_search.pipeline.worker import Worker

    config = load_config(None, {"camera.fps": fps, **overrides})
    svc = Worker(lambda: open_source(f"folder:{frames_dir}", fps=fps), extractor, bundle, config)
    results = []
    orig = svc.process

    def recording(frame, capture_s=0.0):
        r = orig(frame, capture_s)
        if r is not None:
            results.append(r)
        return r

    svc.process = recording
    svc.start()
    deadline = time.monotonic() + 30
    while svc.stats.frames < 3 and time.monotonic() < deadline:  # warm-up: first frames, caches
        time.sleep(0.05)
    results.clear()
    f0, i0, s0 = svc.stats.frames, svc.stats.inferences, svc.stats.skipped
    c0, t0 = time.process_time(), time.monotonic()
    time.sleep(seconds)
    c1, t1 = time.process_time(), time.monotonic()
    f1, i1, s1 = svc.stats.frames, svc.stats.inferences, svc.stats.skipped
    svc.stop()
    wall = t1 - t0
    lat = [r.latency_ms for r in results]
    means = {s: statistics.fmean(r.timings_ms[s] for r in results) if results else 0.0 for s in STAGES}
    total = sum(means.values()) or 1.0
    return {
        "seconds": round(wall, 2), "fps_asked": fps,
        "frames_per_s": round((f1 - f0) / wall, 2), "inferences_per_s": round((i1 - i0) / wall, 2),
        "skipped_fraction": round((s1 - s0) / max(f1 - f0, 1), 3),
        "latency_ms": {"p50": round(pct(lat, 50), 2), "p95": round(pct(lat, 95), 2), "n": len(lat)},
        "stage_ms": {s: round(v, 3) for s, v in means.items()},
        "stage_share": {s: round(v / total, 3) for s, v in means.items()},
        "cpu_cores": round((c1 - c0) / wall, 3),
    }


def flicker(extractor, bundle, scenes: dict[str, np.ndarray], settings, n: int = 60, seed: int = 0) -> dict:
    """How often the published top-1 changes while one object is held still (lower is steadier)."""
    from pi_search.config import load_config
    from pi_search.pipeline.worker import Worker

    rng = np.random.default_rng(seed)
    clips = {name: hand_held(rgb, n, rng) for name, rgb in scenes.items()}
    out = {}
    for alpha, agree in settings:
        config = load_config(None, {"gate.enabled": False, "smoothing.alpha": alpha,
                                    "smoothing.agree": agree})
        per_scene = {}
        for name, clip in clips.items():
            svc = Worker(None, extractor, bundle, config)
            tops, orders = [], []
            for i, rgb in enumerate(clip):
                from pi_search.camera import Frame

                r = svc.process(Frame(rgb, time.time(), i))
                tops.append(r.matches[0].id)
                orders.append(tuple(m.id for m in r.matches[:3]))
            changes = sum(a != b for a, b in zip(tops, tops[1:], strict=False))
            order_changes = sum(a != b for a, b in zip(orders, orders[1:], strict=False))
            per_scene[name] = {"top1_changes": changes, "top3_order_changes": order_changes,
                               "top1": max(set(tops), key=tops.count)}
        out[f"alpha {alpha}, agree {agree}"] = {
            "top1_changes_per_100_frames": round(100 * sum(v["top1_changes"] for v in per_scene.values())
                                                 / (len(clips) * (n - 1)), 2),
            "top3_order_changes_per_100_frames": round(
                100 * sum(v["top3_order_changes"] for v in per_scene.values()) / (len(clips) * (n - 1)), 2),
            "scenes": per_scene}
    return out


# ---------------------------------------------------------------- the real process
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """`pi-search serve` in a child process, with CPU and RSS read from /proc."""

    def __init__(self, frames: Path, bundle: Path, fps: float, threads: int):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        exe = Path(sys.executable).with_name("pi-search")
        cmd = [str(exe), "serve", "--source", f"folder:{frames}", "--bundle", str(bundle),
               "--port", str(self.port), "--fps", str(fps), "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pi-search serve exited: {self.proc.stderr.read().decode()[-500:]}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if r.status == 200 and self.metric("pi_search_inferences_total") >= 1:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("pi-search serve did not become healthy in 60 s")

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
            m = re.search(rf"^{name} (\S+)$", r.read().decode(), re.M)
        return float(m.group(1)) if m else 0.0

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{self.proc.pid}/status").read_text())
        return int(m.group(1)) / 1024

    def window(self, seconds: float) -> dict:
        c0, i0, f0, t0 = self.cpu_seconds(), self.metric("pi_search_inferences_total"), \
            self.metric("pi_search_frames_total"), time.monotonic()
        time.sleep(seconds)
        c1, i1, f1, t1 = self.cpu_seconds(), self.metric("pi_search_inferences_total"), \
            self.metric("pi_search_frames_total"), time.monotonic()
        wall = t1 - t0
        return {"cpu_percent_of_one_core": round(100 * (c1 - c0) / wall, 1),
                "inferences_per_s": round((i1 - i0) / wall, 2), "frames_per_s": round((f1 - f0) / wall, 2),
                "rss_mb": round(self.rss_mb(), 1)}

    def close(self) -> float:
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return round(time.monotonic() - t0, 2)


class Viewers:
    """``n`` MJPEG clients on raw sockets that read and discard the stream (as a browser would)."""

    def __init__(self, url: str, n: int):
        self.stop = threading.Event()
        self.bytes = [0] * n
        host, port = url.removeprefix("http://").split(":")
        self.threads = [threading.Thread(target=self._read, args=(i, host, int(port)), daemon=True)
                        for i in range(n)]
        for t in self.threads:
            t.start()

    def _read(self, i: int, host: str, port: int) -> None:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(f"GET /stream.mjpg HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            buf = bytearray(1 << 16)
            while not self.stop.is_set():
                try:
                    got = s.recv_into(buf)
                except OSError:
                    return
                if not got:
                    return
                self.bytes[i] += got

    def close(self) -> int:
        self.stop.set()
        for t in self.threads:
            t.join(12)
        return sum(self.bytes)


# ---------------------------------------------------------------- report
def learn_compare(extractor, frames: Path, tmp: Path, seconds: float, rounds: int) -> dict:
    """The live loop (changing scene, 15 fps camera) on the demo catalog built with and without its learned
    projection (``index build`` and ``index build --no-learn``), run alternately ``rounds`` times each in
    this one process: frame-to-result p50 of each run, the medians of both, their ratio."""
    from pi_search.bundle.reader import Bundle
    from pi_search.embed.build import build_bundle
    from pi_search.ops.demo import demo_data

    bundles = {}
    for name, learn in (("learned", True), ("no-learn", False)):
        out = tmp / f"compare-{name}"
        build_bundle(demo_data(), out, extractor, progress=False, learn=learn)
        bundles[name] = Bundle.open(out, extractor=extractor)
    dims = int(bundles["learned"].manifest.stored_dim)
    runs: dict[str, list] = {name: [] for name in bundles}
    try:
        for i in range(rounds):
            for name in (("no-learn", "learned") if i % 2 == 0 else ("learned", "no-learn")):
                r = run_pipeline(extractor, bundles[name], frames, seconds, 15.0, {})
                runs[name].append(r)
                print(f"  {name:9} p50 {r['latency_ms']['p50']:.2f} ms, p95 {r['latency_ms']['p95']:.2f} ms, "
                      f"search {r['stage_ms']['search']:.3f} ms", file=sys.stderr, flush=True)
    finally:
        for b in bundles.values():
            b.close()
    p50 = {name: round(statistics.median(r["latency_ms"]["p50"] for r in rs), 2) for name, rs in runs.items()}
    search = {name: round(statistics.median(r["stage_ms"]["search"] for r in rs), 3)
              for name, rs in runs.items()}
    return {"rounds": rounds, "seconds": seconds, "fps": 15.0, "runs": runs, "p50_ms": p50,
            "search_ms": search, "learned_dims": dims,
            "ratio": round(p50["learned"] / p50["no-learn"], 3)}


def table(report: dict) -> str:
    lines = []
    p = report["pipeline"]
    lines.append("frame to published result (in-process worker, folder source of the demo frames, "
                 f"{report['threads']} interpreter thread(s))")
    lines.append(f"{'run':<26}{'frames/s':>9}{'infer/s':>9}{'p50 ms':>8}{'p95 ms':>8}{'cores':>7}  "
                 "stage share " + "/".join(STAGES))
    for name, r in p.items():
        share = " ".join(f"{100 * r['stage_share'][s]:.0f}%" for s in STAGES)
        lines.append(f"{name:<26}{r['frames_per_s']:>9.1f}{r['inferences_per_s']:>9.1f}"
                     f"{r['latency_ms']['p50']:>8.1f}{r['latency_ms']['p95']:>8.1f}"
                     f"{r['cpu_cores']:>7.2f}  {share}")
    r = next(iter(p.values()))
    lines.append("mean stage ms: " + ", ".join(f"{s} {r['stage_ms'][s]:.2f}" for s in STAGES))
    lines.append("")
    lines.append("flicker: top-1 changes per 100 frames of a hand-held still object "
                 "(jitter + noise, gate off)")
    for alpha, f in report["flicker"].items():
        lines.append(f"  {alpha:<20} top-1 {f['top1_changes_per_100_frames']:>6.2f}   "
                     f"top-3 order {f['top3_order_changes_per_100_frames']:>6.2f}")
    lines.append("")
    lines.append(f"pi-search serve process (camera {report['process']['fps']} fps)")
    lines.append(f"{'scene':<26}{'CPU % core':>11}{'infer/s':>9}{'frames/s':>9}{'RSS MB':>8}")
    for name in ("still", "changing"):
        r = report["process"][name]
        lines.append(f"{name:<26}{r['cpu_percent_of_one_core']:>11.1f}{r['inferences_per_s']:>9.1f}"
                     f"{r['frames_per_s']:>9.1f}{r['rss_mb']:>8.1f}")
    lines.append(f"exit after SIGTERM: {report['process']['exit_seconds']} s")
    lines.append("")
    v = report["viewers"]
    lines.append(f"MJPEG viewers vs inference rate (changing scene, camera {v['fps']} fps, "
                 "unthrottled model)")
    base = v["baseline_inferences_per_s"]
    for n, r in v["runs"].items():
        change = 100 * (r["inferences_per_s"] / base - 1) if base else float("nan")
        rate = r["inferences_per_s"]
        per = 10 * r["cpu_percent_of_one_core"] / rate if rate else float("nan")
        lines.append(f"  {n:>7} viewers: {r['inferences_per_s']:>6.1f} inferences/s ({change:+.1f}% vs 0), "
                     f"CPU {r['cpu_percent_of_one_core']:.0f}% = {per:.1f} ms per inferred frame, "
                     f"{r['mb_per_s']:.1f} MB/s sent")
    lines.append("")
    g = report["goals"]
    lines.append("goals: " + "; ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in g.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=8.0, help="Length of each measured window.")
    ap.add_argument("--threads", type=int, default=1, help="Interpreter threads.")
    ap.add_argument("--json", type=Path, help="Also write the JSON report to this file.")
    ap.add_argument("--state", type=Path, help="Where the demo bundle is cached (default: a temp dir).")
    ap.add_argument("--table-from", type=Path, help="Only print the table of a saved JSON report.")
    ap.add_argument("--learn-compare", type=int, metavar="ROUNDS", default=0,
                    help="Only compare the live loop's latency with and without the learned projection: the "
                    "demo catalog built both ways, ROUNDS runs of each, alternately.")
    args = ap.parse_args(argv)
    if args.table_from:
        print(table(json.loads(args.table_from.read_text())))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from pi_search import images
    from pi_search.bundle.reader import Bundle
    from pi_search.model.extractor import Extractor

    tmp = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    extractor = Extractor(num_threads=args.threads)
    if args.learn_compare:
        from pi_search.ops.demo import demo_data

        report = learn_compare(extractor, demo_data() / "frames", tmp, args.seconds, args.learn_compare)
        print(f"frame to result p50: learned {report['p50_ms']['learned']} ms, no-learn "
              f"{report['p50_ms']['no-learn']} ms (x{report['ratio']}); search {report['search_ms']}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        return 0
    bundle_dir, frames = demo_setup(args.state or tmp / "state", extractor)
    bundle = Bundle.open(bundle_dir, extractor=extractor)
    still = noisy_copies(sorted(frames.glob("*.jpg"))[0], tmp / "still")

    report = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "python": platform.python_version()},
              "model": extractor.name, "threads": args.threads, "catalog_items": len(bundle)}
    print("pipeline...", file=sys.stderr)
    report["pipeline"] = {
        "changing, 15 fps camera": run_pipeline(extractor, bundle, frames, args.seconds, 15.0, {}),
        "changing, unthrottled": run_pipeline(extractor, bundle, frames, args.seconds, 120.0,
                                              {"gate.enabled": False}),
        "still + noise, 15 fps": run_pipeline(extractor, bundle, still, args.seconds, 15.0, {}),
    }
    print("flicker...", file=sys.stderr)
    shots = sorted(p for p in frames.iterdir() if p.suffix == ".jpg")
    scenes = {p.stem: images.read(p) for p in shots[:: max(1, len(shots) // 4)]}
    from interior_photos import get_all_photos

    for p in sorted(get_all_photos())[:3]:  # rooms: not in the catalog, so the top matches are near-ties
        scenes[Path(p).stem] = images.read(p)
    report["flicker"] = flicker(extractor, bundle, scenes,
                                ((1.0, 1), (0.5, 1), (0.3, 1), (1.0, 2), (0.5, 2), (0.5, 3), (0.3, 2)))
    bundle.close()

    print("process...", file=sys.stderr)
    fps = 15.0
    srv = Served(still, bundle_dir, fps, args.threads)
    proc = {"fps": fps, "still": srv.window(args.seconds)}
    srv.close()
    srv = Served(frames, bundle_dir, fps, args.threads)
    proc["changing"] = srv.window(args.seconds)
    proc["exit_seconds"] = srv.close()
    report["process"] = proc

    print("viewers...", file=sys.stderr)
    vfps = 120.0
    srv = Served(frames, bundle_dir, vfps, args.threads)
    runs = {}
    for label in ("0", "1", "10", "20", "0 again"):  # the second 0 shows the run-to-run noise
        n = int(label.split()[0])
        viewers = Viewers(srv.url, n) if n else None
        time.sleep(1.0)
        r = srv.window(args.seconds)
        sent = viewers.close() if viewers else 0
        r["mb_per_s"] = round(sent / 1e6 / args.seconds, 2)
        runs[label] = r
    srv.close()
    base = (runs["0"]["inferences_per_s"] + runs["0 again"]["inferences_per_s"]) / 2
    report["viewers"] = {"fps": vfps, "runs": runs, "baseline_inferences_per_s": round(base, 2)}

    report["goals"] = {
        "p50 < 30 ms": report["pipeline"]["changing, 15 fps camera"]["latency_ms"]["p50"] < 30,
        "still < 10% core": proc["still"]["cpu_percent_of_one_core"] < 10,
        "20 viewers < 10% slower": runs["20"]["inferences_per_s"] > 0.9 * base,
        "exit < 5 s": proc["exit_seconds"] < 5,
    }
    print(table(report))
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
