"""An opened bundle: checked against its manifest, memory-mapped, searched exactly or through its backend."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import BundleError
from .backends import Searcher, get_backend
from .files import fingerprint
from .items import ItemsFile
from .learned import Learned
from .manifest import Manifest, check_model, read_manifest
from .pca_store import PcaStore
from .photos import DEPTH, best_per_item, row_id
from .projection import Projection, load_projection, normalise
from .store import VectorStore
from .verify import check_file


@dataclass(frozen=True)
class Match:
    """One search result. ``score`` is the cosine similarity of the full embeddings (through the bundle's
    learned projection when it has one), in [-1, 1]; ``photo`` the item's photo that matched (0: its first);
    ``via`` "image" or "barcode" (a code read in the image names the item; its score is then 1).

    ``generation``: which bundle the live catalog served when it was found (results of different generations
    must not be combined into one).
    """

    id: str
    title: str
    price: str | None
    score: float
    index: int = field(default=-1, compare=False)
    generation: int = field(default=0, compare=False)
    photo: int = field(default=0, compare=False)
    via: str = field(default="image", compare=False)

    def as_dict(self) -> dict:
        return {"id": self.id, "title": self.title, "price": self.price, "score": round(self.score, 6),
                "photo": self.photo, "via": self.via}


class Bundle:
    """A built bundle opened for queries: the index file and the vector store are memory-mapped, not read."""

    def __init__(self, directory: Path, manifest: Manifest):
        self.directory = directory
        self.manifest = manifest
        self.projection: Projection | None = None
        self.learned: Learned | None = None   # the catalog's own projection; the stored rows are in it
        self._searcher: Searcher | None = None
        self._store: VectorStore | None = None
        self._items: ItemsFile | None = None
        self.copy_of: Path | None = None   # the bundle directory this one is a private copy of

    @classmethod
    def open(cls, directory: str | Path, *, extractor=None, search: dict | None = None,
             deep: bool = False) -> Bundle:
        """Map a bundle; with ``extractor`` the manifest must match its model (sha256 and dim).

        Every file is checked against the manifest (sizes, the SHA-256 of every byte, item count) before any
        library opens it (a file this process checked before and unchanged since is not read again);
        ``deep`` also runs SQLite's quick_check over the items (the daemon does). ``search`` overrides the
        manifest's query settings (``mode``, ``candidates``, ``search_k``).
        """
        directory = Path(directory)
        manifest = read_manifest(directory)
        if extractor is not None:
            check_model(manifest, extractor, directory)
        if search:
            manifest = manifest.with_search(search)
        self = cls(directory, manifest)
        try:
            self._load(deep)
        except BundleError:
            self.close()
            raise
        except (OSError, ValueError, sqlite3.Error, KeyError, TypeError) as exc:
            self.close()
            raise BundleError(f"{directory}: damaged bundle ({exc}); rebuild it: pi-search index build "
                              f"CATALOG --out {directory}") from exc
        return self

    def _file(self, name: str) -> Path:
        path = self.directory / Path(name).name
        if not path.is_file():
            raise BundleError(f"{path}: missing; rebuild the bundle: pi-search index build CATALOG "
                              f"--out {self.directory}")
        return path

    def _load(self, deep: bool) -> None:
        m = self.manifest
        self._check_files()
        if m.projection is not None:
            self._file(m.projection.mean)
            self._file(m.projection.components)
            self.projection = load_projection(self.directory, m.projection)
            if self.projection.mean.shape != (m.stored_dim,):
                raise BundleError(f"{self.directory}: projection shapes differ from the manifest; rebuild it")
        for name in (m.store.file, m.store.scale, m.store.offset):
            if name:
                self._file(name)
        if m.learned is not None and not m.learned.get("folded"):   # folded: the PCA does it (ivfpq)
            self.learned = Learned.load(self._file(m.learned["mean"]), self._file(m.learned["matrix"]),
                                        m.model.dim)
        ann = m.search.mode == "ann"
        if m.store.space == "pca":
            if not ann:
                raise BundleError(f"{self.directory}: its store holds PCA vectors, which only approximate "
                                  "search can use; search it with mode ann (or rebuild it)")
            self._store = PcaStore(self.directory, m.store, m.items, self.projection, random_access=True)
        else:
            self._store = VectorStore(self.directory, m.store, m.items, m.stored_dim, random_access=ann)
        if ann:
            backend = get_backend(m.backend)
            self._file(m.index["file"])
            self._searcher = backend.open(self.directory, m.index, m.items, m.search)
        self._items = ItemsFile(self._file(m.items_file), deep=deep)
        rows = self._items.count()
        if rows != m.items:
            raise BundleError(f"{self._items.path}: {rows} items, manifest says {m.items}; the bundle is "
                              "incomplete or mixed: copy the whole bundle again (pi-search index install)")

    def _check_files(self) -> None:
        """Every file the manifest lists has the size, sample and SHA-256 it was written with, and every file
        this bundle opens is listed: no library maps a byte that was not checked."""
        listed = self.manifest.files
        for name in self.manifest.opened_files():
            if name not in listed:
                raise BundleError(f"{self.directory / name}: not listed in the manifest, so it cannot be "
                                  "checked; copy the whole bundle again (pi-search index install) or rebuild "
                                  f"it: pi-search index build CATALOG --out {self.directory}")
        for name, want in listed.items():
            path = self.directory / Path(name).name
            if not path.is_file():
                raise BundleError(f"{path}: missing; copy the whole bundle again (pi-search index install) "
                                  f"or rebuild it: pi-search index build CATALOG --out {self.directory}")
            have = os.stat(path).st_size
            if have != want.get("bytes"):
                raise BundleError(f"{path}: {have} bytes, manifest says {want.get('bytes')}; "
                                  "the bundle is incomplete (a copy in progress?) or mixed: copy the whole "
                                  "bundle again (pi-search index install) or rebuild it")
            if want.get("sample_sha256") and fingerprint(path, whole=False)["sample_sha256"] != \
                    want["sample_sha256"]:
                raise BundleError(f"{path}: does not belong to this bundle's manifest (another "
                                  "build's file); copy the whole bundle again (pi-search index install) or "
                                  "rebuild it")
        for name, want in listed.items():
            check_file(self.directory / Path(name).name, want)

    def mapped_files(self) -> list[Path]:
        """The files this bundle keeps mapped or open while it serves (their in-place overwrite is fatal)."""
        m = self.manifest
        names = [m.store.file, m.items_file]
        names += [n for n in (m.store.scale, m.store.offset) if n]
        if m.search.mode == "ann":
            names.append(m.index["file"])
        return [self.directory / Path(n).name for n in names]

    @property
    def items(self) -> ItemsFile:
        """The item metadata (``items.sqlite``); BundleError once the bundle is closed."""
        if self._items is None:
            raise BundleError(f"{self.directory}: the bundle was closed (it is being replaced)")
        return self._items

    @property
    def store(self) -> VectorStore | PcaStore:
        if self._store is None:
            raise BundleError(f"{self.directory}: the bundle was closed (it is being replaced)")
        return self._store

    def __len__(self) -> int:
        return self.manifest.items

    @property
    def dim(self) -> int:
        return self.manifest.model.dim

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def candidates(self, q: np.ndarray, n: int) -> np.ndarray:
        """Approximate neighbours of ``q`` (float32 [dim], normalised) from the index: int64 [<= n]."""
        qi = self.projection.apply(q) if self.projection is not None else q
        return self._searcher.candidates(qi, n)

    def to_learned(self, vector: np.ndarray) -> np.ndarray:
        """An embedding (float32 [..., dim]) in the space of the stored rows: through the learned projection
        when the bundle has one (L2-normalised either way); a projection folded into the PCA (ivfpq) is
        applied by the PCA itself, so the embedding stays as it is."""
        q = normalise(np.asarray(vector, dtype=np.float32))
        return self.learned.apply(q) if self.learned is not None else q

    def search_indices(self, vector: np.ndarray, k: int = 5, *,
                       learned: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices (int64 [k]) and cosine scores (float32 [k]) for one query vector (an
        embedding; ``learned``: already through ``to_learned``)."""
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        if q.shape[0] != (self.manifest.stored_dim if learned else self.dim):
            raise BundleError(f"query vector has {q.shape[0]} dims, bundle {self.directory} has {self.dim}")
        q = normalise(q) if learned else self.to_learned(q)
        k = max(1, min(int(k), len(self)))
        store = self.store
        if self.manifest.search.mode == "exact":
            return store.top(q, k)
        want = max(k, self.manifest.search.candidates)
        if isinstance(store, PcaStore):   # one product a query: its PCA coordinates serve lists and re-rank
            qy = store.coordinates(q)
            cand = np.unique(self._searcher.candidates(store.projected(qy), want))
        else:
            qy = None
            cand = np.unique(self.candidates(q, want))
        if cand.size == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        s = store.scores(cand, q) if qy is None else store.scores(cand, q, qy)
        order = np.argsort(-s, kind="stable")[:k]
        return cand[order], s[order]

    def search_stored(self, row: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``search_indices`` with the item stored at ``row`` as the query (the bundle's own check that its
        index and store agree): its stored vector, or the PCA coordinates of a store that keeps no other."""
        store = self.store
        if not isinstance(store, PcaStore):
            vector = np.asarray(store.full(np.array([row])), np.float32)[0]
            return self.search_indices(vector, k, learned=True)   # stored rows are in the bundle's space
        qy = store.stored(row)
        want = max(k, self.manifest.search.candidates)
        cand = np.unique(self._searcher.candidates(store.projected(qy), want))
        s = store.scores_of_row(cand, row)
        order = np.argsort(-s, kind="stable")[:k]
        return cand[order], s[order]

    def search(self, vector: np.ndarray, k: int = 5, *, learned: bool = False) -> list[Match]:
        """Top-k items for an embedding (float32 [dim], L2-normalised), best first, each item once at the
        score of its best photo (``Match.photo`` says which). With several photos per item, the index is
        asked for more rows until k distinct items come back (or every row was seen). ``learned``: the vector
        went through ``to_learned`` already."""
        k = max(1, int(k))
        n = len(self)
        want = k if not self.manifest.views else min(n, k * DEPTH)
        while True:
            idx, scores = self.search_indices(vector, want, learned=learned)
            if idx.size == 0:
                return []
            meta = self.items.rows(idx.tolist())
            rows = []
            for i, s in zip(idx.tolist(), scores.tolist(), strict=True):
                r = meta.get(i)
                if r is None:
                    raise BundleError(f"{self.directory}: item {i} missing from {self.manifest.items_file}; "
                                      "rebuild the bundle")
                rows.append((r[1], float(min(1.0, max(-1.0, s))), i, r[2], r[3]))
            best = best_per_item(rows, k)
            if len(best) >= k or want >= n or len(idx) < want:
                return [Match(iid, title, price, s, i, photo=photo)
                        for iid, photo, s, i, title, price in best]
            want = min(n, want * 4)

    def search_mean(self, vectors: np.ndarray, k: int = 5) -> list[Match]:
        """Top-k matches scored by the mean of their cosines with each of ``vectors`` (float32 [m, dim]
        embeddings), with one search: their mean in the stored rows' space, its scores times its length."""
        v = normalise(np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim))
        q = self.to_learned(v).mean(axis=0)
        n = float(np.linalg.norm(q))
        if n <= 1e-6:
            return self.search(v[0], k)
        return [replace(m, score=m.score * n) for m in self.search(q / n, k, learned=True)]

    def item(self, item_id: str) -> dict | None:
        """Metadata of one item by catalog id (id, title, price, extra), or None."""
        return self.items.item(item_id)

    def thumbnail(self, item_id: str, photo: int = 0) -> bytes | None:
        """JPEG bytes of an item's thumbnail (of its photo ``photo``) looked up by catalog id; None if
        unknown."""
        return self.items.thumbnail(row_id(item_id, photo))

    def code_items(self, codes: list[str]) -> dict[str, str]:
        """``code -> item id`` of the (normalised) barcodes that name an item of this bundle."""
        return self.items.code_items(codes)

    def close(self) -> None:
        if self._searcher is not None:
            self._searcher.close()
            self._searcher = None
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._items is not None:
            self._items.close()
            self._items = None
