"""Gathering complete shards into what a bundle is written from: vectors, items and the rows that failed."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import images
from ..bundle import Item, RowNames
from ..errors import ImageError
from ..images import thumbnail
from ..progress import Progress
from .catalog import Problem, Row
from .shards import Shard, read_shard, shard_files

log = logging.getLogger(__name__)


@dataclass
class Folded:
    """The kept rows' vectors (float32 [len(kept), dim] in a memory map whose file is already unlinked, row i
    is catalog row ``kept[i]``) and the rows that failed while embedding (``late``)."""

    vectors: np.ndarray
    kept: list[int] = field(default_factory=list)
    late: list[Problem] = field(default_factory=list)


def fold(shards: Iterable[Shard], rows: list[Row], catalog_dir: Path, out_dir: Path, dim: int,
         bar: Progress | None = None) -> Folded:
    """Read ``shards`` (in catalog order, one in memory at a time) into a memory map beside ``out_dir``:
    memory stays bounded by a shard and the catalog's rows, whatever the catalog's size. A killed build
    leaves no file behind (it is unlinked at once; the mapping keeps it while the build runs)."""
    tmp = out_dir.parent / f".{out_dir.name}.fold-embeddings-{os.getpid()}.npy"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    vectors = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(max(len(rows), 1), dim))
    tmp.unlink()
    done = Folded(vectors)
    for shard in shards:
        n = len(shard.rows)
        vectors[len(done.kept):len(done.kept) + n] = shard.vectors
        done.kept.extend(int(r) for r in shard.rows)
        for r, reason in zip(shard.failed_rows.tolist(), shard.failed_reasons, strict=True):
            row = rows[r]
            done.late.append(Problem(row.line, str(row.image.relative_to(catalog_dir)), reason))
        if bar is not None:
            bar.update(n + len(shard.failed_rows))
    done.vectors = vectors[:len(done.kept)]
    return done


class RowItems:
    """The Items of the kept catalog rows, made one at a time (thumbnails read from the photos on the way)."""

    def __init__(self, rows: list[Row], kept: list[int], thumbnails: bool):
        self.rows, self.kept, self.thumbnails = rows, kept, thumbnails
        self.no_thumb = 0

    def __len__(self) -> int:
        return len(self.kept)

    def item_ids(self) -> list[str]:
        return [self.rows[i].id for i in self.kept]

    def __iter__(self):
        name = RowNames()
        for i in self.kept:
            row = self.rows[i]
            thumb = None
            if self.thumbnails:
                try:
                    thumb = thumbnail(images.read(row.image))
                except (ImageError, OSError):
                    self.no_thumb += 1   # the embedding exists: the item stays, without a picture
            rid, extra = name(row.id, row.extra)
            yield Item(rid, row.title, row.price, extra, thumb)


class ShardItems(RowItems):
    """The Items of the kept rows with the thumbnails a build kept in its shards (read one shard at a time,
    never all in memory)."""

    def __init__(self, rows: list[Row], kept: list[int], directory: Path):
        super().__init__(rows, kept, thumbnails=True)
        self.dir = directory

    def __iter__(self):
        name = RowNames()
        for _, path in sorted(shard_files(self.dir).items()):
            shard = read_shard(path, vectors=False, thumbs=True)
            for r, thumb in zip(shard.rows.tolist(), shard.thumbs, strict=True):
                row = self.rows[r]
                rid, extra = name(row.id, row.extra)
                yield Item(rid, row.title, row.price, extra, thumb)
