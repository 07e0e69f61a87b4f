"""Builds a bundle from a catalog: its vectors (embedded here in resumable shards, or given), then written."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import images
from ..bundle import (
    DEFAULT_WHITEN,
    BuildOptions,
    Bundle,
    Manifest,
    bundle_lock,
    check_out_dir,
    counts,
    get_backend,
    read_manifest,
    write_bundle,
)
from ..errors import BundleError, CatalogError, ImageError
from ..learn import catalog as learning
from ..progress import Progress
from . import shards as sh
from .catalog import Problem, Row, read_catalog, report_problems
from .fold import Folded, RowItems, ShardItems, fold
from .local import embed_pending
from .shards import catalog_framing
from .sources import FromPhotos, FromShards, FromVectors, Source, source_of

log = logging.getLogger(__name__)

CHUNK = 64           # rows per shard of a build (between two resume checkpoints)
PARTIAL_VERSION = 1  # part of the build key: bundles built before stay built

__all__ = ["CHUNK", "BuildReport", "BuildSettings", "FromPhotos", "FromShards", "FromVectors", "Source",
           "build_bundle", "build_key", "interrupted_note", "partial_dir", "row_key", "source_of"]


@dataclass(frozen=True)
class BuildSettings:
    """How a bundle is built (whatever its vectors' source).

    ``dims``: PCA dimensions (-1: automatic, None: no projection); ``whiten``: whiten the projection;
    ``strict``: any bad row is a CatalogError before anything is written (else skipped with a warning);
    ``options``: the index options (trees, search mode, store, backend...); ``thumbnails``: thumbnails in the
    bundle (False, with shards and without ``learn``: no image is read at all); ``learn``: learn the
    bundle's projection from ``views`` synthetic camera views of each catalog photo (``pi_search.learn``);
    ``chunk``: rows per shard when embedding here; ``progress``: progress on stderr; ``on_chunk(done,
    total)``: called after each shard written; ``locked``: the caller holds the bundle's lock.
    """

    dims: int | None = -1
    whiten: bool = DEFAULT_WHITEN
    strict: bool = False
    options: BuildOptions | None = None
    thumbnails: bool = True
    learn: bool = True
    views: int = learning.VIEWS
    chunk: int = CHUNK
    progress: bool = True
    on_chunk: Callable[[int, int], None] | None = None
    locked: bool = False

    def index_options(self) -> BuildOptions:
        """The bundle writer's options: ``options`` with these ``dims`` and ``whiten``."""
        return replace(self.options or BuildOptions(), dims=self.dims, whiten=self.whiten)


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
    for f in sorted(sh.shard_files(partial).values()) if partial.is_dir() else []:
        try:
            kept += len(sh.read_shard(f, vectors=False).rows)
        except (OSError, ValueError):
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


def build_bundle(catalog_dir: str | Path, out_dir: str | Path, extractor,
                 settings: BuildSettings | None = None, *, source: Source | None = None,
                 **changes) -> BuildReport:
    """Read ``catalog_dir``, take the vectors of its good rows from ``source`` (default: embed its photos
    here), write the bundle ``out_dir``; ``changes``: fields of ``settings`` to change (``progress=False``).

    Bad rows (missing or unreadable image, duplicate id, empty title) are skipped with a warning (see
    ``BuildSettings.strict``). Embedding here writes shards of ``chunk`` rows in ``OUT.partial/`` (the
    engine of ``index embed``) so an interrupted build resumes; they are deleted after success. A rerun
    with nothing changed (``build_key``) keeps the bundle. Holds the bundle's lock throughout (a second
    build of the same ``out_dir`` waits for this one) unless the caller does.
    """
    settings = replace(settings or BuildSettings(), **changes)
    catalog_dir, out_dir = Path(catalog_dir), Path(out_dir)
    check_out_dir(out_dir)
    held = contextlib.nullcontext() if settings.locked else bundle_lock(out_dir, what="build")
    with held:
        return _build(catalog_dir, out_dir, extractor, settings, source or FromPhotos())


@dataclass
class _Build:
    """One build under way: its inputs and the catalog rows read."""

    catalog_dir: Path
    out_dir: Path
    extractor: object
    settings: BuildSettings
    rows: list[Row]
    problems: list[Problem]
    t0: float

    @property
    def views(self) -> int:
        """Views per item the build learns from (0: it learns nothing)."""
        return self.settings.views if self.settings.learn else 0

    def learning(self, n: int) -> _Learning:
        """What the build learns from ``n`` kept rows. The projection keeps ``learning.DIMS`` axes; with a
        backend that stores PCA coordinates (ivfpq), as many as its store has dims, so its PCA turns the
        whole learned space and the store holds all of it (docs/scale.md: ten million items)."""
        opts = self.settings.index_options()
        dims = learning.DIMS
        if get_backend(opts.backend).store_space == "pca":
            dims = int(opts.resolved(n, int(self.extractor.dim)).dims)
        return _Learning(self.extractor, self.views, self.settings.progress, dims)

    def write(self, folded: Folded, items, key: str | None, shards: Path | None = None,
              by_embed: bool = False) -> tuple[Manifest, list[Problem]]:
        """Learn the projection from the kept rows (from the views in ``shards`` when they hold some), then
        write the bundle (see ``_write_kept``). ``by_embed``: ``index embed`` made the shards, not this
        build."""
        found = sh.ShardsManifest.read(shards) if shards is not None else None
        learner = self.learning(len(folded.kept))
        if found is not None and found.learning and learner.views:
            made_by = f"index embed ({found.engine})" if by_embed else None
            learned = learner.from_shards(shards, found.learning, folded, made_by)
        else:
            if shards is not None and learner.views:
                log.info("%s holds no views to learn from (made with --no-learn); making them here", shards)
            kept_rows = [self.rows[i] for i in folded.kept]
            learned = learner.run(kept_rows, folded.vectors)
        return _write_kept(self.catalog_dir, self.out_dir, self.extractor, self.settings.index_options(),
                           folded.vectors, items, len(self.rows), self.problems, folded.late,
                           self.settings.strict, key, learned)

    def report(self, manifest: Manifest, kept: int, problems: list[Problem], embedded: int = 0,
               resumed: int = 0) -> BuildReport:
        return BuildReport(self.out_dir, manifest, _items_of(manifest, kept), problems, embedded, resumed,
                           time.perf_counter() - self.t0)


def _build(catalog_dir: Path, out_dir: Path, extractor, settings: BuildSettings,
           source: Source) -> BuildReport:
    t0 = time.perf_counter()
    check_out_dir(out_dir)
    rows, problems = read_catalog(catalog_dir)
    report_problems(problems, settings.strict)
    job = _Build(catalog_dir, out_dir, extractor, settings, rows, problems, t0)
    if isinstance(source, FromShards):
        return _from_shards(job, source)
    return _embedded_here(job, source)


def _from_shards(job: _Build, source: FromShards) -> BuildReport:
    """A bundle from the shards of ``index embed``, streamed (``fold``), thumbnails read from the photos."""
    bar = Progress(len(job.rows), 0, job.settings.progress)
    try:
        shards = sh.shards_for_build(source.directory, job.catalog_dir, job.rows, job.extractor)
        folded = fold(shards, job.rows, job.catalog_dir, job.out_dir, job.extractor.dim, bar)
        bar.close()   # before the bundle's own log lines
        items = RowItems(job.rows, folded.kept, job.settings.thumbnails)
        manifest, problems = job.write(folded, items, None, source.directory, by_embed=True)
    finally:
        bar.close()
    if items.no_thumb:
        log.warning("%d item(s) have no thumbnail: their photo could not be read again", items.no_thumb)
    return job.report(manifest, len(folded.kept), problems)


def _embedded_here(job: _Build, source: FromPhotos | FromVectors) -> BuildReport:
    """Embed the catalog's photos (or take the given vectors) into shards in ``OUT.partial`` with the local
    engine, with the views of the learning sample (as ``index embed`` makes them), resuming from the shards
    there, then learn from them, write the bundle and delete them. A rerun of an unchanged build keeps the
    bundle and does nothing."""
    s, rows, extractor = job.settings, job.rows, job.extractor
    given = _given_vectors(source, rows, extractor.dim)
    keys = [row_key(r) for r in rows]
    stamp = source.stamp if given is not None else None
    built_from = build_key(extractor, stamp or "extractor", rows, keys, s.index_options(), s.thumbnails,
                           job.problems, job.views)
    partial = partial_dir(job.out_dir)
    done = _already_built(job.out_dir, built_from)
    if done is not None:   # e.g. a rerun after a build killed once its bundle was in place
        shutil.rmtree(partial, ignore_errors=True)
        log.info("%s: already built from these %d rows with this model and these options; nothing to do",
                 job.out_dir, len(rows))
        return BuildReport(job.out_dir, done, done.items, job.problems, 0, done.items,
                           time.perf_counter() - job.t0)
    learn = job.views if len(rows) >= learning.MIN_ITEMS else 0
    plan = sh.Plan.from_rows(job.catalog_dir, rows, s.chunk, keys=keys, thumbnails=s.thumbnails, views=learn)
    want = sh.model_header(plan, extractor, stamp)
    writer = sh.ShardWriter(partial, want, plan, discard=True)
    try:
        if writer.done_kept:
            log.info("resuming: %d of %d items already done in %s", writer.done_kept, len(rows), partial)
        bar = Progress(len(rows), writer.done_rows, s.progress)
        try:
            vectors_of = None if given is None else _unit_vectors(given, source, extractor.dim)
            embedded, _, _ = embed_pending(extractor, plan, writer, bar, s.on_chunk, vectors_of)
        finally:
            bar.close()
        writer.finish("local")
    finally:
        writer.close()
    if given is not None:
        unused = set(given) - {r.id for r in rows}
        if unused:
            log.warning("%d embedding(s) in %s have no catalog row; ignored (first: %s)", len(unused),
                        source.ids, sorted(unused)[0])
    folded = fold(sh.checked_shards(partial, plan, want), rows, job.catalog_dir, job.out_dir, extractor.dim)
    items = ShardItems(rows, folded.kept, partial) if s.thumbnails else RowItems(rows, folded.kept, False)
    manifest, problems = job.write(folded, items, built_from, partial)
    shutil.rmtree(partial, ignore_errors=True)
    return job.report(manifest, len(folded.kept), problems, 0 if given is not None else embedded,
                      writer.done_kept)


def _given_vectors(source: Source, rows: list[Row], dim: int) -> dict[str, np.ndarray] | None:
    """The vectors of a ``FromVectors`` source by id (None for the photos)."""
    if not isinstance(source, FromVectors):
        return None
    several = next((r for r in rows if r.photo), None)
    if several is not None:   # a .npy with ids holds one vector per id: it cannot say which photo
        raise CatalogError(f"--embeddings with --ids holds one vector per id, but item {several.id!r} "
                           f"has several photos (catalog.csv line {several.line}); embed the catalog "
                           "with pi-search index embed and build from its shards instead")
    return source.load(dim)


def _unit_vectors(given: dict[str, np.ndarray], source: FromVectors, dim: int) -> Callable[[dict], dict]:
    """For a unit of work: ``given`` float32 [n, dim] (zeros where missing) and ``missing`` [n] (the reason,
    or None) from the vectors by id."""

    def entries(work: dict) -> dict:
        vecs = np.zeros((len(work["ids"]), dim), np.float32)
        missing: list[str | None] = []
        for n, i in enumerate(work["ids"]):
            if i in given:
                vecs[n] = given[i]
                missing.append(None)
            else:
                missing.append(f"no embedding for id {i!r} in {source.ids}")
        return {"given": vecs, "missing": missing}

    return entries


def _items_of(manifest: Manifest, rows: int) -> int:
    """Items in a built bundle (its rows less the further photos of items)."""
    return int((manifest.catalog or {}).get("items", rows))


def build_key(extractor, source: str, rows: list[Row], keys: list[str], opts: BuildOptions, thumbnails: bool,
              problems: list[Problem], views: int = 0) -> str:
    """What a bundle was built from: the model, the vectors' source, every row (its metadata and its image's
    ``row_key``, in order), the rows skipped, the options, whether it has thumbnails, the catalog framing and
    what it learns (views per item, 0: none; shrinkage). The same key means the same bundle would be written
    again."""
    # a backend storing PCA coordinates learns as many axes as its store keeps (``_Build.learning``)
    learned_dims = "store" if get_backend(opts.backend).store_space == "pca" else learning.DIMS
    h = hashlib.sha256(json.dumps({"model": extractor.sha256, "dim": int(extractor.dim), "source": source,
                                   "options": asdict(opts), "thumbnails": bool(thumbnails),
                                   "views": int(views), "framing": catalog_framing(extractor.size),
                                   "shrink": learning.SHRINK, "learned_dims": learned_dims,
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

    def from_shards(self, shards: Path, made: dict, folded: Folded, made_by: str | None = None) -> tuple:
        """(``Learned`` or None, manifest info) from the views made in ``shards`` (``made``: its manifest's
        ``learning``; ``made_by``: the command that made them, when not this build), each paired with its
        row's vector as indexed (``folded``)."""
        n_views = int(made["views"])
        if n_views != self.views:
            log.info("learning from the %d views per item made by index embed in %s (not --views %d)",
                     n_views, shards, self.views)
        kept = np.asarray(folded.kept, np.int64)
        bar = Progress(int(made.get("sampled", 0)), 0, self.progress, "learning from views of",
                       "learned from")

        def pairs():
            for rows, vecs, _ in sh.shard_views(shards, int(self.extractor.dim)):
                if not len(rows):
                    continue
                cuts = np.flatnonzero(np.diff(rows)) + 1
                for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(rows)], strict=True):
                    i = int(np.searchsorted(kept, rows[a]))
                    if i < len(kept) and kept[i] == rows[a]:   # a row whose photo failed has no vector
                        yield np.asarray(folded.vectors[i], np.float32), vecs[a:b]

        try:
            learned, info = learning.fit_views(int(self.extractor.dim), pairs(), n_views=n_views,
                                               dims=self.dims, on_item=bar.update)
        finally:
            bar.close()
        if info and made_by:   # the seconds are the fit's: the views were made with the catalog's vectors
            info["views_made_by"] = made_by
        return learned, info


def _write_kept(catalog_dir: Path, out_dir: Path, extractor, opts: BuildOptions, vectors, items,
                n_rows: int, problems: list[Problem], late: list[Problem], strict: bool,
                key: str | None = None, learned: tuple = (None, {})) -> tuple[Manifest, list[Problem]]:
    """Write the bundle of the kept rows (``vectors`` float32 [n, dim], row i is ``items``' i-th); reports
    the rows that failed while embedding (``late``: fatal with ``strict``). Returns the manifest and every
    skipped row. ``key``: the ``build_key`` recorded in the manifest (a rerun finds it there)."""
    report_problems(late, strict)
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
