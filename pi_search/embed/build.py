"""Builds a bundle from a catalog: reads rows, embeds photos in resumable chunks, writes it atomically."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import images
from ..bundle.files import bundle_lock
from ..bundle.items import Item
from ..bundle.manifest import Manifest, read_manifest
from ..bundle.photos import RowNames, counts
from ..bundle.reader import Bundle
from ..bundle.write import DEFAULT_WHITEN, BuildOptions, check_out_dir, write_bundle
from ..errors import BundleError, CatalogError, ImageError
from ..images import thumbnail
from ..learn import catalog as learning
from ..model.framing import embed_catalog_image
from .catalog import Problem, Row, read_catalog
from .shards import catalog_framing, shards_for_build

log = logging.getLogger(__name__)

CHUNK = 64           # rows embedded between two resume checkpoints
PARTIAL_VERSION = 1


@dataclass
class BuildReport:
    """What a build did: items indexed, rows skipped (with reasons), items embedded now or resumed."""

    out_dir: Path
    manifest: Manifest
    items: int
    skipped: list[Problem] = field(default_factory=list)
    embedded: int = 0
    resumed: int = 0
    seconds: float = 0.0

    @property
    def photos(self) -> int:
        """Photos indexed (an item has one or several)."""
        return int((self.manifest.catalog or {}).get("photos", self.manifest.items))

    def as_dict(self) -> dict:
        return {"out": str(self.out_dir), "items": self.items, "photos": self.photos,
                "skipped": len(self.skipped),
                "problems": [str(p) for p in self.skipped], "embedded": self.embedded,
                "resumed": self.resumed, "seconds": round(self.seconds, 2),
                "search": self.manifest.search.mode,
                "projection": self.manifest.to_dict()["projection"]}


def partial_dir(out_dir: Path) -> Path:
    """Where an unfinished build keeps the embeddings computed so far: ``OUT.partial`` beside ``OUT``."""
    return out_dir.parent / f"{out_dir.name}.partial"


def interrupted_note(out_dir: str | Path) -> str:
    """What an interrupted build of ``out_dir`` kept, and what the next run does (one line)."""
    out_dir = Path(out_dir)
    partial = partial_dir(out_dir)
    kept = 0
    for f in sorted(partial.glob("chunk-*.npz")):
        try:
            with np.load(f, allow_pickle=False) as z:
                kept += len(z["keys"])
        except (OSError, ValueError, KeyError):
            continue
    old = f"{out_dir} is unchanged" if (out_dir / "manifest.json").is_file() else f"no bundle in {out_dir}"
    if not kept:
        return (f"stopped before the first checkpoint ({CHUNK} items): nothing was kept, {old}; the next run "
                "starts over")
    return (f"{kept} embedded item(s) are kept in {partial}, {old}; the same command again resumes from "
            "there")


def row_key(row: Row) -> str:
    """Identity of a row's embedding: id, image path, and the image file's size and modification time."""
    try:
        st = row.image.stat()
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        stamp = "?"
    return hashlib.sha256(f"{row.id}\x00{row.image}\x00{stamp}".encode()).hexdigest()[:32]


class _Checkpoints:
    """Work saved so far under ``OUT.partial/``: embeddings in chunk files, thumbnails in ``thumbs.sqlite``.

    Keyed by row (``row_key``) and valid only for the same model sha256 and vector source.
    """

    def __init__(self, directory: Path, model_sha256: str, dim: int, source: str = "extractor"):
        self.dir = directory
        self.done: dict[str, np.ndarray] = {}
        self._next = 0
        state = {"version": PARTIAL_VERSION, "model_sha256": model_sha256, "dim": dim, "source": source}
        state_file = directory / "state.json"
        if directory.is_dir():
            try:
                old = json.loads(state_file.read_text())
            except (OSError, ValueError):
                old = None
            if old != state:
                log.warning("%s: left by a build with another model or vectors; starting again", directory)
                shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps(state))
        self._db = sqlite3.connect(directory / "thumbs.sqlite")
        self._db.execute("CREATE TABLE IF NOT EXISTS thumbs (key TEXT PRIMARY KEY, thumb BLOB)")
        for f in sorted(directory.glob("chunk-*.npz")):
            try:
                self._load(f, dim)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("%s: unreadable checkpoint (%s); its items will be embedded again", f, exc)
            self._next = max(self._next, int(f.stem.split("-")[1]) + 1)

    def _load(self, f: Path, dim: int) -> None:
        with np.load(f, allow_pickle=False) as z:
            keys, vecs = z["keys"], z["vectors"]
        if vecs.shape != (len(keys), dim):
            raise ValueError("shapes do not match")
        for i, k in enumerate(keys.tolist()):
            self.done[k] = vecs[i]

    def save(self, keys: list[str], vecs: list[np.ndarray], thumbs: list[bytes | None]) -> None:
        """Thumbnails first (committed), then the chunk file: a key in a chunk always has its thumbnail."""
        if not keys:
            return
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO thumbs VALUES (?, ?)",
                                 zip(keys, thumbs, strict=True))
        path = self.dir / f"chunk-{self._next:06d}.npz"
        tmp = self.dir / f".chunk-{self._next:06d}.tmp.npz"
        try:
            np.savez(tmp, keys=np.array(keys), vectors=np.stack(vecs).astype(np.float32))
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # interrupted: no half-written chunk stays behind
            raise
        self._next += 1
        for k, v in zip(keys, vecs, strict=True):
            self.done[k] = v

    def thumbnail(self, key: str) -> bytes | None:
        r = self._db.execute("SELECT thumb FROM thumbs WHERE key = ?", (key,)).fetchone()
        return None if r is None or r[0] is None else bytes(r[0])

    def close(self) -> None:
        self._db.close()


class _Items:
    """The kept rows as index Items, thumbnails read from the checkpoint one at a time (not all in RAM)."""

    def __init__(self, rows: list[Row], keys: list[str], ckpt: _Checkpoints):
        self.rows, self.keys, self.ckpt = rows, keys, ckpt

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        name = RowNames()
        for r, k in zip(self.rows, self.keys, strict=True):
            rid, extra = name(r.id, r.extra)
            yield Item(rid, r.title, r.price, extra, self.ckpt.thumbnail(k))

    def item_ids(self) -> list[str]:
        return [r.id for r in self.rows]


class Progress:
    """A tqdm bar on a terminal; plain stderr lines with items/s and ETA (every 5 s) otherwise."""

    def __init__(self, total: int, initial: int, enabled: bool, what: str = "embedding",
                 done: str = "embedded"):
        self.total, self.count, self.start_count = total, initial, initial
        self.what, self.done = what, done
        self.t0 = self.last = time.monotonic()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="item", desc=what, file=sys.stderr,
                            smoothing=0.1)
        elif enabled:
            self._line(f"{what} {total} items" + (f" ({initial} already done)" if initial else ""))
        self.enabled = enabled

    def update(self, n: int = 1) -> None:
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= 5.0 or self.count == self.total:
            self.last = now
            rate = (self.count - self.start_count) / max(now - self.t0, 1e-9)
            eta = (self.total - self.count) / rate if rate > 0 else float("inf")
            eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta != float("inf") else "?"
            if self.enabled:
                self._line(f"{self.done} {self.count}/{self.total} items ({rate:.1f} items/s, "
                           f"ETA {eta_text})")

    @staticmethod
    def _line(text: str) -> None:
        """Progress for logs and pipes (no terminal): one plain line on stderr."""
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _report(problems: list[Problem], strict: bool) -> None:
    for p in problems:
        log.warning("skipped %s", p)
    if strict and problems:
        raise CatalogError(f"{len(problems)} bad catalog row(s) and --strict; first: {problems[0]}")


def _load_vectors(embeddings: Path, ids_file: Path, dim: int) -> dict[str, np.ndarray]:
    try:
        vecs = np.load(embeddings, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CatalogError(f"{embeddings}: not a readable .npy file ({exc})") from exc
    try:
        text = ids_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{ids_file}: cannot read ({exc})") from exc
    ids = [line.strip() for line in text.splitlines() if line.strip()]
    if vecs.ndim != 2 or vecs.shape[1] != dim:
        raise CatalogError(f"{embeddings}: shape {tuple(vecs.shape)}, expected [n, {dim}] from the model "
                           "in use")
    if len(ids) != vecs.shape[0]:
        raise CatalogError(f"{ids_file}: {len(ids)} ids for {vecs.shape[0]} embeddings; one id per line, "
                           "in order")
    if len(set(ids)) != len(ids):
        raise CatalogError(f"{ids_file}: duplicate ids")
    if not np.isfinite(np.asarray(vecs, dtype=np.float32)).all():
        raise CatalogError(f"{embeddings}: contains NaN or infinite values")
    return {i: np.asarray(vecs[n], dtype=np.float32) for n, i in enumerate(ids)}


def build_bundle(catalog_dir: str | Path, out_dir: str | Path, extractor, *, dims: int | None = -1,
                 whiten: bool = DEFAULT_WHITEN, strict: bool = False, options: BuildOptions | None = None,
                 embeddings: str | Path | None = None, ids: str | Path | None = None,
                 chunk: int = CHUNK, progress: bool = True,
                 on_chunk: Callable[[int, int], None] | None = None, locked: bool = False,
                 thumbnails: bool = True, learn: bool = True, views: int = learning.VIEWS) -> BuildReport:
    """Read ``catalog_dir``, embed every good row (or take ``embeddings``/``ids``), write ``out_dir``.

    Bad rows (missing or unreadable image, duplicate id, empty title) are skipped with a warning; ``strict``
    makes any of them a CatalogError before anything is written. Embeddings are checkpointed every ``chunk``
    rows in ``OUT.partial/`` so an interrupted build resumes; the checkpoint is deleted after success.
    ``on_chunk(done, total)`` is called after each checkpoint. ``dims``: PCA dimensions (-1: automatic,
    None: no projection). Holds the bundle's lock throughout (a second build of the same ``out_dir`` waits
    for this one) unless the caller does (``locked``). ``embeddings``: a shards directory of ``index embed``
    (refused unless made from these catalog rows with this model and framing; streamed, see
    ``_build_from_shards``), or a .npy with ``ids``. ``thumbnails=False``: none in the bundle (with shards
    and without ``learn``, no image is read at all). ``learn``: learn the bundle's projection from ``views``
    synthetic camera views of each catalog photo (``pi_search.learn``; an even sample of at most
    ``learn.catalog.MAX_ITEMS`` photos, read again after embedding).
    """
    if not locked:
        check_out_dir(Path(out_dir))
        with bundle_lock(out_dir, what="build"):
            return build_bundle(catalog_dir, out_dir, extractor, dims=dims, whiten=whiten, strict=strict,
                                options=options, embeddings=embeddings, ids=ids, chunk=chunk,
                                progress=progress, on_chunk=on_chunk, locked=True, thumbnails=thumbnails,
                                learn=learn, views=views)
    t0 = time.perf_counter()
    catalog_dir, out_dir = Path(catalog_dir), Path(out_dir)
    check_out_dir(out_dir)
    rows, problems = read_catalog(catalog_dir)
    _report(problems, strict)
    opts = options or BuildOptions()
    opts = replace(opts, dims=dims, whiten=whiten)
    # the ivfpq backend projects the stored rows by PCA again: its learning keeps every axis
    teach = _Learning(extractor, views if learn else 0, progress,
                      None if opts.backend == "ivfpq" else learning.DIMS)
    given = None
    shards = embeddings is not None and Path(embeddings).is_dir()
    if shards:   # made by pi-search index embed: checked against this catalog and model
        if ids is not None:
            raise CatalogError("--ids goes with a .npy file; a shards directory from index embed has its ids")
        return _build_from_shards(catalog_dir, Path(embeddings), out_dir, extractor, rows, problems, opts,
                                  strict=strict, thumbnails=thumbnails, progress=progress, t0=t0,
                                  teach=teach)
    if (embeddings is None) != (ids is None):
        raise CatalogError("--embeddings and --ids go together: the .npy file and its ids, one per line")
    elif embeddings is not None:
        several = next((r for r in rows if r.photo), None)
        if several is not None:   # a .npy with ids holds one vector per id: it cannot say which photo
            raise CatalogError(f"--embeddings with --ids holds one vector per id, but item {several.id!r} "
                               f"has several photos (catalog.csv line {several.line}); embed the catalog "
                               "with pi-search index embed and build from its shards instead")
        given = _load_vectors(Path(embeddings), Path(ids), extractor.dim)
    if embeddings is not None:
        st = Path(embeddings).stat()
        source = f"embeddings:{Path(embeddings).resolve()}:{st.st_size}:{st.st_mtime_ns}"
    else:
        source = "extractor"
    keys = [row_key(r) for r in rows]
    built_from = build_key(extractor, source, rows, keys, opts, thumbnails, problems, teach.views)
    done = _already_built(out_dir, built_from)
    if done is not None:   # e.g. a rerun after a build killed once its bundle was in place
        shutil.rmtree(partial_dir(out_dir), ignore_errors=True)
        log.info("%s: already built from these %d rows with this model and these options; nothing to do",
                 out_dir, len(rows))
        return BuildReport(out_dir, done, done.items, problems, 0, done.items, time.perf_counter() - t0)
    ckpt = _Checkpoints(partial_dir(out_dir), extractor.sha256, extractor.dim, source)
    resumed = sum(k in ckpt.done for k in keys)
    if resumed:
        log.info("resuming: %d of %d items already done in %s", resumed, len(rows), ckpt.dir)
    bar = Progress(len(rows), resumed, progress)
    kept: list[int] = []
    vectors = np.empty((len(rows), extractor.dim), np.float32)
    late: list[Problem] = []
    pending: tuple[list, list, list] = ([], [], [])
    embedded = 0
    try:
        for n, (row, key) in enumerate(zip(rows, keys, strict=True)):
            if key in ckpt.done:
                vec = ckpt.done[key]
            else:
                rel = str(row.image.relative_to(catalog_dir))
                if given is not None and row.id not in given:
                    late.append(Problem(row.line, rel, f"no embedding for id {row.id!r} in {ids}"))
                    continue
                try:
                    rgb = images.read(row.image) if thumbnails or given is None else None
                    thumb = thumbnail(rgb) if thumbnails else None
                    if given is not None:
                        vec = given[row.id]
                    else:
                        vec = embed_catalog_image(extractor, rgb)
                        embedded += 1
                except ImageError as exc:
                    late.append(Problem(row.line, rel, f"unreadable image: {str(exc).split(': ', 1)[-1]}"))
                    bar.update()
                    continue
                except Exception as exc:  # one bad image must not stop a long build
                    late.append(Problem(row.line, rel, f"cannot process image ({type(exc).__name__}: {exc})"))
                    bar.update()
                    continue
                for lst, val in zip(pending, (key, vec, thumb), strict=True):
                    lst.append(val)
                if len(pending[0]) >= chunk:
                    ckpt.save(*pending)
                    pending = ([], [], [])
                    if on_chunk:
                        on_chunk(len(ckpt.done), len(rows))
                bar.update()
            vectors[len(kept)] = vec
            kept.append(n)
        ckpt.save(*pending)
    except BaseException:
        ckpt.close()
        raise
    finally:
        bar.close()
    if given is not None:
        unused = set(given) - {r.id for r in rows}
        if unused:
            log.warning("%d embedding(s) in %s have no catalog row; ignored (first: %s)", len(unused), ids,
                        sorted(unused)[0])
    try:
        items = _Items([rows[i] for i in kept], [keys[i] for i in kept], ckpt)
        manifest, problems = _write_kept(catalog_dir, out_dir, extractor, opts, vectors[:len(kept)], items,
                                         len(rows), problems, late, strict, built_from,
                                         teach.run([rows[i] for i in kept], vectors[:len(kept)]))
    finally:
        ckpt.close()
    shutil.rmtree(ckpt.dir, ignore_errors=True)
    return BuildReport(out_dir, manifest, _items_of(manifest, len(kept)), problems, embedded, resumed,
                       time.perf_counter() - t0)


def _items_of(manifest: Manifest, rows: int) -> int:
    """Items in a built bundle (its rows less the further photos of items)."""
    return int((manifest.catalog or {}).get("items", rows))


def build_key(extractor, source: str, rows: list[Row], keys: list[str], opts: BuildOptions, thumbnails: bool,
              problems: list[Problem], views: int = 0) -> str:
    """What a bundle was built from: the model, the vectors' source, every row (its metadata and its image's
    ``row_key``, in order), the rows skipped, the options, whether it has thumbnails, the catalog framing and
    what it learns (views per item, 0: none; shrinkage). The same key means the same bundle would be written
    again."""
    h = hashlib.sha256(json.dumps({"model": extractor.sha256, "dim": int(extractor.dim), "source": source,
                                   "options": asdict(opts), "thumbnails": bool(thumbnails),
                                   "views": int(views), "framing": catalog_framing(extractor.size),
                                   "shrink": learning.SHRINK, "learned_dims": learning.DIMS,
                                   "skipped": [str(p) for p in problems], "partial": PARTIAL_VERSION},
                                  sort_keys=True, default=str).encode())
    for r, k in zip(rows, keys, strict=True):
        h.update(json.dumps([k, r.title, r.price, r.extra], sort_keys=True, default=str).encode())
    return h.hexdigest()


def _already_built(out_dir: Path, key: str) -> Manifest | None:
    """The manifest of the bundle at ``out_dir`` if it was built with ``key`` and is whole; else None."""
    try:
        manifest = read_manifest(out_dir)
    except BundleError:
        return None
    if (manifest.catalog or {}).get("build_key") != key:
        return None
    try:
        Bundle.open(out_dir).close()   # every byte checked: a damaged bundle is built again
    except BundleError as exc:
        log.warning("%s: built from this catalog but not whole (%s); building it again", out_dir, exc)
        return None
    return manifest


class _Learning:
    """The projection a build learns from its catalog's photos (``pi_search.learn``), or none (0 views)."""

    def __init__(self, extractor, views: int, progress: bool, dims: int | None = None):
        self.extractor, self.views, self.progress, self.dims = extractor, int(views), progress, dims

    def run(self, rows: list[Row], vectors) -> tuple:
        """(``Learned`` or None, manifest info) from the kept ``rows`` and their vectors (row i is row i)."""
        if self.views <= 0 or len(rows) < learning.MIN_ITEMS:
            return None, {}
        sample = learning.sample_rows(len(rows))
        synth_side = learning.synth.ITEM_SIDE   # the views need the item no larger than this
        bar = Progress(len(sample), 0, self.progress, "learning from views of", "learned from")

        def photos():
            for i in sample.tolist():
                try:
                    rgb = images.read(rows[i].image, min_side=synth_side)   # reduced decoding
                except (ImageError, OSError) as exc:
                    log.warning("%s: left out of the learning (%s)", rows[i].image, exc)
                    continue
                yield rows[i].id, rgb, np.asarray(vectors[i], np.float32)

        try:
            return learning.learn(self.extractor, photos(), n_views=self.views, dims=self.dims,
                                  on_item=bar.update)
        finally:
            bar.close()


