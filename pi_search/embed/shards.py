"""Embedding shards on disk: the plan (rows per shard), the manifest, atomic shard files, resuming.

A shards directory ``SHARDS/`` holds:

- ``manifest.json``: format and version, the model (name, sha256, dim), the framing, the catalog it was made
  from (name, row count, digest of the ordered ids and image paths), ``shard_rows``, ``shards``, and once
  every shard is written ``complete: true`` with ``count`` (rows embedded) and ``failed``.
- ``shard-NNNNNN.npz`` (NumPy, no pickles): shard ``k`` covers catalog rows ``[k * shard_rows, (k + 1) *
  shard_rows)`` (rows are the catalog's usable rows in catalog order, as ``read_catalog`` gives them).
  Arrays: ``rows`` int64 [n] (row numbers), ``ids`` str [n], ``images`` str [n] (paths relative to the
  catalog), ``vectors`` float32 [n, dim] (L2-normalised), ``failed_rows`` int64 [m], ``failed_reasons``
  str [m] (rows whose image could not be read or embedded). Every planned row is in exactly one of ``rows``
  and ``failed_rows``.

A shard file is written to a temporary name, synced and renamed into place, so it exists whole or not at all:
a run that is killed loses only shards in flight, and the next run skips every shard already there.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle import fsync_dir
from ..errors import CatalogError
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
    """The catalog's usable rows in order and how they are cut into shards of ``shard_rows`` rows."""

    catalog: Path
    ids: tuple[str, ...]
    images: tuple[str, ...]          # relative to ``catalog``, POSIX separators
    shard_rows: int

    @classmethod
    def from_rows(cls, catalog: str | Path, rows: list[Row], shard_rows: int = DEFAULT_SHARD_ROWS) -> Plan:
        catalog = Path(catalog)
        if shard_rows < 1:
            raise CatalogError(f"--shard-rows {shard_rows}: give 1 or more rows per shard")
        return cls(catalog, tuple(r.id for r in rows),
                   tuple(r.image.relative_to(catalog).as_posix() for r in rows), int(shard_rows))

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
        the catalog) and ``paths`` (absolute, as this machine sees them) lists of n str."""
        span = self.span(k)
        return {"shard": k, "rows": np.arange(span.start, span.stop, dtype=np.int64),
                "ids": list(self.ids[span.start:span.stop]),
                "images": list(self.images[span.start:span.stop]),
                "paths": [str(self.catalog / self.images[r]) for r in span]}


def header(plan: Plan, model: dict, framing: str) -> dict:
    """The manifest fields that must match for shards to be resumed or used (``model``: name, sha256, dim)."""
    return {"format": FORMAT, "version": VERSION,
            "model": {"name": model["name"], "sha256": model["sha256"], "dim": int(model["dim"])},
            "framing": framing, "vectors": {"dtype": "float32", "norm": "l2"},
            "catalog": {"source": plan.catalog.name, "rows": plan.rows, "digest": plan.digest},
            "shard_rows": plan.shard_rows, "shards": plan.shards}


def read_manifest(out_dir: Path) -> dict | None:
    """The manifest of ``out_dir``, None when there is none; CatalogError when it is not ours."""
    path = out_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CatalogError(f"{path}: unreadable ({exc}); delete {out_dir} and embed again") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CatalogError(f"{out_dir}: not a pi-search embeddings directory; choose another --out")
    if data.get("version") != VERSION:
        raise CatalogError(f"{out_dir}: embeddings format version {data.get('version')}, this pi-search "
                           f"reads {VERSION}; embed again into a new directory")
    return data


def mismatch(found: dict, want: dict) -> str | None:
    """What differs between a shards manifest and the header wanted (the first difference, in words)."""
    fm, wm = found.get("model", {}), want["model"]
    if fm.get("sha256") != wm["sha256"]:
        return (f"made with model {fm.get('name')} (sha256 {str(fm.get('sha256'))[:12]}...), not "
                f"{wm['name']} (sha256 {wm['sha256'][:12]}...) used now")
    if fm.get("dim") != wm["dim"]:
        return f"vectors of {fm.get('dim')} dims, the model gives {wm['dim']}"
    if found.get("framing") != want["framing"]:
        return (f"framing {found.get('framing')!r}, this pi-search frames catalog photos as "
                f"{want['framing']!r}")
    fc, wc = found.get("catalog", {}), want["catalog"]
    if fc.get("rows") != wc["rows"]:
        return f"made from a catalog of {fc.get('rows')} usable rows, this one has {wc['rows']}"
    if fc.get("digest") != wc["digest"]:
        return "made from a catalog with other ids or images (same number of rows)"
    if found.get("shard_rows") != want["shard_rows"]:
        return f"cut in shards of {found.get('shard_rows')} rows, not {want['shard_rows']}"
    return None


def _write_atomic(path: Path, write) -> None:
    """Call ``write(file)`` on a unique temporary file beside ``path``, sync it, rename it to ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_manifest(out_dir: Path, data: dict) -> None:
    _write_atomic(out_dir / MANIFEST, lambda fh: fh.write(json.dumps(data, indent=2).encode()))


