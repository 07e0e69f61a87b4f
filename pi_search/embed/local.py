"""The local engine: one process embeds a catalog's shards one after another (index embed, index build)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import images
from ..errors import CatalogError, ImageError
from ..images import thumbnail
from ..learn import catalog as learning
from ..model.framing import embed_catalog_image
from ..progress import Progress
from . import shards as sh
from .catalog import Problem, read_catalog, report_problems

log = logging.getLogger(__name__)


@dataclass
class EmbedReport:
    """What an embed run did: shards and rows written now, found done already, failed rows, time."""

    out_dir: Path
    engine: str
    rows: int
    shards: int
    embedded: int = 0
    resumed: int = 0
    failed: int = 0
    seconds: float = 0.0
    skipped: list[Problem] = field(default_factory=list)
    manifest: sh.ShardsManifest | None = None
    views: int = 0   # views to learn from made now

    def as_dict(self) -> dict:
        return {"out": str(self.out_dir), "engine": self.engine, "rows": self.rows, "shards": self.shards,
                "embedded": self.embedded, "resumed": self.resumed, "failed": self.failed,
                "views": self.views,
                "learning": self.manifest.learning if self.manifest else None,
                "skipped": len(self.skipped), "problems": [str(p) for p in self.skipped],
                "seconds": round(self.seconds, 2),
                "model": asdict(self.manifest.model) if self.manifest else None,
                "framing": self.manifest.framing if self.manifest else None}


def embed_one(extractor, data: bytes, name: str) -> np.ndarray:
    """One catalog photo (encoded file bytes) -> float32 [dim], L2-normalised: decoded like ``images.read``
    and framed like ``index build`` does (``framing.embed_catalog_image``), so the vectors are the same."""
    return embed_catalog_image(extractor, images.decode(data, name=name))


def framing_threads(threads: int) -> int:
    """Let OpenCV (decoding, resizing, tilting the photos) use ``threads`` threads, as many as the
    interpreter, and return the count it had: an engine then keeps to the CPU share it was given (one core
    by default; a Ray actor's share of its node) instead of spreading OpenCV's work over every core, which
    cost more CPU than it saved time here."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(max(1, int(threads)))
    return before


def read_bytes(path: str) -> tuple[bytes | None, str | None]:
    """The file's bytes, or None and the reason in the words ``index build`` uses."""
    try:
        return Path(path).read_bytes(), None
    except OSError as exc:
        return None, f"unreadable image: cannot read ({exc.strerror or exc})"


def embed_work(extractor, work: dict, out_dir: str | Path, on_row: Callable[[], None] | None = None) -> dict:
    """Embed one shard's rows and write the shard file; returns a summary (no vectors).

    ``work`` (``Plan.work``): ``shard`` int, ``rows`` int64 [n], ``ids``, ``images`` and ``paths`` [n] str,
    and optionally ``data`` [n] (the files' bytes, None where reading failed) with ``errors`` [n] (the
    reason, or None): then nothing is read here; ``keys`` [n] str (kept in the shard); ``thumbnails``
    (a thumbnail of each photo kept in the shard, made from the one decoding); ``given`` float32 [n, dim]
    vectors made elsewhere with ``missing`` [n] (why a row has none, or None): then the model is not run,
    and a photo is read only for its thumbnail; ``learn`` (``shards.Learning.work``, as JSON): the views of
    the shard's rows in the learning sample, embedded and kept in the shard. ``on_row()`` is called after
    each row (done or failed).
    """
    rows = np.asarray(work["rows"], np.int64)
    paths = list(work["paths"])
    data = work.get("data")
    errors = work.get("errors")
    want_thumbs = bool(work.get("thumbnails"))
    given, missing = work.get("given"), work.get("missing")
    keep, vecs, thumbs, failed, reasons = [], [], [], [], []
    for n, path in enumerate(paths):
        blob = err = vec = thumb = None
        if given is not None and missing[n]:
            err = missing[n]
        elif given is not None and not want_thumbs:
            vec = given[n]       # nothing to read
        elif data is None:
            blob, err = read_bytes(path)
        else:
            blob, err = data[n], errors[n]
        if blob is not None and err is None:
            try:
                rgb = images.decode(blob, name=path)
                thumb = thumbnail(rgb) if want_thumbs else None
                vec = embed_catalog_image(extractor, rgb) if given is None else given[n]
            except ImageError as exc:
                err = f"unreadable image: {str(exc).split(': ', 1)[-1]}"
            except Exception as exc:  # one bad image must not stop a long run
                err = f"cannot process image ({type(exc).__name__}: {exc})"
            del blob
        if on_row is not None:
            on_row()
        if err is not None:
            failed.append(int(rows[n]))
            reasons.append(err)
            continue
        keep.append(n)
        vecs.append(vec)
        thumbs.append(thumb)
    dim = extractor.dim
    vectors = np.stack(vecs).astype(np.float32) if vecs else np.empty((0, dim), np.float32)
    ids, names = list(work["ids"]), list(work["images"])
    learn = work.get("learn")
    views = None
    if learn:
        learn = json.loads(learn) if isinstance(learn, str) else learn
        views = learning_views(extractor, learn, rows, ids, paths, set(int(r) for r in rows[keep]))
    sh.write_shard(out_dir, int(work["shard"]), rows[keep], [ids[n] for n in keep],
                   [names[n] for n in keep], vectors, np.array(failed, np.int64), reasons,
                   keys=list(work["keys"]) if work.get("keys") is not None else None,
                   thumbs=thumbs if want_thumbs else None, views=views)
    return {"shard": int(work["shard"]), "embedded": len(keep), "failed": len(failed),
            "views": 0 if views is None else len(views[0])}


def learning_views(extractor, learn: dict, rows: np.ndarray, ids: list[str], paths: list[str],
                   embedded: set[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The views of a shard's rows in the learning sample (``learn``: ``shards.Learning.work``), made as
    ``index build`` makes them (``learn.catalog.item_views``: the same views for the same items, whatever
    the shard or the engine): ``view_rows`` int64 [v], ``views`` float32 [v, dim], ``view_held`` bool [v].
    Only rows embedded (``embedded``) get views (the others keep their place among the items shown beside
    another); each photo is read again, reduced (a shard's photos are not kept in memory)."""
    where = {int(r): n for n, r in enumerate(rows.tolist())}
    n_views = int(learn["views"])
    read: list[int] = []

    def photos():   # every sampled row, in order: None where it has no photo to make views of
        for r in learn["rows"]:
            rgb = None
            if r in embedded:
                try:
                    rgb = images.read(paths[where[r]], min_side=learning.synth.ITEM_SIDE)
                    read.append(r)
                except (ImageError, OSError) as exc:   # changed since it was embedded a moment ago
                    log.warning("%s: left out of the learning (%s)", paths[where[r]], exc)
            yield ids[where[r]], rgb

    others = [learning.synth.Stamp(p) for p in learn["before"]]
    out_rows, out_vecs, out_held = [], [], []
    made = learning.item_views(extractor, photos(), n_views, held_every=int(learn["held_every"]),
                               first=int(learn["first"]), others=others)
    for i, v in enumerate(made):   # in photo order: the i-th views are of read[i]
        out_rows += [read[i]] * len(v)
        out_vecs.append(v)
        out_held += [False] * n_views + [True] * (len(v) - n_views)
    dim = int(extractor.dim)
    vecs = np.concatenate(out_vecs) if out_vecs else np.empty((0, dim), np.float32)
    return np.asarray(out_rows, np.int64), vecs, np.asarray(out_held, bool)


def embed_pending(extractor, plan: sh.Plan, writer: sh.ShardWriter, bar: Progress | None = None,
                  on_shard: Callable[[int, int], None] | None = None,
                  given: Callable[[dict], dict] | None = None) -> tuple[int, int, int]:
    """The local executor: embed every pending shard of ``writer`` here, one after another, with OpenCV
    kept to the interpreter's threads; returns ``(embedded, failed)`` rows and the views to learn from
    made. ``bar`` advances by row,
    ``on_shard(rows done, rows planned)`` is called after each shard file is written; ``given(work)``: the
    ``given`` and ``missing`` entries of a unit of work whose vectors were made elsewhere."""
    embedded = failed = views = 0
    done = writer.done_rows
    threads_before = framing_threads(extractor.num_threads)
    try:
        for k in writer.pending:
            work = plan.work(k)
            if given is not None:
                work.update(given(work))
            result = embed_work(extractor, work, writer.dir, bar.update if bar else None)
            embedded += result["embedded"]
            failed += result["failed"]
            views += result["views"]
            done += result["embedded"] + result["failed"]
            if on_shard is not None:
                on_shard(done, plan.rows)
    finally:
        framing_threads(threads_before)
    return embedded, failed, views


def prepare(catalog_dir: str | Path, out_dir: str | Path, extractor, shard_rows: int, strict: bool = False,
            views: int = 0):
    """Read the catalog, plan the shards and open ``out_dir`` for writing (locked, resumable); ``views``:
    the views of each item of the learning sample to make too (0: none).

    Returns ``(plan, writer, problems)``. Uses the extractor only for its name, sha256, dim and input size.
    """
    catalog_dir = Path(catalog_dir)
    rows, problems = read_catalog(catalog_dir)
    report_problems(problems, strict)
    if not rows:
        raise CatalogError(f"{catalog_dir}: no usable rows ({len(problems)} bad row(s)); fix the rows above")
    out_dir = Path(out_dir)
    found = sh.ShardsManifest.read(out_dir) if out_dir.is_dir() else None
    if found is not None and found.shard_rows != shard_rows:
        log.info("%s: resuming with its own shards of %s rows", out_dir, found.shard_rows)
        shard_rows = found.shard_rows
    plan = sh.Plan.from_rows(catalog_dir, rows, shard_rows, views=views)
    return plan, sh.ShardWriter(out_dir, sh.model_header(plan, extractor), plan), problems


def embed_local(catalog_dir: str | Path, out_dir: str | Path, extractor, *,
                shard_rows: int = sh.DEFAULT_SHARD_ROWS, strict: bool = False,
                progress: bool = True, views: int = learning.VIEWS) -> EmbedReport:
    """Embed every usable row of ``catalog_dir`` into shards in ``out_dir`` with ``extractor``, one shard
    after another, with ``views`` synthetic camera views of each item of the learning sample (0: none);
    shards already written (an earlier run) are kept and skipped."""
    t0 = time.perf_counter()
    plan, writer, problems = prepare(catalog_dir, out_dir, extractor, shard_rows, strict, views)
    report = EmbedReport(Path(out_dir), "local", plan.rows, plan.shards, resumed=writer.done_rows,
                         skipped=problems)
    bar = Progress(plan.rows, writer.done_rows, progress)
    try:
        report.embedded, report.failed, report.views = embed_pending(extractor, plan, writer, bar)
        report.manifest = writer.finish("local")
    finally:
        bar.close()
        writer.close()
    report.failed = report.manifest.failed
    report.seconds = time.perf_counter() - t0
    return report
