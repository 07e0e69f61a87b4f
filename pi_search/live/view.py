"""One view of the catalog: a served bundle merged with the taught items, edits and removals not in it yet."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np

from ..barcodes.codes import keys as code_keys
from ..barcodes.codes import split_codes
from ..bundle import ROW_SEP, Bundle, Match, Projection, item_of
from ..errors import BundleError
from .changes import MAX_SHOTS, Snapshot, TaughtItem

log = logging.getLogger(__name__)

EXACT_TAUGHT_MAX = 2048    # above this many taught shots, a PCA pre-selection precedes the exact scores
COARSE_DIMS = 64           # leading PCA components the pre-selection compares (a quarter of the bytes read)
COARSE_MIN = 128           # shots kept by the pre-selection (at least; 16 per requested match otherwise)


@dataclass(frozen=True)
class View:
    """One consistent view: a bundle and the store's changes it does not hold yet. Never changed once
    published (an add may write rows past ``len(vectors)`` of ``buffer``, which this view does not read)."""

    bundle: Bundle
    key: tuple | None
    items: dict               # id -> TaughtItem, changes after the bundle's folded_seq
    masked: frozenset         # bundle item ids hidden from search (removed or taught afresh)
    vectors: np.ndarray       # float32 [m, dim] taught shots, L2-normalised
    owners: np.ndarray        # object [m]: item id of each shot
    coarse: np.ndarray | None  # float32 [m, COARSE_DIMS]: shots projected by the bundle's PCA (large m)
    projection: Projection | None
    size: int
    generation: int = 0       # counts the bundles served: every Match found in this view carries it
    buffer: np.ndarray | None = None         # float32 [capacity, dim]: ``vectors`` is its first m rows
    coarse_buffer: np.ndarray | None = None  # float32 [capacity, COARSE_DIMS]: the same for ``coarse``


def coarse_projection(bundle: Bundle) -> Projection | None:
    """The bundle's PCA cut to its ``COARSE_DIMS`` leading components (for the pre-selection)."""
    p = bundle.projection
    if p is None:
        return None
    # rows back to unit length: plain PCA axes even if the bundle's are whitened
    c = p.components[:COARSE_DIMS]
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
    return Projection(p.mean, np.ascontiguousarray(c, dtype=np.float32), False, 0.0)


