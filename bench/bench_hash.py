"""What checking every byte of a bundle costs: SHA-256 throughput of the bundle check, and of a private copy.

Writes a file of random bytes (``--mb``), then times, median of ``--runs``:
- ``warm``: ``verify.sha256_file`` with the file in the page cache (the CPU's share);
- ``cold``: the same after the file's pages were dropped (``posix_fadvise`` DONTNEED), read from the disk;
- ``copy``: ``verify.copy_checked`` (read, hash, write a private copy), warm;
- ``no_sha_instructions``: ``warm`` in a child process with OpenSSL's use of the CPU's SHA instructions
  turned off (``OPENSSL_ia32cap``), as on a CPU without them (a Raspberry Pi 4's Cortex-A72 has none).
Then the seconds each takes for the files of a 1M-item and a 10M-item ivfpq bundle (their sizes from
bench/results/big.json and big-10m.json). Prints a table; ``--out`` writes bench/results/hash.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pi_search.bundle import verify  # noqa: E402

RESULTS = ROOT / "bench" / "results"
NO_SHA_NI = "~0x0:~0x20000000"   # OPENSSL_ia32cap: clear the SHA extensions bit (CPUID.7.EBX bit 29)


def bundle_sizes() -> dict:
    """Bytes of the files of the 1M-item and the 10M-item bundles the scale benchmark wrote."""
    one = json.loads((RESULTS / "big.json").read_text())["rows"][0]
    ten = json.loads((RESULTS / "big-10m.json").read_text())["rows"][-1]
    return {"1M": {"items": one.get("items", 1_000_000), "mb": round(sum(one["files_mb"].values()), 1)},
            "10M": {"items": ten.get("items", 10_000_000), "mb": round(sum(ten["files_mb"].values()), 1)}}


def _drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _time(fn, runs: int) -> float:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def measure(path: Path, runs: int) -> dict:
    mb = path.stat().st_size / 2**20
    want = {"bytes": path.stat().st_size, "sha256": verify.sha256_file(path)}
    warm = _time(lambda: verify.sha256_file(path), runs)

    def cold_run():
        _drop_cache(path)
        t0 = time.perf_counter()
        verify.sha256_file(path)
        return time.perf_counter() - t0

    cold = statistics.median(cold_run() for _ in range(runs))
    dst = path.with_name(path.name + ".copy")

    def copy_run():
        dst.unlink(missing_ok=True)
        verify.copy_checked(path, dst, want)

    copy = _time(copy_run, runs)
    dst.unlink(missing_ok=True)
    child = subprocess.run([sys.executable, __file__, "--warm-only", str(path), "--runs", str(runs)],
                           capture_output=True, text=True, check=True,
                           env={**os.environ, "OPENSSL_ia32cap": NO_SHA_NI})
    soft = float(child.stdout)
    return {name: round(mb / s, 1) for name, s in
            (("warm", warm), ("cold", cold), ("copy", copy), ("no_sha_instructions", soft))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=512, help="size of the test file (MB)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write the test file (default: a temporary folder)")
    ap.add_argument("--out", action="store_true", help="write bench/results/hash.json")
    ap.add_argument("--warm-only", metavar="FILE", help=argparse.SUPPRESS)   # the child's part
    args = ap.parse_args(argv)
    if args.warm_only:
        print(_time(lambda: verify.sha256_file(Path(args.warm_only)), args.runs))
        return 0
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "data.bin"
        with open(path, "wb") as f:
            for _ in range(args.mb):
                f.write(os.urandom(2**20))
        rates = measure(path, args.runs)
    sizes = bundle_sizes()
    seconds = {k: {how: round(v["mb"] / rate, 1) for how, rate in rates.items()} for k, v in sizes.items()}
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    report = {"setup": {"file_mb": args.mb, "runs": args.runs, "cores": os.cpu_count(),
                        "cpu": platform.processor() or platform.machine(),
                        "sha_instructions": " sha_ni" in flags, "python": platform.python_version()},
              "mb_per_s": rates, "bundles": sizes, "seconds": seconds}
    print(f"{'':24}" + "".join(f"{k:>22}" for k in rates))
    print(f"{'MB/s':24}" + "".join(f"{v:>22,.1f}" for v in rates.values()))
    for k, v in sizes.items():
        print(f"{k + ' bundle, ' + format(v['mb'], ',.0f') + ' MB (s)':24}"
              + "".join(f"{s:>22,.1f}" for s in seconds[k].values()))
    if args.out:
        (RESULTS / "hash.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
