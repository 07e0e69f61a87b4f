"""Embedding shards on disk: the plan (rows per shard), the typed manifest, atomic shard files, resuming.

A shards directory ``SHARDS/`` holds:

- ``manifest.json`` (``ShardsManifest``): format and version, the model (name, sha256, dim), the framing,
  the catalog it was made from (name, row count, digest of the ordered ids and image paths), ``shard_rows``,
  ``shards``, and once every shard is written ``complete: true`` with ``count`` (rows embedded) and
  ``failed``; ``source`` when the vectors were not made by the model (a build from a .npy).
- ``shard-NNNNNN.npz`` (NumPy, no pickles): shard ``k`` covers catalog rows ``[k * shard_rows, (k + 1) *
  shard_rows)`` (rows are the catalog's usable rows in catalog order, as ``read_catalog`` gives them).
  Arrays: ``rows`` int64 [n] (row numbers), ``ids`` str [n], ``images`` str [n] (paths relative to the
  catalog), ``vectors`` float32 [n, dim] (L2-normalised), ``failed_rows`` int64 [m], ``failed_reasons``
  str [m] (rows whose image could not be read or embedded). Every planned row is in exactly one of ``rows``
  and ``failed_rows``. A build's own shards (``OUT.partial``) also hold ``keys`` str [n + m] (each planned
  row's ``row_key``, in row order: a shard whose photos changed is embedded again) and, with thumbnails,
  ``thumbs`` uint8 [bytes] with ``thumb_ends`` int64 [n] (row i's JPEG is ``thumbs[ends[i-1]:ends[i]]``;
  empty: none). Shards made to learn from (``index embed``'s default; ``learning`` in the manifest) also
  hold the views of the catalog's learning sample among their rows: ``view_rows`` int64 [v] (the row
  each view is of, in row order), ``views`` float32 [v, dim] (L2-normalised embeddings of synthetic camera
  views, ``learn/catalog.item_views``) and ``view_held`` bool [v] (a view kept out of the fit, to calibrate
  with); empty in a shard with no sampled row.

A shard file is written to a temporary name, synced and renamed into place, so it exists whole or not at all:
a run that is killed loses only shards in flight, and the next run skips every shard already there.
"""

from __future__ import annotations

import bisect
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..bundle import ModelRef, write_atomic  # ModelRef: the model the vectors were made with
from ..errors import CatalogError
from ..learn import catalog as learning
from ..model.framing import CATALOG_TILT, CATALOG_TINT, CATALOG_ZOOM
from .catalog import Row

log = logging.getLogger(__name__)

FORMAT = "pi-search-embeddings"
VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
DEFAULT_SHARD_ROWS = 256
_SHARD_RE = re.compile(r"^shard-(\d{6,})\.npz$")


def catalog_framing(size: int) -> str:
    """The catalog framing in words and numbers (``framing.catalog_inputs`` + mean + L2): shards made with
    another framing are refused, so changing a framing constant invalidates old shards."""
    tint = ",".join(f"{t:g}" for t in CATALOG_TINT)
    return (f"catalog-v1 size={size} pad=white views=whole,zoom{CATALOG_ZOOM:g},tilt-{CATALOG_TILT:g},"
            f"tilt+{CATALOG_TILT:g},tint({tint}) mean l2")


def shard_name(k: int) -> str:
    return f"shard-{k:06d}.npz"