def _write_kept(catalog_dir: Path, out_dir: Path, extractor, opts: BuildOptions, vectors, items,
                n_rows: int, problems: list[Problem], late: list[Problem], strict: bool,
                key: str | None = None, learned: tuple = (None, {})) -> tuple[Manifest, list[Problem]]:
    """Write the bundle of the kept rows (``vectors`` float32 [n, dim], row i is ``items``' i-th); reports
    the rows that failed while embedding (``late``: fatal with ``strict``). Returns the manifest and every
    skipped row. ``key``: the ``build_key`` recorded in the manifest (a rerun finds it there)."""
    _report(late, strict)
    total_rows = n_rows + len(problems)
    problems = problems + late
    if not len(items):
        raise CatalogError(f"{catalog_dir}: no usable items ({len(problems)} bad row(s)); fix the rows above")
    model = {"name": extractor.name, "sha256": extractor.sha256, "dim": extractor.dim}
    kept = counts(items.item_ids())   # several photos of an item: rows <id>\x1f<n> beside its own
    views = kept["photos"] - kept["items"]
    manifest = write_bundle(out_dir, vectors, items, model=model, options=opts, locked=True,
                            extra_manifest={"catalog": {"source": catalog_dir.name, "rows": total_rows,
                                                        "skipped": len(problems), **kept,
                                                        **({"build_key": key} if key else {})},
                                            **({"changes": {"views": views}} if views else {})},
                            learned=learned[0], learned_info=learned[1])
    if problems:
        log.warning("%d bad row(s) skipped, %d items indexed", len(problems), kept["items"])
    return manifest, problems


