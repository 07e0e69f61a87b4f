"""Approximate-candidate backends of a bundle behind one protocol, chosen by the name in the manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ...errors import BundleError
from . import annoy, ivfpq, usearch


class Searcher(Protocol):
    """An opened index file: the rows nearest a query, found approximately."""

    def candidates(self, q: np.ndarray, n: int) -> np.ndarray:
        """``q``: float32 [dims] (projected when the bundle has a projection), L2-normalised. Returns int64
        row ids [<= n], nearest first."""

    def files(self) -> list[Path]:
        """The files it maps (guarded and checked while the bundle serves)."""

    def close(self) -> None: ...


class Backend(Protocol):
    """A kind of index file: ``name`` is the manifest's ``index.backend``."""

    name: str

    def build(self, directory: Path, vectors, options) -> dict:
        """Write the index of ``vectors`` (float32 [n, dims] rows, L2-normalised, sliceable in chunks: a
        memory map or a projected view) into ``directory``; return the manifest's ``index`` entry (at least
        ``backend``, ``file``, ``dim``, plus whatever ``open`` needs)."""

    def open(self, directory: Path, entry: dict, items: int, search) -> Searcher:
        """Map the index file ``entry`` names (``search``: the manifest's ``SearchSettings``, e.g.
        ``search_k``, ``nprobe``); BundleError naming the file and the fix when it cannot."""


BACKENDS: dict[str, Backend] = {b.name: b for b in (annoy.Annoy(), usearch.USearch(), ivfpq.IvfPq())}


def get_backend(name: str) -> Backend:
    """The backend called ``name``; BundleError listing the known ones otherwise."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise BundleError(f"unknown index backend {name!r}: choose one of {', '.join(BACKENDS)}, or upgrade "
                          "pi-search to read this bundle") from None
