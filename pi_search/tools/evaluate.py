"""Retrieval quality of catalog + queries + truth file: recall@k, mAP, exact vs Annoy search, PNG report."""

from __future__ import annotations

import csv
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import images
from ..bundle.reader import Bundle
from ..bundle.write import BuildOptions
from ..embed.build import build_bundle
from ..embed.catalog import read_catalog
from ..errors import CatalogError, PiSearchError
from ..model import look as looking
from ..model import settle as settling
from ..model.extractor import Extractor
from ..model.framing import embed_catalog_image, embed_query_image

log = logging.getLogger(__name__)

KS = (1, 5, 10)
CURVE_K = 20
ANN_DEPTH = 100  # how many results are asked of the bundle; a truth item further down counts as not found

EmbedFn = Callable[[object, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Truth:
    """One query image, the catalog id it shows, and the truth file's other columns (its conditions)."""

    path: Path
    item_id: str
    conditions: dict = field(default_factory=dict, compare=False)


# Per-condition breakdown, when the truth file has the hard benchmark's columns (cover, offset, second_item,
# dim): (condition, column, bins as (label, test on the column's text)).
CONDITIONS = (
    ("size", "cover", (("cover < 12%", lambda v: float(v) < 0.12),
                       ("cover 12-20%", lambda v: 0.12 <= float(v) < 0.20),
                       ("cover >= 20%", lambda v: float(v) >= 0.20))),
    ("distance from centre", "offset", (("offset < 0.25", lambda v: float(v) < 0.25),
                                        ("offset 0.25-0.5", lambda v: 0.25 <= float(v) < 0.5),
                                        ("offset >= 0.5", lambda v: float(v) >= 0.5))),
    ("second object", "second_item", (("with", lambda v: bool(v)), ("without", lambda v: not v))),
    ("light", "dim", (("dim", lambda v: v == "1"), ("normal", lambda v: v == "0"))),
)


@dataclass
class Run:
    """The outcome of one (model, search) pair: the 1-based rank of each query's truth item (0: not found)."""

    model: str
    search: str
    ranks: np.ndarray
    query_ms: float
    top: list[list[tuple[str, float]]] = field(default_factory=list)  # first results per query (id, score)

    def metrics(self) -> dict:
        return {"model": self.model, "search": self.search, **metrics(self.ranks),
                "query_ms": round(self.query_ms, 2)}


def metrics(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict:
    """recall@k (share of queries whose truth item is among the first k results) and mAP.

    With one relevant item per query, average precision is 1/rank of that item, so mAP is the mean
    reciprocal rank; a query whose truth item was not returned at all (rank 0) contributes 0.
    """
    r = np.asarray(ranks, dtype=np.int64)
    if r.size == 0:
        raise PiSearchError("no queries to evaluate: the truth file lists none")
    found = r > 0
    out = {f"recall@{k}": round(float((found & (r <= k)).mean()), 4) for k in ks}
    out["map"] = round(float(np.where(found, 1.0 / np.maximum(r, 1), 0.0).mean()), 4)
    out["queries"] = int(r.size)
    return out


def recall_curve(ranks: np.ndarray, kmax: int = CURVE_K) -> list[float]:
    r = np.asarray(ranks)
    return [float(((r > 0) & (r <= k)).mean()) for k in range(1, kmax + 1)]


def by_condition(ranks: np.ndarray, truth: Sequence[Truth],
                 firsts: Sequence[str] | None = None) -> list[dict]:
    """Recall@1/5 per bin of each condition in ``CONDITIONS`` whose column the truth file has.

    ``firsts`` (the first result's id per query) adds, for the second-object bins, how often the second
    object itself came first. Empty when the truth file has none of the columns.
    """
    r = np.asarray(ranks)
    rows = []
    for name, column, bins in CONDITIONS:
        if not truth or column not in truth[0].conditions:
            continue
        for label, test in bins:
            sel = np.array([test(t.conditions.get(column, "")) for t in truth], bool)
            if not sel.any():
                continue
            row = {"condition": name, "bin": label, "queries": int(sel.sum()),
                   "recall@1": round(float(((r > 0) & (r <= 1))[sel].mean()), 4),
                   "recall@5": round(float(((r > 0) & (r <= 5))[sel].mean()), 4)}
            if column == "second_item" and firsts is not None:
                row["second_first"] = sum(1 for t, f, s in zip(truth, firsts, sel, strict=True)
                                          if s and f and f == t.conditions.get("second_item"))
            rows.append(row)
    return rows


def read_truth(truth_csv: str | Path, queries_dir: str | Path | None = None) -> list[Truth]:
    """Rows of a truth CSV (header ``query_path,item_id``); paths are relative to ``queries_dir`` (default:
    the CSV's folder) unless absolute."""
    truth_csv = Path(truth_csv)
    base = Path(queries_dir) if queries_dir else truth_csv.parent
    try:
        text = truth_csv.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise PiSearchError(f"{truth_csv}: cannot read the truth file ({exc.strerror or exc})") from exc
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or not {"query_path", "item_id"} <= set(reader.fieldnames):
        raise PiSearchError(f"{truth_csv}: the header must be query_path,item_id")
    rows = []
    for n, rec in enumerate(reader, start=2):
        q, item = (rec.get("query_path") or "").strip(), (rec.get("item_id") or "").strip()
        if not q or not item:
            raise PiSearchError(f"{truth_csv} line {n}: empty query_path or item_id")
        p = Path(q)
        extra = {k: (v or "").strip() for k, v in rec.items() if k not in ("query_path", "item_id") and k}
        rows.append(Truth(p if p.is_absolute() else base / p, item, extra))
    if not rows:
        raise PiSearchError(f"{truth_csv}: no queries listed")
    return rows


def load_catalog(catalog_dir: str | Path) -> tuple[list[str], list[Path], list[str]]:
    """Ids, image paths and titles of a catalog directory (catalog.csv or a folder of images)."""
    rows, problems = read_catalog(catalog_dir)
    for p in problems:
        log.warning("catalog: %s", p)
    if not rows:
        raise CatalogError(f"{catalog_dir}: no usable catalog items")
    return [r.id for r in rows], [Path(r.image) for r in rows], [r.title for r in rows]


def embed_files(extractor, paths: Sequence[Path], fn: EmbedFn) -> tuple[np.ndarray, list[float]]:
    """Embeddings float32 [n, dim] of image files through ``fn(extractor, rgb)``, and seconds per image."""
    vecs, secs = [], []
    for p in paths:
        rgb = images.read(p)
        t0 = time.perf_counter()
        vecs.append(fn(extractor, rgb))
        secs.append(time.perf_counter() - t0)
    return np.stack(vecs).astype(np.float32), secs


def exact_ranks(queries: np.ndarray, catalog: np.ndarray, truth_idx: np.ndarray,
                top: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact cosine search of every query (float32 [q, dim]) over the catalog (float32 [n, dim]).

    Returns the 1-based rank of each truth item (ties counted against it), and the ``top`` best catalog
    indices and scores per query.
    """
    s = queries @ catalog.T
    own = s[np.arange(len(truth_idx)), truth_idx]
    ranks = 1 + (s > own[:, None]).sum(axis=1)
    order = np.argsort(-s, axis=1, kind="stable")[:, :top]
    return ranks.astype(np.int64), order, np.take_along_axis(s, order, axis=1)


def _bundle_ranks(catalog_dir: Path, ids: list[str], cat_vecs: np.ndarray, q_vecs: np.ndarray,
                  truth: list[Truth], extractor, work: Path,
                  settle: bool = False, learn: bool = True
                  ) -> tuple[np.ndarray, list, np.ndarray | None, list | None, float]:
    """Ranks through a real bundle built with Annoy forced on (approximate candidates, then re-ranking).

    ``settle``: also the ranks after the daemon's settled look (``settling.settle_windows`` embedded and
    searched, fused by ``settling.fuse`` with the kept framing's matches), its first results and median
    seconds.
    """
    np.save(work / "emb.npy", cat_vecs)
    (work / "ids.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    build_bundle(catalog_dir, work / "bundle", extractor, embeddings=work / "emb.npy", ids=work / "ids.txt",
                 options=BuildOptions(search="ann"), progress=False, learn=learn)
    bundle = Bundle.open(work / "bundle", extractor=extractor)
    ranks, tops, s_ranks, s_tops, secs = [], [], [], [], []

    def rank(found: list[str], item: str) -> int:
        return found.index(item) + 1 if item in found else 0

    try:
        for vec, t in zip(q_vecs, truth, strict=True):
            kept = bundle.search(vec, ANN_DEPTH)
            found = [m.id for m in kept]
            ranks.append(rank(found, t.item_id))
            tops.append(found[:3])
            if settle:
                rgb = images.read(t.path)
                t0 = time.perf_counter()
                wins = [(box, bundle.search(looking.embed_window(extractor, rgb, box), settling.SETTLE_DEPTH))
                        for box in looking.windows_for(rgb)]
                fused, _, _ = settling.fuse(kept[:settling.SETTLE_DEPTH], wins, ANN_DEPTH)  # as model.look
                secs.append(time.perf_counter() - t0)
                s_found = [m.id for m in fused]
                s_ranks.append(rank(s_found, t.item_id))
                s_tops.append([(m.id, m.score) for m in fused[:3]])
    finally:
        bundle.close()
    if not settle:
        return np.asarray(ranks, np.int64), tops, None, None, 0.0
    return (np.asarray(ranks, np.int64), tops, np.asarray(s_ranks, np.int64), s_tops,
            statistics.median(secs))


def evaluate(catalog_dir: str | Path, truth_csv: str | Path, models: Sequence[str | Path | None] = (None,), *,
             queries_dir: str | Path | None = None, annoy: bool = True, threads: int = 1,
             catalog_fn: EmbedFn | None = None, query_fn: EmbedFn | None = None,
             settle: bool | None = None, learn: bool = True) -> dict:
    """Evaluate each model with exact search and (``annoy``) through an Annoy bundle.

    ``settle`` (default: with ``annoy``; the look every way in uses, ``model.look``) adds
    a "settled" run per model: the daemon's settled look at the whole frame through the same bundle; its
    ms/frame is the kept framing's plus the settled look's. ``learn``: the bundle learns its projection
    from its catalog's photos, as ``index build`` does by default (the exact run never does: the model's
    embeddings as they come).

    Returns ``{"catalog", "items", "queries", "runs": [metrics...], "curves", "misses"}``; ``misses`` lists
    the worst queries of the first run with what came back, for the report.
    """
    catalog_fn = catalog_fn or embed_catalog_image
    query_fn = query_fn or embed_query_image
    catalog_dir = Path(catalog_dir)
    ids, cat_paths, titles = load_catalog(catalog_dir)
    truth = read_truth(truth_csv, queries_dir)
    where = {i: n for n, i in enumerate(ids)}
    unknown = sorted({t.item_id for t in truth} - set(where))
    if unknown:
        raise PiSearchError(f"{truth_csv}: {len(unknown)} item id(s) not in {catalog_dir} "
                            f"(first: {unknown[0]})")
    truth_idx = np.array([where[t.item_id] for t in truth])
    if settle is None:
        settle = annoy   # the look every way in uses (model.look)
    runs: list[Run] = []
    for model in models:
        ex = Extractor(model, num_threads=threads)
        log.info("%s: embedding %d catalog photos and %d queries", ex.name, len(ids), len(truth))
        cat_vecs, _ = embed_files(ex, cat_paths, catalog_fn)
        q_vecs, secs = embed_files(ex, [t.path for t in truth], query_fn)
        ms = 1000 * statistics.median(secs)
        ranks, order, scores = exact_ranks(q_vecs, cat_vecs, truth_idx)
        top = [[(ids[j], float(s)) for j, s in zip(o, sc, strict=True)] for o, sc in zip(order, scores,
                                                                                          strict=True)]
        runs.append(Run(ex.name, "exact", ranks, ms, top))
        if annoy:
            with tempfile.TemporaryDirectory(prefix="pi-search-eval-") as tmp:
                franks, ftops, sranks, stops, s_secs = _bundle_ranks(
                    catalog_dir, ids, cat_vecs, q_vecs, truth, ex, Path(tmp), settle, learn)
            runs.append(Run(ex.name, "annoy", franks, ms, [[(i, float("nan")) for i in f] for f in ftops]))
            if settle:
                runs.append(Run(ex.name, "settled", sranks, ms + 1000 * s_secs, stops))
    conditions = {f"{r.model} {r.search}": by_condition(r.ranks, truth, [t[0][0] if t else "" for t in r.top])
                  for r in runs}
    def worst(run: Run) -> list[dict]:
        order = np.argsort(-np.where(run.ranks > 0, run.ranks, 10**9), kind="stable")
        return [{"query": str(truth[i].path), "truth": truth[i].item_id, "rank": int(run.ranks[i]),
                 "truth_image": str(cat_paths[truth_idx[i]]),
                 "returned": [{"id": j, "score": s, "image": str(cat_paths[where[j]])}
                              for j, s in run.top[i]]}
                for i in order if run.ranks[i] != 1][:8]

    misses = worst(runs[0])
    settled = next((r for r in runs if r.search == "settled"), None)
    return {"catalog": str(catalog_dir), "truth": str(truth_csv), "items": len(ids), "queries": len(truth),
            "runs": [r.metrics() for r in runs], "conditions": {k: v for k, v in conditions.items() if v},
            "curves": {f"{r.model} {r.search}": recall_curve(r.ranks) for r in runs},
            "misses": misses, "misses_settled": worst(settled) if settled else None,
            "titles": {i: t for i, t in zip(ids, titles, strict=True)}}


def format_table(result: dict) -> str:
    """The result as a plain text table, one row per (model, search)."""
    head = f"{'model':34} {'search':7} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'mAP':>6} {'ms/frame':>9}"
    lines = [f"{result['items']} catalog items, {result['queries']} queries", head, "-" * len(head)]
    for r in result["runs"]:
        lines.append(f"{r['model'][:34]:34} {r['search']:7} {r['recall@1']:6.3f} {r['recall@5']:6.3f} "
                     f"{r['recall@10']:6.3f} {r['map']:6.3f} {r['query_ms']:9.2f}")
    conditions = result.get("conditions") or {}
    if conditions:
        names = list(conditions)
        models = {n.rsplit(" ", 1)[0] for n in names}
        labels = [n.rsplit(" ", 1)[1] if len(models) == 1 else n[-30:] for n in names]  # one model: search
        head = f"{'condition':22} {'bin':16} {'queries':>7} " + " ".join(f"{n:>30}" for n in labels)
        lines += ["", "recall@1 / recall@5 per condition", head, "-" * len(head)]
        for n, row in enumerate(conditions[names[0]]):
            cells = []
            for name in names:
                c = conditions[name][n]
                second = f" ({c['second_first']} 2nd 1st)" if c.get("second_first") else ""
                cells.append(f"{c['recall@1']:.3f} / {c['recall@5']:.3f}{second}")
            lines.append(f"{row['condition']:22} {row['bin']:16} {row['queries']:7d} "
                         + " ".join(f"{c:>30}" for c in cells))
    return "\n".join(lines)


# ------------------------------------------------------------------ PNG report (OpenCV only)
_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _text(img: np.ndarray, s: str, org: tuple[int, int], scale: float = 0.45, colour=(30, 30, 30)) -> None:
    import cv2

    cv2.putText(img, s, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def _chart(curves: dict[str, list[float]], width: int, height: int) -> np.ndarray:
    import cv2

    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 60, 330, 30, 45
    pw, ph = width - left - right, height - top - bottom
    kmax = max(len(c) for c in curves.values())

    def pt(k: int, y: float) -> tuple[int, int]:
        return (left + round((k - 1) / max(1, kmax - 1) * pw), top + round((1 - y) * ph))

    for y in np.linspace(0, 1, 6):
        cv2.line(img, pt(1, y), pt(kmax, y), (225, 225, 225), 1)
        _text(img, f"{y:.1f}", (left - 35, pt(1, y)[1] + 5))
    for k in (1, 5, 10, 15, 20):
        if k <= kmax:
            _text(img, str(k), (pt(k, 0)[0] - 5, top + ph + 20))
    cv2.rectangle(img, (left, top), (left + pw, top + ph), (120, 120, 120), 1)
    _text(img, "k", (left + pw // 2, height - 8))
    _text(img, "recall@k", (5, 18))
    for n, (name, curve) in enumerate(curves.items()):
        c = _COLOURS[n % len(_COLOURS)]
        pts = np.array([pt(k + 1, y) for k, y in enumerate(curve)], np.int32)
        cv2.polylines(img, [pts], False, c, 2, cv2.LINE_AA)
        ly = top + 20 + 22 * n
        cv2.line(img, (width - right + 15, ly - 4), (width - right + 40, ly - 4), c, 2)
        _text(img, f"{name[:36]}  R@1 {curve[0]:.3f}", (width - right + 45, ly), 0.36)
    return img


def _tile(path: str, side: int) -> np.ndarray:
    import cv2

    tile = np.full((side, side, 3), 255, np.uint8)
    try:
        rgb = images.read(path)
    except PiSearchError:
        return tile
    s = side / max(rgb.shape[:2])
    rgb = cv2.resize(rgb, (max(1, round(rgb.shape[1] * s)), max(1, round(rgb.shape[0] * s))),
                     interpolation=cv2.INTER_AREA)
    y, x = (side - rgb.shape[0]) // 2, (side - rgb.shape[1]) // 2
    tile[y:y + rgb.shape[0], x:x + rgb.shape[1]] = rgb
    return tile


def _misses(misses: list[dict], titles: dict, width: int, side: int = 150,
            which: str = "first run") -> np.ndarray:
    cap = 34
    cols = 5
    gap = (width - cols * side) // (cols + 1)
    head = 30
    img = np.full((head + max(1, len(misses)) * (side + cap), width, 3), 255, np.uint8)
    _text(img, f"Worst misses ({which}): query | truth item (its rank) | top 3 returned", (10, 20), 0.5)
    if not misses:
        _text(img, "none: every query found its item at rank 1", (10, head + 30), 0.5)
    for r, m in enumerate(misses):
        y = head + r * (side + cap)
        cells = [(m["query"], "query", None),
                 (m["truth_image"], f"truth, rank {m['rank'] or '-'}", m["truth"])]
        cells += [(x["image"], f"{x['score']:.3f}", x["id"]) for x in m["returned"]]
        for c, (path, label, item) in enumerate(cells[:cols]):
            x = gap + c * (side + gap)
            img[y:y + side, x:x + side] = _tile(path, side)
            colour = (200, 30, 30) if c == 1 else (30, 30, 30)
            _text(img, label, (x, y + side + 13), 0.4, colour)
            if item:
                _text(img, titles.get(item, item)[:24], (x, y + side + 27), 0.35)
    return img


def write_report(result: dict, path: str | Path) -> Path:
    """Draw the recall@k curves and the worst misses (first run; settled run if any) into one PNG."""
    import cv2

    width = 900
    parts = [_chart(result["curves"], width, 380), _misses(result["misses"], result["titles"], width)]
    if result.get("misses_settled") is not None:  # and after the settled look (hard benchmark)
        parts.append(_misses(result["misses_settled"], result["titles"], width, which="settled look, Annoy"))
    sheet = np.vstack(parts)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise PiSearchError(f"{path}: cannot write the PNG report; check the folder is writable")
    return path