class _RowItems:
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


def _build_from_shards(catalog_dir: Path, shards_dir: Path, out_dir: Path, extractor, rows: list[Row],
                       problems: list[Problem], opts: BuildOptions, *, strict: bool, thumbnails: bool,
                       progress: bool, t0: float, teach: _Learning | None = None) -> BuildReport:
    """A bundle from the shards of ``index embed``, streamed: one shard in memory at a time, the vectors
    gathered in a memory map beside ``out_dir`` (float32 [n, dim]; its file unlinked at once), the items
    written as they are made. Memory stays bounded by a shard and the catalog's rows, whatever the
    catalog's size."""
    tmp = out_dir.parent / f".{out_dir.name}.fold-embeddings-{os.getpid()}.npy"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    vectors = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(max(len(rows), 1),
                                                                                  extractor.dim))
    tmp.unlink()   # the mapping keeps it while this build runs; a killed build leaves nothing behind
    kept: list[int] = []
    late: list[Problem] = []
    bar = Progress(len(rows), 0, progress)
    try:
        for shard in shards_for_build(shards_dir, catalog_dir, rows, extractor):
            n = len(shard.rows)
            vectors[len(kept):len(kept) + n] = shard.vectors
            kept.extend(int(r) for r in shard.rows)
            for r, reason in zip(shard.failed_rows.tolist(), shard.failed_reasons, strict=True):
                row = rows[r]
                late.append(Problem(row.line, str(row.image.relative_to(catalog_dir)), reason))
            bar.update(n + len(shard.failed_rows))
        bar.close()   # before the bundle's own log lines
        items = _RowItems(rows, kept, thumbnails)
        learned = teach.run([rows[i] for i in kept], vectors[:len(kept)]) if teach else (None, {})
        manifest, problems = _write_kept(catalog_dir, out_dir, extractor, opts, vectors[:len(kept)], items,
                                         len(rows), problems, late, strict, learned=learned)
    finally:
        bar.close()
        del vectors
    if items.no_thumb:
        log.warning("%d item(s) have no thumbnail: their photo could not be read again", items.no_thumb)
    return BuildReport(out_dir, manifest, _items_of(manifest, len(kept)), problems, 0, 0,
                       time.perf_counter() - t0)
