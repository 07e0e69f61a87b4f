"""Where a build's vectors come from: the catalog's photos, index embed's shards, or a .npy with ids."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CatalogError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FromPhotos:
    """Embed the catalog's photos here, in shards kept beside the bundle (``OUT.partial``) until it is
    written: an interrupted build resumes from them."""


@dataclass(frozen=True)
class FromShards:
    """The complete shards directory of ``pi-search index embed`` (made from these rows with this model)."""

    directory: Path


@dataclass(frozen=True)
class FromVectors:
    """Vectors made elsewhere: ``embeddings`` a .npy float32 [n, dim], ``ids`` its catalog ids one per line
    (one vector per item: a catalog with several photos of an item needs shards)."""

    embeddings: Path
    ids: Path

    @property
    def stamp(self) -> str:
        """The .npy file's identity (path, size, modification time): another file means other vectors."""
        st = self.embeddings.stat()
        return f"embeddings:{self.embeddings.resolve()}:{st.st_size}:{st.st_mtime_ns}"

    def load(self, dim: int) -> dict[str, np.ndarray]:
        """Catalog id -> float32 [dim]; CatalogError (one line) when the files do not fit together."""
        try:
            vecs = np.load(self.embeddings, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CatalogError(f"{self.embeddings}: not a readable .npy file ({exc})") from exc
        try:
            text = self.ids.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise CatalogError(f"{self.ids}: cannot read ({exc})") from exc
        ids = [line.strip() for line in text.splitlines() if line.strip()]
        if vecs.ndim != 2 or vecs.shape[1] != dim:
            raise CatalogError(f"{self.embeddings}: shape {tuple(vecs.shape)}, expected [n, {dim}] from the "
                               "model in use")
        if len(ids) != vecs.shape[0]:
            raise CatalogError(f"{self.ids}: {len(ids)} ids for {vecs.shape[0]} embeddings; one id per line, "
                               "in order")
        if len(set(ids)) != len(ids):
            raise CatalogError(f"{self.ids}: duplicate ids")
        if not np.isfinite(np.asarray(vecs, dtype=np.float32)).all():
            raise CatalogError(f"{self.embeddings}: contains NaN or infinite values")
        return {i: np.asarray(vecs[n], dtype=np.float32) for n, i in enumerate(ids)}


Source = FromPhotos | FromShards | FromVectors


def source_of(embeddings: str | Path | None, ids: str | Path | None) -> Source:
    """The source named by ``index build``'s ``--embeddings`` and ``--ids``: none (the photos), a shards
    directory, or a .npy with its ids; CatalogError when they do not go together."""
    if embeddings is not None and Path(embeddings).is_dir():
        if ids is not None:
            raise CatalogError("--ids goes with a .npy file; a shards directory from index embed has its ids")
        return FromShards(Path(embeddings))
    if (embeddings is None) != (ids is None):
        raise CatalogError("--embeddings and --ids go together: the .npy file and its ids, one per line")
    if embeddings is None:
        return FromPhotos()
    return FromVectors(Path(embeddings), Path(ids))
