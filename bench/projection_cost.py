"""What the learned projection costs a query at each output size: ms per vector, one vector and a batch of 8.

Usage::

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/projection_cost.py [--out FILE.json]

Times ``learn.whiten.Learned.apply`` (subtract the mean, [dims, 1280] float32 matrix times the vector,
normalise) at 1 BLAS thread on unit vectors of the model's size, for output dims 1280, 768, 512, 384 and 256:
the median of many repeats, after a warm-up, one vector at a time (a live frame) and eight at once (a
look's kept framing and 7 windows). Prints the figures and writes JSON. Measures only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's pi_search

from pi_search.learn.whiten import Learned  # noqa: E402

DIM = 1280
DIMS = (1280, 768, 512, 384, 256)


def median_ms(fn, repeats: int, rounds: int = 7) -> float:
    """Median over ``rounds`` of the mean time of ``repeats`` calls, in ms."""
    fn()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        out.append((time.perf_counter() - t0) / repeats)
    return 1000 * statistics.median(out)


def main(argv=None) -> int:
    from threadpoolctl import threadpool_limits

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=400)
    ap.add_argument("--out", type=Path, default=Path("bench/results/projection-cost.json"))
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows = []
    with threadpool_limits(1):
        for dims in DIMS:
            learned = Learned(rng.standard_normal(DIM).astype(np.float32) * 0.01,
                              rng.standard_normal((dims, DIM)).astype(np.float32))
            one = median_ms(lambda lw=learned: lw.apply(x[0]), args.repeats)
            eight = median_ms(lambda lw=learned: lw.apply(x), args.repeats)
            row = {"dims": dims, "one_ms": round(one, 4), "batch8_ms": round(eight, 4),
                   "batch8_per_vector_ms": round(eight / 8, 4),
                   "matrix_mb": round((learned.matrix.nbytes + learned.mean.nbytes) / 1e6, 2)}
            rows.append(row)
            print(f"{dims:5d} dims: one vector {one:.4f} ms, batch of 8 {eight:.4f} ms "
                  f"({eight / 8:.4f} ms a vector), matrix {row['matrix_mb']} MB", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"blas_threads": 1, "input_dim": DIM, "rows": rows}, indent=1) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