def write_shard(out_dir: str | Path, k: int, rows: np.ndarray, ids: list[str], images: list[str],
                vectors: np.ndarray, failed_rows: np.ndarray, failed_reasons: list[str]) -> Path:
    """Write shard ``k`` atomically (see the module docstring for the arrays); returns its path.

    ``vectors``: float32 [len(rows), dim], L2-normalised. Writing the same shard twice (a retried task)
    replaces it with the same content: a shard is never half there and never there twice.
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
    for key in ("ids", "images", "failed_reasons"):  # an empty list has no string dtype of its own
        if arrays[key].size == 0:
            arrays[key] = arrays[key].astype("<U1")
    _write_atomic(path, lambda fh: np.savez(fh, **arrays))
    return path


@dataclass
class Shard:
    """One shard read back (arrays as in the module docstring)."""

    k: int
    rows: np.ndarray
    ids: list[str]
    images: list[str]
    vectors: np.ndarray
    failed_rows: np.ndarray
    failed_reasons: list[str]


def read_shard(path: Path, dim: int | None = None, *, vectors: bool = True) -> Shard:
    """Read a shard file; ValueError when it is damaged (cut short, not a zip) or inconsistent.
    ``vectors=False`` reads only the row lists (cheap: for resuming)."""
    k = int(_SHARD_RE.match(path.name).group(1))
    try:
        with np.load(path, allow_pickle=False) as z:
            rows, failed = z["rows"], z["failed_rows"]
            ids, images = z["ids"].tolist(), z["images"].tolist()
            reasons = z["failed_reasons"].tolist()
            vecs = z["vectors"] if vectors else np.empty((len(rows), 0), np.float32)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc
    if rows.dtype != np.int64 or failed.dtype != np.int64 or not len(ids) == len(images) == len(rows):
        raise ValueError("row lists do not match")
    if len(reasons) != len(failed):
        raise ValueError("failed rows and reasons do not match")
    if vectors:
        if vecs.dtype != np.float32 or vecs.ndim != 2 or vecs.shape[0] != len(rows):
            raise ValueError(f"vectors {vecs.dtype} {vecs.shape} for {len(rows)} rows")
        if dim is not None and vecs.shape[1] != dim:
            raise ValueError(f"vectors of {vecs.shape[1]} dims, expected {dim}")
        if not np.isfinite(vecs).all():
            raise ValueError("vectors hold NaN or infinite values")
    return Shard(k, rows, ids, images, vecs, failed, reasons)


def shard_files(out_dir: Path) -> dict[int, Path]:
    """The shard files present in ``out_dir`` by shard number."""
    found = {}
    for p in out_dir.iterdir():
        m = _SHARD_RE.match(p.name)
        if m:
            found[int(m.group(1))] = p
    return found


def covers(shard: Shard, plan: Plan) -> bool:
    """True when ``shard`` holds exactly the rows the plan gives it (each once, with the planned ids)."""
    span = plan.span(shard.k)
    got = np.concatenate([shard.rows, shard.failed_rows])
    if len(got) != len(span) or not np.array_equal(np.sort(got), np.arange(span.start, span.stop)):
        return False
    return all(plan.ids[r] == i for r, i in zip(shard.rows.tolist(), shard.ids, strict=True))


class ShardWriter:
    """An embeddings directory opened for one run: locked, checked against the header, resumable.

    ``pending`` lists the shard numbers still to write; ``done_rows`` counts the rows of shards already there.
    """

    def __init__(self, out_dir: str | Path, want: dict, plan: Plan):
        self.dir = Path(out_dir)
        self.want, self.plan = want, plan
        if self.dir.exists() and not self.dir.is_dir():
            raise CatalogError(f"{self.dir} is a file; choose another --out")
        if self.dir.is_dir() and read_manifest(self.dir) is None and any(self.dir.iterdir()):
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

    def _open(self) -> None:
        found = read_manifest(self.dir)
        if found is not None:
            why = mismatch(found, self.want)
            if why:
                raise CatalogError(f"{self.dir}: these embeddings were {why}; embed into another --out "
                                   "(or delete this directory to start again)")
        for p in self.dir.glob(".*.tmp"):   # left by a run that was killed mid-write
            p.unlink(missing_ok=True)
        self.done: set[int] = set()
        self.done_rows = 0
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
        self.pending = [k for k in range(self.plan.shards) if k not in self.done]
        if found is None or found.get("complete") and self.pending:
            write_manifest(self.dir, {**self.want, "complete": False})

    def finish(self, engine: str) -> dict:
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
        manifest = {**self.want, "complete": True, "count": count, "failed": failed, "engine": engine,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_manifest(self.dir, manifest)
        return manifest

    def close(self) -> None:
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1


def checked_shards(shards_dir: str | Path, plan: Plan, want: dict) -> Iterator[Shard]:
    """The shards of a complete shards directory, in catalog order, each checked as it is read (one in memory
    at a time); CatalogError (saying what to do) when they were made with another model or framing, from
    other catalog rows, or are not all there."""
    shards_dir = Path(shards_dir)
    found = read_manifest(shards_dir)
    if found is None:
        raise CatalogError(f"{shards_dir}: no {MANIFEST}; make it with: pi-search index embed CATALOG --out "
                           f"{shards_dir}")
    want = {**want, "shard_rows": found.get("shard_rows"), "shards": found.get("shards")}
    why = mismatch(found, want)
    if why:
        raise CatalogError(f"{shards_dir}: these embeddings were {why}; embed this catalog with this model "
                           "again: pi-search index embed CATALOG --out NEW_DIR")
    plan = Plan(plan.catalog, plan.ids, plan.images, int(found["shard_rows"]))
    if not found.get("complete"):
        raise CatalogError(f"{shards_dir}: not finished (a run was stopped); run pi-search index embed "
                           f"CATALOG --out {shards_dir} again to embed what is left")
    files = shard_files(shards_dir)
    missing = [k for k in range(plan.shards) if k not in files]
    if missing:
        raise CatalogError(f"{shards_dir}: {shard_name(missing[0])} is missing; run pi-search index embed "
                           f"CATALOG --out {shards_dir} again to embed it")
    dim = want["model"]["dim"]
    for k in range(plan.shards):
        try:
            shard = read_shard(files[k], dim)
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
    model = {"name": extractor.name, "sha256": extractor.sha256, "dim": extractor.dim}
    return checked_shards(shards_dir, plan, header(plan, model, catalog_framing(extractor.size)))