def build(bundle: Bundle, key, snap: Snapshot, generation: int, projection) -> View:
    """The view of ``bundle`` with the changes of ``snap`` it does not hold; ``projection(bundle)`` gives
    its ``coarse_projection`` (cached by the caller), asked for only when the pre-selection is needed."""
    done = bundle.manifest.folded_seq
    items = {}
    for i, it in snap.items.items():
        if it.seq <= done:
            continue
        if 0 < it.own <= done:
            it = TaughtItem(it.id, it.title, it.price, it.extra, it.created, it.updated, it.deleted, True,
                            it.seq, it.shots, 0)
        items[i] = it
    keep = (snap.vector_seqs > done) & np.array(
        [o in items and not items[o].deleted for o in snap.owners], dtype=bool).reshape(-1)
    m = int(keep.sum())
    # room to grow: an add writes its shots after row m, which no published view reads
    seen = bundle.to_learned(snap.vectors[keep])   # taught shots in the stored rows' space
    vecs = np.empty((m + max(256, m // 4), seen.shape[1]), np.float32)
    vecs[:m] = seen
    owners = snap.owners[keep]
    masked = frozenset(i for i, it in items.items() if it.masks_bundle)
    proj = projection(bundle) if m > EXACT_TAUGHT_MAX else None
    coarse = None
    if proj is not None:
        coarse = np.empty((len(vecs), proj.dims), np.float32)
        coarse[:m] = proj.apply(vecs[:m])
    size = len(bundle) - bundle.manifest.views
    size -= sum(1 for it in items.values() if it.base and it.deleted)
    size += sum(1 for it in items.values() if not it.base and not it.deleted)
    return View(bundle, key, items, masked, vecs[:m], owners, None if coarse is None else coarse[:m],
                proj, size, generation, vecs, coarse)


def appended(view: View, it: TaughtItem, vectors: np.ndarray) -> View | None:
    """``view`` plus one new taught item and its shots (float32 [n, dim], L2-normalised), without reading
    the store again; None when a full reload is needed (no room left, or the pre-selection starts)."""
    m, n = len(view.vectors), len(vectors)
    if view.buffer is None or m + n > len(view.buffer):
        return None
    if (view.coarse is None) != (m + n <= EXACT_TAUGHT_MAX):
        return None
    vectors = view.bundle.to_learned(vectors)
    view.buffer[m:m + n] = vectors
    if view.coarse is not None:
        view.coarse_buffer[m:m + n] = view.projection.apply(vectors)
    owners = np.empty(m + n, dtype=object)
    owners[:m] = view.owners
    owners[m:] = it.id
    items = {**view.items, it.id: it}
    return View(view.bundle, view.key, items, view.masked, view.buffer[:m + n], owners,
                None if view.coarse is None else view.coarse_buffer[:m + n], view.projection, view.size + 1,
                view.generation, view.buffer, view.coarse_buffer)


def search(view: View, q: np.ndarray, k: int, best: dict) -> None:
    """Put the best ``k`` items for ``q`` (float32 [d], unit length, in the stored rows' space:
    ``Bundle.to_learned``) into ``best`` (id -> Match), bundle items and taught items alike."""
    _search_bundle(view, q, k, best)
    _search_taught(view, q, k, best)


def _search_bundle(view: View, q: np.ndarray, k: int, best: dict) -> None:
    bundle, n = view.bundle, len(view.bundle)
    views = bundle.manifest.views
    want = min(n, k + min(len(view.masked), 4 * k) + (2 * k if views else 0))
    while True:
        found = bundle.search(q, want, learned=True)
        kept = 0
        for m in found:
            iid = item_of(m.id)
            if iid in view.masked:
                continue
            over = view.items.get(iid)
            title, price = (over.title, over.price) if over is not None else (m.title, m.price)
            old = best.get(iid)
            if old is None:
                kept += 1
            if old is None or m.score > old.score:
                best[iid] = Match(iid, title, price, m.score, m.index, view.generation, photo=m.photo)
        if kept >= k or len(found) < want or want >= n:
            return
        want = min(n, want * 4)


def _search_taught(view: View, q: np.ndarray, k: int, best: dict) -> None:
    m = len(view.vectors)
    if m == 0:
        return
    if view.coarse is not None:
        c = min(m, max(COARSE_MIN, MAX_SHOTS * k))
        s0 = view.coarse @ view.projection.apply(q)
        rows = np.argpartition(s0, m - c)[m - c:] if c < m else np.arange(m)
    else:
        rows = None
    vecs = view.vectors if rows is None else view.vectors[rows]
    s = vecs @ q
    t = min(len(s), k * MAX_SHOTS)   # holds k distinct items: an item has at most MAX_SHOTS shots
    top = np.argpartition(s, len(s) - t)[len(s) - t:] if t < len(s) else np.arange(len(s))
    top = top[np.argsort(-s[top], kind="stable")]
    seen: set = set()
    for j, score in zip(top.tolist(), s[top].tolist(), strict=True):
        iid = view.owners[j if rows is None else rows[j]]
        if iid in seen:
            continue           # best first: this item's best shot was already taken
        seen.add(iid)
        score = min(1.0, max(-1.0, score))
        old = best.get(iid)
        if old is None or score > old.score:
            it = view.items[iid]
            best[iid] = Match(iid, it.title, it.price, score, -1, view.generation)
        if len(seen) == k:     # any further taught item ranks below these k
            break


def code_items(view: View, keys: list[str]) -> dict[str, Match]:
    """``key -> Match`` (score 1, via "barcode") of the barcode keys (``barcodes.codes.keys``) that name
    an item of the view: a taught item's ``barcode`` first, then the bundle's codes table. BundleError when
    the bundle cannot be read."""
    out: dict[str, Match] = {}
    want = set(keys)
    for it in view.items.values():
        if it.deleted:
            continue
        for code in split_codes((it.extra or {}).get("barcode")):
            for key in code_keys(code):
                if key in want and key not in out:
                    out[key] = Match(it.id, it.title, it.price, 1.0, via="barcode")
    found = view.bundle.code_items([k for k in keys if k not in out])
    for key, iid in found.items():
        if iid in view.masked:
            continue
        if iid in view.items:   # edited since the build: its barcode may have changed
            continue
        row = view.bundle.item(iid)
        if row is not None:
            out[key] = Match(iid, row["title"], row["price"], 1.0, via="barcode")
    return out


def item(view: View, item_id: str) -> dict | None:
    """Metadata of one item (id, title, price, extra, taught, in_bundle, shots) or None if unknown or
    removed. BundleError when the bundle cannot be read."""
    it = view.items.get(item_id)
    if it is not None:
        if it.deleted:
            return None
        return {"id": it.id, "title": it.title, "price": it.price, "extra": it.extra, "taught": True,
                "in_bundle": it.base, "shots": it.shots}
    b = view.bundle.item(item_id)
    if b is None:
        return None
    return {**b, "taught": False, "in_bundle": True, "shots": 0}


def changes(view: View | None) -> list[TaughtItem]:
    """Items taught, edited or removed since the view's bundle was built, most recent first."""
    if view is None:
        return []
    return sorted(view.items.values(), key=lambda it: (it.updated, it.seq), reverse=True)


def folded(view: View, limit: int) -> list[dict]:
    """Taught items a compaction already folded into the view's bundle, most recently taught first (at most
    ``limit``): ``{"id", "title", "price", "extra", "taught_at"}``; items changed since are left out."""
    try:
        rows = view.bundle.items.taught_rows()
    except BundleError as exc:
        log.warning("%s: cannot list taught items (%s)", view.bundle.directory, exc)
        rows = []
    out = []
    for rid, title, price, extra in rows:
        extra = json.loads(extra or "{}")
        if ROW_SEP in rid or rid in view.items or "taught_at" not in extra:
            continue
        out.append({"id": rid, "title": title, "price": price, "extra": extra,
                    "taught_at": float(extra["taught_at"])})
    return sorted(out, key=lambda d: d["taught_at"], reverse=True)[:limit]
