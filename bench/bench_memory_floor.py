"""The smallest memory each bundle layout starts in: the start check's estimates; the demo bundle measured.

Estimates (pi_search/ops/limits.py over bundle/memory.py's figures): resident memory the daemon needs (what a
MemoryMax= must allow) and address space (what ulimit -v must allow) for the demo bundle, the default layout
at 10k, 100k and 1M items (bench/results/scale*.json) and the ten-million layout (bench/results/big-10m.json).
Measured on the demo bundle: resident memory at rest and after searches, and the smallest ulimit -v the
daemon serves under with the start check set aside (found by bisection). Then a 1 GB Raspberry Pi 3 by the
numbers: what is left for the page cache beside the daemon, and which layouts fit.

    .venv/bin/python bench/bench_memory_floor.py --out bench/results/memory-floor.json
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from support import daemon as daemon_mod  # noqa: E402

from pi_search import images  # noqa: E402
from pi_search.bundle.memory import _READ_INTO_RAM, DAEMON_BYTES, needs  # noqa: E402
from pi_search.ops import limits  # noqa: E402

MB = 1_000_000
DEFAULT_FILES = "annoy pca256w 50t"  # what index build writes for 5,000+ items (f16 re-rank store)
# A daemon whose start check is set aside (DAEMON_ADDRESS_BYTES 0), to find the real floor.
UNCHECKED = ("import sys; from pi_search import limits; limits.DAEMON_ADDRESS_BYTES = 0; "
             "from pi_search.cli import main; sys.argv[0] = 'pi-search'; main()")


def layout_memory(files_mb: dict) -> dict:
    """bundle/memory.py's split of a bundle's files (MB each) into read whole and mapped."""
    in_ram = sum(v for k, v in files_mb.items() if k in _READ_INTO_RAM) * MB
    mapped = sum(v for k, v in files_mb.items() if k not in _READ_INTO_RAM and k != "manifest.json") * MB
    return {"in_ram_bytes": int(in_ram), "mapped_bytes": int(mapped)}


def estimates(demo: Path) -> list[dict]:
    results = ROOT / "bench" / "results"
    rows = [("demo bundle (150 items, exact)", needs(demo, json.loads((demo / "manifest.json").read_text())))]
    for report, n in (("scale", 10_000), ("scale", 100_000), ("scale-1m", 1_000_000)):
        for r in json.loads((results / f"{report}.json").read_text())["rows"]:
            # the same files whatever the search effort (sk, rerank): the 1M run searched harder
            if r.get("n") == n and r.get("name", "").startswith(DEFAULT_FILES) and r.get("files_mb"):
                rows.append((f"default layout, {n:,} items", layout_memory(r["files_mb"])))
                break
    big = json.loads((results / "big-10m.json").read_text())["rows"][0]
    rows.append((f"ten-million layout ({big['memory']['layout']})", big["memory"]))
    unlimited = limits.Room(None, None, "", None, None)
    out = []
    for name, memory in rows:
        verdict = limits.fit(memory, unlimited)
        out.append({"layout": name, "in_ram_mb": round(memory["in_ram_bytes"] / MB, 1),
                    "mapped_mb": round(memory["mapped_bytes"] / MB, 1),
                    "memory_max_mb": round(verdict.resident_need / MB),
                    "ulimit_v_mb": round(verdict.address_need / MB)})
    return out


def status(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "VmHWM", "VmSize", "VmData", "Threads"):
            out[key] = int(val.split()[0]) * (1024 if key != "Threads" else 1)
    return out


def search(port: int, body: bytes) -> int:
    boundary = uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"p.jpg\"\r\n\r\n"
    data = head.encode() + body + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/search", data=data,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status
    except OSError:
        return 0


def serves_under(frames: Path, bundle: Path, limit: int | None, photo: bytes) -> tuple[bool, dict]:
    """Whether the daemon (start check set aside) becomes healthy and answers 4 searches under ulimit -v."""
    import resource

    port = daemon_mod.free_port()
    cmd = [sys.executable, "-c", UNCHECKED, "serve", "--source", f"folder:{frames}", "--bundle", str(bundle),
           "--port", str(port), "--fps", "2"]

    def cap():
        if limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=daemon_mod.env(),
                            preexec_fn=cap)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None and not daemon_mod.healthy(port):
            time.sleep(0.3)
        if proc.poll() is not None or not daemon_mod.healthy(port):
            return False, {}
        ok = all(search(port, photo) == 200 for _ in range(4)) and proc.poll() is None
        return ok, status(proc.pid)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pi-total-mb", type=int, default=906,
                    help="MemTotal of a 1 GB Pi 3 (76 MB kept by the GPU) [906]")
    ap.add_argument("--os-mb", type=int, default=120, help="What Raspberry Pi OS Lite itself uses [120]")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo = daemon_mod.demo_bundle(tmp / "state")
        frames = daemon_mod.scene(tmp / "frames", 1)
        est = estimates(demo)
        from PIL import Image

        photo_img = Image.new("RGB", (4032, 3024), (120, 90, 60))
        import io

        buf = io.BytesIO()
        photo_img.save(buf, "JPEG", quality=90)
        photo = buf.getvalue()
        ok, rest = serves_under(frames, demo, None, photo)
        assert ok, "the daemon did not serve without a limit"
        lo, hi = 200 * MB, 1500 * MB
        while hi - lo > 10 * MB:
            mid = (lo + hi) // 2
            good, _ = serves_under(frames, demo, mid, photo)
            print(f"ulimit -v {mid / MB:.0f} MB: {'serves' if good else 'fails'}", flush=True)
            lo, hi = (lo, mid) if good else (mid, hi)
    measured = {"vm_size_mb": round(rest["VmSize"] / MB), "vm_rss_mb": round(rest["VmRSS"] / MB),
                "vm_hwm_mb": round(rest["VmHWM"] / MB), "vm_data_mb": round(rest["VmData"] / MB),
                "threads": rest["Threads"], "smallest_ulimit_v_mb": round(hi / MB)}
    room = args.pi_total_mb - args.os_mb
    upload_peak = images.MAX_DECODE_BYTES / MB  # decodes running at once share it (images.BUDGET)
    daemon_peak = measured["vm_hwm_mb"] + upload_peak
    pi3 = []
    for row in est:
        resident = row["in_ram_mb"] + daemon_peak  # the bundle's files read whole + the daemon at its peak
        cache = max(0.0, room - resident)
        cached = 1.0 if row["mapped_mb"] == 0 else min(1.0, cache / row["mapped_mb"])
        verdict = ("does not start" if row["memory_max_mb"] > room else
                   "fits: all of it in memory" if cached >= 1.0 else
                   f"starts; {cached:.0%} of its mapped files fit in the page cache, the rest is read "
                   "from the SD card while searching")
        pi3.append({"layout": row["layout"], "resident_mb": round(resident), "page_cache_mb": round(cache),
                    "cached_fraction": round(cached, 3), "verdict": verdict})
    report = {"estimates": est, "measured_demo": measured, "daemon_bytes_mb": DAEMON_BYTES / MB,
              "daemon_address_mb": limits.DAEMON_ADDRESS_BYTES / MB, "upload_peak_mb": upload_peak,
              "pi3": {"mem_total_mb": args.pi_total_mb, "os_mb": args.os_mb, "room_mb": room, "rows": pi3}}
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
