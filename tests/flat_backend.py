"""A whole backend in one module, outside the package: exact search over a memory-mapped numpy matrix.

Importing it registers the backend "flat" (``index build --backend flat --flat-bits 16``); nothing else in
pi_search names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pi_search.bundle.backends import Backend, option
from pi_search.errors import BundleError

FILE = "index.flat.npy"
_CHUNK = 4096


@dataclass(frozen=True)
class FlatOptions:
    bits: int = option(32, flag="--flat-bits", low=16, high=32,
                       help="flat: bits of each value in the index file (16 or 32).")


class Flat(Backend):
    name = "flat"
    rank = 10
    Options = FlatOptions

    def options_of(self, entry: dict, search) -> FlatOptions:
        return FlatOptions(bits=int(entry["bits"]))

    def build(self, directory: Path, vectors, options: FlatOptions) -> dict:
        """``vectors``: float32 [n, d] unit rows, read a block at a time into a float16/32 ``.npy``."""
        if options.bits not in (16, 32):
            raise BundleError(f"--flat-bits {options.bits}: choose 16 or 32")
        dtype = np.float16 if options.bits == 16 else np.float32
        n, d = int(vectors.shape[0]), int(vectors.shape[1])
        out = np.lib.format.open_memmap(directory / FILE, mode="w+", dtype=dtype, shape=(n, d))
        for i in range(0, n, _CHUNK):
            out[i:i + _CHUNK] = np.asarray(vectors[i:i + _CHUNK], dtype=np.float32)
        out.flush()
        del out
        return {"backend": self.name, "file": FILE, "metric": "dot of unit vectors", "dim": d,
                "bits": options.bits}

    def open(self, directory: Path, entry: dict, items: int, search) -> _Opened:
        path = directory / Path(entry["file"]).name
        rows = np.load(path, mmap_mode="r")
        if rows.shape != (items, int(entry["dim"])):
            raise BundleError(f"{path}: {rows.shape} rows, manifest says {items} of {entry['dim']} dims; "
                              "rebuild the bundle")
        return _Opened(path, rows)


class _Opened:
    def __init__(self, path: Path, rows: np.ndarray):
        self.path, self.rows = path, rows

    def candidates(self, q: np.ndarray, n: int) -> np.ndarray:
        """The ``n`` rows of largest dot product with ``q`` (float32 [d]), nearest first: int64 [<= n]."""
        s = np.asarray(self.rows, dtype=np.float32) @ np.asarray(q, dtype=np.float32)
        n = min(int(n), len(s))
        top = np.argpartition(-s, n - 1)[:n]
        return top[np.argsort(-s[top], kind="stable")].astype(np.int64)

    def files(self) -> list[Path]:
        return [self.path]

    def close(self) -> None:
        self.rows = None
