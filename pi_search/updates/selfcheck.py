"""The self-check of a bundle before it is switched in: it finds its own items, with the running model."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ..bundle import Bundle, photos
from ..embed.local import embed_one
from ..errors import BundleError

log = logging.getLogger(__name__)

PROBES = 5             # items looked up
THUMB_TOP = 5          # an item's own thumbnail must find it among this many matches
MAX_SEARCH_MS = 2000.0  # one search over the bundle (a Pi 4 answers a 100k-item bundle in tens of ms)


def _fail(directory: Path, why: str) -> BundleError:
    return BundleError(f"{directory}: self-check failed: {why}; the bundle in use stays (fix or rebuild the "
                       "new one)")


def run(directory: str | Path, extractor=None, *, probes: int = PROBES,
        max_ms: float = MAX_SEARCH_MS) -> dict:
    """Check the bundle at ``directory`` answers like itself; BundleError (``self-check failed: ...``) if not.

    With ``extractor`` the manifest's model (sha256, dim) must be the running one, and each probed item's
    thumbnail (JPEG bytes, embedded by ``extractor`` to float32 [dim]) must find that item among the first
    ``THUMB_TOP`` matches. Every probed item's stored vector (float32 [dim]) must find itself first (or tie
    with the first). Returns ``{"probes", "worst_ms"}``.
    """
    directory = Path(directory)
    with Bundle.open(directory, extractor=extractor) as bundle:
        n = len(bundle)
        if n <= 0:
            raise _fail(directory, "its catalog has 0 items")
        rows = np.unique(np.linspace(0, n - 1, min(probes, n)).round().astype(np.int64))
        meta = bundle.items.rows(rows.tolist())
        worst = 0.0
        for row in rows.tolist():
            t0 = time.perf_counter()
            idx, scores = bundle.search_stored(row, 3)   # an ivfpq store keeps no full vector: its own row
            worst = max(worst, (time.perf_counter() - t0) * 1000)
            own = meta.get(row)
            if own is None or not idx.size:
                raise _fail(directory, f"item row {row} has no metadata or finds nothing")
            item_id, photo = photos.split(own[1])   # a further photo's row names its item
            found = bundle.items.rows(idx.tolist())
            ids = [photos.split(found[i][1])[0] if i in found else None for i in idx.tolist()]
            if not any(i == item_id and s >= scores[0] - 1e-4 for i, s in zip(ids, scores.tolist(),
                                                                                 strict=True)):
                raise _fail(directory, f"item {item_id} does not find itself from its stored vector (found "
                                       f"{ids[0]}): the index and the items disagree")
            if extractor is not None:
                thumb = bundle.thumbnail(item_id, photo)
                if thumb:
                    found = [m.id for m in bundle.search(embed_one(extractor, thumb, f"thumbnail {own[1]}"),
                                                         THUMB_TOP)]
                    if item_id not in found:
                        raise _fail(directory, f"item {item_id}'s own thumbnail does not find it (found "
                                               f"{', '.join(found[:3])}): another framing or model?")
        if worst > max_ms:
            raise _fail(directory, f"a search took {worst:.0f} ms (at most {max_ms:.0f} ms)")
    log.info("%s: self-check passed (%d items probed, slowest search %.1f ms)", directory, len(rows), worst)
    return {"probes": len(rows), "worst_ms": round(worst, 2)}