@dataclass(frozen=True)
class Plan:
    """The catalog's usable rows in order and how they are cut into shards of ``shard_rows`` rows.

    ``keys``: each row's ``row_key`` (a build's own shards: a shard is valid only while its photos are the
    same files); ``thumbnails``: the shards keep a thumbnail of each photo (a build's own shards).
    """

    catalog: Path
    ids: tuple[str, ...]
    images: tuple[str, ...]          # relative to ``catalog``, POSIX separators
    shard_rows: int
    keys: tuple[str, ...] | None = None
    thumbnails: bool = False
    learn: Learning | None = None

    @classmethod
    def from_rows(cls, catalog: str | Path, rows: list[Row], shard_rows: int = DEFAULT_SHARD_ROWS, *,
                  keys: list[str] | None = None, thumbnails: bool = False, views: int = 0) -> Plan:
        """``views``: the views of each item of the learning sample to make with the vectors (0: none)."""
        catalog = Path(catalog)
        if shard_rows < 1:
            raise CatalogError(f"--shard-rows {shard_rows}: give 1 or more rows per shard")
        learn = None
        if views > 0:
            learn = Learning(int(views), tuple(learning.sample_rows(len(rows)).tolist()), learning.HELD_EVERY,
                             learning.synth.OTHERS_KEPT)
        return cls(catalog, tuple(r.id for r in rows),
                   tuple(r.image.relative_to(catalog).as_posix() for r in rows), int(shard_rows),
                   None if keys is None else tuple(keys), bool(thumbnails), learn)

    @property
    def rows(self) -> int:
        return len(self.ids)

    @property
    def shards(self) -> int:
        return -(-self.rows // self.shard_rows)

    def span(self, k: int) -> range:
        """Row numbers of shard ``k``."""
        return range(k * self.shard_rows, min((k + 1) * self.shard_rows, self.rows))

    @property
    def digest(self) -> str:
        """sha256 of the ordered (id, image) pairs: the identity of the rows the shards are made of."""
        h = hashlib.sha256()
        for i, img in zip(self.ids, self.images, strict=True):
            h.update(f"{i}\x00{img}\n".encode())
        return h.hexdigest()

    def work(self, k: int) -> dict:
        """Shard ``k`` as a unit of work: ``shard`` int, ``rows`` int64 [n], ``ids``, ``images`` (relative to
        the catalog) and ``paths`` (absolute, as this machine sees them) lists of n str; with ``keys`` in the
        plan also ``keys`` [n] str, with ``thumbnails`` also ``thumbnails: True``."""
        span = self.span(k)
        work = {"shard": k, "rows": np.arange(span.start, span.stop, dtype=np.int64),
                "ids": list(self.ids[span.start:span.stop]),
                "images": list(self.images[span.start:span.stop]),
                "paths": [str(self.catalog / self.images[r]) for r in span]}
        if self.keys is not None:
            work["keys"] = list(self.keys[span.start:span.stop])
        if self.thumbnails:
            work["thumbnails"] = True
        if self.learn is not None:
            work["learn"] = json.dumps(self.learn.work(span, [str(self.catalog / i) for i in self.images]))
        return work


@dataclass(frozen=True)
class Learning:
    """The views a plan makes to learn from: ``views`` per item of the learning ``sample`` (sorted row
    numbers, ``learn.catalog.sample_rows``), one more every ``held_every``-th item of the sample (held out),
    and for "beside another item" the ``others`` items of the sample before each one."""

    views: int
    sample: tuple[int, ...]
    held_every: int
    others: int

    def work(self, span: range, paths: list[str]) -> dict:
        """A shard's part: ``views``, ``held_every``, ``rows`` (its sampled rows), ``first`` (the place
        in the sample of the first of them) and ``before`` (the paths of the items of the sample before
        them, at most ``others``; shown beside them)."""
        a, b = bisect.bisect_left(self.sample, span.start), bisect.bisect_left(self.sample, span.stop)
        return {"views": self.views, "held_every": self.held_every, "rows": list(self.sample[a:b]),
                "first": a, "before": [paths[r] for r in self.sample[max(0, a - self.others):a]]}

    def describe(self) -> dict:
        """The manifest's ``learning`` entry."""
        return {"views": self.views, "sampled": len(self.sample), "held_every": self.held_every,
                "others": self.others}


@dataclass(frozen=True)
class CatalogRef:
    """The catalog rows the shards were made from (``digest``: ``Plan.digest``)."""

    source: str
    rows: int
    digest: str


def _field(data: dict, key: str, kind: type | tuple[type, ...], where: str, optional: bool = False):
    """``data[key]`` when it is a ``kind``; CatalogError (one line) otherwise."""
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise CatalogError(f"{where}: {key} is missing or not a {names}; delete {Path(where).parent} and "
                           "embed again")
    return value


@dataclass(frozen=True)
class ShardsManifest:
    """``manifest.json`` of a shards directory: what the shards were made from, and whether all are there."""

    model: ModelRef
    framing: str
    catalog: CatalogRef
    shard_rows: int
    shards: int
    complete: bool = False
    count: int | None = None        # rows embedded, once complete
    failed: int | None = None       # rows that could not be embedded, once complete
    engine: str | None = None       # local or ray, once complete
    finished: str | None = None     # UTC time, once complete
    source: str | None = None       # where the vectors came from when not the model (a build's .npy)
    learning: dict | None = None    # the views made to learn from (``Learning.describe``), if any
    vectors: dict = field(default_factory=lambda: {"dtype": "float32", "norm": "l2"})

    def to_dict(self) -> dict:
        data = {"format": FORMAT, "version": VERSION, "model": asdict(self.model), "framing": self.framing,
                "vectors": dict(self.vectors), "catalog": asdict(self.catalog), "shard_rows": self.shard_rows,
                "shards": self.shards, "complete": self.complete}
        for key in ("count", "failed", "engine", "finished", "source", "learning"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data

    @classmethod
    def from_dict(cls, data, directory: Path) -> ShardsManifest:
        """The manifest read from ``directory``; CatalogError (one line, what to do) when it is not ours."""
        where = str(directory / MANIFEST)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CatalogError(f"{directory}: not a pi-search embeddings directory; choose another --out")
        if data.get("version") != VERSION:
            raise CatalogError(f"{directory}: embeddings format version {data.get('version')}, this "
                               f"pi-search reads {VERSION}; embed again into a new directory")
        def get(d: dict, key: str, kind, optional: bool = False):
            return _field(d, key, kind, where, optional)

        model, catalog = get(data, "model", dict), get(data, "catalog", dict)
        return cls(model=ModelRef(get(model, "name", str), get(model, "sha256", str), get(model, "dim", int)),
                   framing=get(data, "framing", str),
                   catalog=CatalogRef(get(catalog, "source", str), get(catalog, "rows", int),
                                      get(catalog, "digest", str)),
                   shard_rows=get(data, "shard_rows", int), shards=get(data, "shards", int),
                   complete=bool(get(data, "complete", bool, True)), count=get(data, "count", int, True),
                   failed=get(data, "failed", int, True), engine=get(data, "engine", str, True),
                   finished=get(data, "finished", str, True), source=get(data, "source", str, True),
                   learning=get(data, "learning", dict, True),
                   vectors=get(data, "vectors", dict, True) or {"dtype": "float32", "norm": "l2"})

    @classmethod
    def read(cls, directory: Path) -> ShardsManifest | None:
        """The manifest of ``directory``, None when there is none; CatalogError when it is not ours."""
        path = Path(directory) / MANIFEST
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CatalogError(f"{path}: unreadable ({exc}); delete {directory} and embed again") from exc
        return cls.from_dict(data, Path(directory))

    def write(self, directory: Path) -> None:
        """Write it into ``directory`` atomically."""
        text = json.dumps(self.to_dict(), indent=2).encode()
        write_atomic(Path(directory) / MANIFEST, lambda fh: fh.write(text))

    def mismatch(self, want: ShardsManifest) -> str | None:
        """What differs from the manifest wanted (the first difference, in words), None when it matches."""
        fm, wm = self.model, want.model
        if fm.sha256 != wm.sha256:
            return (f"made with model {fm.name} (sha256 {fm.sha256[:12]}...), not {wm.name} (sha256 "
                    f"{wm.sha256[:12]}...) used now")
        if fm.dim != wm.dim:
            return f"vectors of {fm.dim} dims, the model gives {wm.dim}"
        if self.framing != want.framing:
            return f"framing {self.framing!r}, this pi-search frames catalog photos as {want.framing!r}"
        if self.source != want.source:
            return f"made from the vectors of {self.source or 'the model'}, not {want.source or 'the model'}"
        fc, wc = self.catalog, want.catalog
        if fc.rows != wc.rows:
            return f"made from a catalog of {fc.rows} usable rows, this one has {wc.rows}"
        if fc.digest != wc.digest:
            return "made from a catalog with other ids or images (same number of rows)"
        if self.shard_rows != want.shard_rows:
            return f"cut in shards of {self.shard_rows} rows, not {want.shard_rows}"
        if self.learning != want.learning:
            return (f"made with {_views_words(self.learning)} to learn from, not with "
                    f"{_views_words(want.learning)} (--views, --no-learn)")
        return None


def _views_words(learning: dict | None) -> str:
    if not learning:
        return "no views"
    return f"{learning.get('views')} views of each of {learning.get('sampled')} sampled items"


def header(plan: Plan, model: dict, framing: str, source: str | None = None) -> ShardsManifest:
    """The manifest fields that must match for shards to be resumed or used (``model``: name, sha256, dim;
    ``source``: where the vectors come from when not the model; the plan's views to learn from)."""
    return ShardsManifest(model=ModelRef(str(model["name"]), str(model["sha256"]), int(model["dim"])),
                          framing=framing, catalog=CatalogRef(plan.catalog.name, plan.rows, plan.digest),
                          shard_rows=plan.shard_rows, shards=plan.shards, source=source,
                          learning=plan.learn.describe() if plan.learn is not None else None)


def model_header(plan: Plan, extractor, source: str | None = None) -> ShardsManifest:
    """``header`` for the model of ``extractor`` and its catalog framing."""
    model = {"name": extractor.name, "sha256": extractor.sha256, "dim": extractor.dim}
    return header(plan, model, catalog_framing(extractor.size), source)


def write_shard(out_dir: str | Path, k: int, rows: np.ndarray, ids: list[str], images: list[str],
                vectors: np.ndarray, failed_rows: np.ndarray, failed_reasons: list[str], *,
                keys: list[str] | None = None, thumbs: list[bytes | None] | None = None,
                views: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> Path:
    """Write shard ``k`` atomically (see the module docstring for the arrays); returns its path.

    ``vectors``: float32 [len(rows), dim], L2-normalised. ``keys``: the row keys of every planned row (kept
    and failed, in row order); ``thumbs``: a JPEG (or None) per kept row; ``views``: the views to learn
    from (``view_rows`` int64 [v], ``views`` float32 [v, dim], ``view_held`` bool [v]). Writing the same
    shard twice (a retried task) replaces it with the same content: a shard is never half there and never
    there twice.
    """
    path = Path(out_dir) / shard_name(k)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(rows)
    if vectors.ndim != 2 or vectors.shape[0] != n or len(ids) != n or len(images) != n:
        raise ValueError(f"shard {k}: {len(rows)} rows, {len(ids)} ids, {len(images)} images, vectors "
                         f"{vectors.shape}")
    arrays = {"rows": np.asarray(rows, np.int64), "ids": np.array(ids, dtype=str),
              "images": np.array(images, dtype=str), "vectors": vectors,
              "failed_rows": np.asarray(failed_rows, np.int64),
              "failed_reasons": np.array(failed_reasons, dtype=str)}
    if keys is not None:
        if len(keys) != n + len(failed_rows):
            raise ValueError(f"shard {k}: {len(keys)} keys for {n + len(failed_rows)} rows")
        arrays["keys"] = np.array(keys, dtype=str)
    if thumbs is not None:
        if len(thumbs) != n:
            raise ValueError(f"shard {k}: {len(thumbs)} thumbnails for {n} rows")
        arrays["thumbs"] = np.frombuffer(b"".join(t or b"" for t in thumbs), np.uint8)
        arrays["thumb_ends"] = np.cumsum([len(t or b"") for t in thumbs], dtype=np.int64)
    if views is not None:
        v_rows, v_vecs, v_held = views
        v_vecs = np.asarray(v_vecs, np.float32).reshape(len(v_rows), vectors.shape[1])
        if len(v_held) != len(v_rows):
            raise ValueError(f"shard {k}: {len(v_rows)} view rows, {len(v_held)} held flags")
        arrays.update(view_rows=np.asarray(v_rows, np.int64), views=v_vecs,
                      view_held=np.asarray(v_held, bool))
    for key in ("ids", "images", "failed_reasons", "keys"):  # an empty list has no string dtype of its own
        if key in arrays and arrays[key].size == 0:
            arrays[key] = arrays[key].astype("<U1")
    write_atomic(path, lambda fh: np.savez(fh, **arrays))
    return path


@dataclass
class Shard:
    """One shard read back (arrays as in the module docstring; ``keys`` None and ``has_thumbs`` False in the
    shards of ``index embed``; ``thumbs`` read only when asked)."""

    k: int
    rows: np.ndarray
    ids: list[str]
    images: list[str]
    vectors: np.ndarray
    failed_rows: np.ndarray
    failed_reasons: list[str]
    keys: list[str] | None = None
    has_thumbs: bool = False
    thumbs: list[bytes | None] | None = None
    has_views: bool = False


def read_shard(path: Path, dim: int | None = None, *, vectors: bool = True, thumbs: bool = False) -> Shard:
    """Read a shard file; ValueError when it is damaged (cut short, not a zip) or inconsistent.
    ``vectors=False`` reads only the row lists (cheap: for resuming); ``thumbs`` reads the thumbnails too."""
    k = int(_SHARD_RE.match(path.name).group(1))
    try:
        with np.load(path, allow_pickle=False) as z:
            rows, failed = z["rows"], z["failed_rows"]
            ids, images = z["ids"].tolist(), z["images"].tolist()
            reasons = z["failed_reasons"].tolist()
            vecs = z["vectors"] if vectors else np.empty((len(rows), 0), np.float32)
            keys = z["keys"].tolist() if "keys" in z.files else None
            has_thumbs = "thumb_ends" in z.files
            has_views = {"view_rows", "views", "view_held"} <= set(z.files)
            blobs = None
            if thumbs and has_thumbs:
                data, ends = z["thumbs"].tobytes(), z["thumb_ends"].tolist()
                if len(ends) != len(rows) or (ends and ends[-1] != len(data)):
                    raise ValueError("thumbnails do not match the rows")
                starts = [0, *ends[:-1]]
                blobs = [data[a:b] or None for a, b in zip(starts, ends, strict=True)]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc
    if rows.dtype != np.int64 or failed.dtype != np.int64 or not len(ids) == len(images) == len(rows):
        raise ValueError("row lists do not match")
    if len(reasons) != len(failed):
        raise ValueError("failed rows and reasons do not match")
    if keys is not None and len(keys) != len(rows) + len(failed):
        raise ValueError("row keys do not match the rows")
    if vectors:
        if vecs.dtype != np.float32 or vecs.ndim != 2 or vecs.shape[0] != len(rows):
            raise ValueError(f"vectors {vecs.dtype} {vecs.shape} for {len(rows)} rows")
        if dim is not None and vecs.shape[1] != dim:
            raise ValueError(f"vectors of {vecs.shape[1]} dims, expected {dim}")
        if not np.isfinite(vecs).all():
            raise ValueError("vectors hold NaN or infinite values")
    return Shard(k, rows, ids, images, vecs, failed, reasons, keys, has_thumbs, blobs, has_views)


def read_views(path: Path, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A shard's views to learn from: ``view_rows`` int64 [v], ``views`` float32 [v, dim], ``view_held``
    bool [v] (empty when it has none); ValueError when they are damaged."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "views" not in z.files:
                return np.empty(0, np.int64), np.empty((0, dim), np.float32), np.empty(0, bool)
            rows, vecs, held = z["view_rows"], z["views"], z["view_held"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc
    if rows.dtype != np.int64 or held.dtype != bool or vecs.dtype != np.float32 or vecs.ndim != 2 \
            or vecs.shape != (len(rows), dim) or len(held) != len(rows):
        raise ValueError(f"views {vecs.dtype} {vecs.shape} for {len(rows)} view rows of {dim} dims")
    if not np.isfinite(vecs).all():
        raise ValueError("views hold NaN or infinite values")
    return rows, vecs, held


def shard_files(out_dir: Path) -> dict[int, Path]:
    """The shard files present in ``out_dir`` by shard number."""
    found = {}
    for p in out_dir.iterdir():
        m = _SHARD_RE.match(p.name)
        if m:
            found[int(m.group(1))] = p
    return found


def covers(shard: Shard, plan: Plan) -> bool:
    """True when ``shard`` holds exactly the rows the plan gives it (each once, with the planned ids; with
    the planned row keys, thumbnails and views to learn from when the plan has them)."""
    span = plan.span(shard.k)
    got = np.concatenate([shard.rows, shard.failed_rows])
    if len(got) != len(span) or not np.array_equal(np.sort(got), np.arange(span.start, span.stop)):
        return False
    if plan.keys is not None and shard.keys != list(plan.keys[span.start:span.stop]):
        return False
    if plan.thumbnails and not shard.has_thumbs:
        return False
    if plan.learn is not None and not shard.has_views:
        return False
    return all(plan.ids[r] == i for r, i in zip(shard.rows.tolist(), shard.ids, strict=True))


class ShardWriter:
    """An embeddings directory opened for one run: locked, checked against the header, resumable.

    ``pending`` lists the shard numbers still to write; ``done_rows`` counts the rows of shards already there,
    ``done_kept`` the rows among them that were embedded (not failed). ``discard`` (a build's own shards):
    shards of another catalog, model or vectors, or files that are not shards, are deleted and the run
    starts again instead of being refused.
    """

    def __init__(self, out_dir: str | Path, want: ShardsManifest, plan: Plan, *, discard: bool = False):
        self.dir = Path(out_dir)
        self.want, self.plan = want, plan
        if self.dir.exists() and not self.dir.is_dir():
            raise CatalogError(f"{self.dir} is a file; choose another --out")
        if discard:
            self._discard_other()
        if self.dir.is_dir() and ShardsManifest.read(self.dir) is None and any(self.dir.iterdir()):
            raise CatalogError(f"{self.dir} exists and is not an embeddings directory; choose another --out")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            raise CatalogError(f"{self.dir}: another pi-search index embed is writing it; wait for it to end "
                               "or choose another --out") from None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _discard_other(self) -> None:
        """Delete ``self.dir`` when it holds anything but shards of this header (left by another build)."""
        if not self.dir.is_dir():
            return
        try:
            found = ShardsManifest.read(self.dir)
            why = "no manifest" if found is None else found.mismatch(self.want)
        except CatalogError as exc:
            why = str(exc)
        if why and (found is not None or any(self.dir.iterdir())):
            log.warning("%s: left by a build with another catalog, model or vectors (%s); starting again",
                        self.dir, why)
            shutil.rmtree(self.dir, ignore_errors=True)

    def _open(self) -> None:
        found = ShardsManifest.read(self.dir)
        if found is not None:
            why = found.mismatch(self.want)
            if why:
                raise CatalogError(f"{self.dir}: these embeddings were {why}; embed into another --out "
                                   "(or delete this directory to start again)")
        for p in self.dir.glob(".*.tmp"):   # left by a run that was killed mid-write
            p.unlink(missing_ok=True)
        self.done: set[int] = set()
        self.done_rows = self.done_kept = 0
        for k, path in sorted(shard_files(self.dir).items()):
            try:
                shard = read_shard(path, vectors=False)
            except (OSError, ValueError, KeyError) as exc:
                why = f"unreadable ({exc})"
            else:
                ok = k < self.plan.shards and covers(shard, self.plan)
                why = None if ok else "does not hold the rows planned for it"
            if why:
                log.warning("%s: %s; embedding its rows again", path, why)
                path.unlink(missing_ok=True)
                continue
            self.done.add(k)
            self.done_rows += len(self.plan.span(k))
            self.done_kept += len(shard.rows)
        self.pending = [k for k in range(self.plan.shards) if k not in self.done]
        if found is None or found.complete and self.pending:
            replace(self.want, complete=False).write(self.dir)

    def finish(self, engine: str) -> ShardsManifest:
        """Check every shard is there and covers its rows, then mark the directory complete; the manifest."""
        count = failed = 0
        files = shard_files(self.dir)
        for k in range(self.plan.shards):
            if k not in files:
                raise CatalogError(f"{self.dir}: shard {k} is missing after the run; run the same command "
                                   "again to embed what is left")
            shard = read_shard(files[k], vectors=False)
            if not covers(shard, self.plan):
                raise CatalogError(f"{files[k]}: does not hold the rows planned for it; delete it and run "
                                   "the same command again")
            count += len(shard.rows)
            failed += len(shard.failed_rows)
        manifest = replace(self.want, complete=True, count=count, failed=failed, engine=engine,
                           finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        manifest.write(self.dir)
        return manifest

    def close(self) -> None:
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1


def checked_shards(shards_dir: str | Path, plan: Plan, want: ShardsManifest, *,
                   thumbs: bool = False) -> Iterator[Shard]:
    """The shards of a complete shards directory, in catalog order, each checked as it is read (one in memory
    at a time); CatalogError (saying what to do) when they were made with another model or framing, from
    other catalog rows, or are not all there. ``thumbs``: read each shard's thumbnails too."""
    shards_dir = Path(shards_dir)
    found = ShardsManifest.read(shards_dir)
    if found is None:
        raise CatalogError(f"{shards_dir}: no {MANIFEST}; make it with: pi-search index embed CATALOG --out "
                           f"{shards_dir}")
    why = found.mismatch(replace(want, shard_rows=found.shard_rows, shards=found.shards,
                                 learning=found.learning))
    if why:
        raise CatalogError(f"{shards_dir}: these embeddings were {why}; embed this catalog with this model "
                           "again: pi-search index embed CATALOG --out NEW_DIR")
    plan = replace(plan, shard_rows=found.shard_rows)
    if not found.complete:
        raise CatalogError(f"{shards_dir}: not finished (a run was stopped); run pi-search index embed "
                           f"CATALOG --out {shards_dir} again to embed what is left")
    files = shard_files(shards_dir)
    missing = [k for k in range(plan.shards) if k not in files]
    if missing:
        raise CatalogError(f"{shards_dir}: {shard_name(missing[0])} is missing; run pi-search index embed "
                           f"CATALOG --out {shards_dir} again to embed it")
    for k in range(plan.shards):
        try:
            shard = read_shard(files[k], want.model.dim, thumbs=thumbs)
        except (OSError, ValueError, KeyError) as exc:
            raise CatalogError(f"{files[k]}: damaged ({exc}); delete it and run pi-search index embed "
                               f"CATALOG --out {shards_dir} again") from exc
        if not covers(shard, plan):
            raise CatalogError(f"{files[k]}: does not hold the catalog rows planned for it; delete it and "
                               f"run pi-search index embed CATALOG --out {shards_dir} again")
        yield shard


def shards_for_build(shards_dir: Path, catalog_dir: Path, rows: list[Row], extractor) -> Iterator[Shard]:
    """``checked_shards`` for the usable ``rows`` of ``catalog_dir`` and the model of ``extractor``."""
    plan = Plan.from_rows(catalog_dir, rows, 1)
    return checked_shards(shards_dir, plan, model_header(plan, extractor))


def shard_views(shards_dir: str | Path, dim: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The views to learn from of a complete shards directory (``checked_shards`` checked it), shard by
    shard in catalog order (``read_views``); CatalogError when a shard's views are damaged."""
    files = shard_files(Path(shards_dir))
    for k in sorted(files):
        try:
            yield read_views(files[k], dim)
        except ValueError as exc:
            raise CatalogError(f"{files[k]}: damaged views ({exc}); delete it and run pi-search index embed "
                               f"CATALOG --out {shards_dir} again") from exc
