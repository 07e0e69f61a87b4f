"""The teaching service the page and ``pi-search item`` both call: items taught, edited, removed, listed."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from ..barcodes.codes import with_barcode
from ..errors import CatalogError
from ..images import encode_jpeg
from .changes import MAX_SHOTS, TaughtItem
from .relearn import keep_scene
from .teach import embed_background, embed_shots

log = logging.getLogger(__name__)

NO_SHOTS = "no shots: capture or upload at least one photo of the item"


@dataclass(frozen=True)
class Taught:
    """An item after a change: its ``id``, its metadata as ``LiveCatalog.item`` gives it (None once removed)
    and how many ``shots`` the change embedded."""

    id: str
    item: dict | None
    shots: int = 0


@dataclass(frozen=True)
class Listing:
    """What was taught: the ``changes`` not folded into the bundle yet (newest first), the items a compaction
    already ``folded`` into it (``LiveCatalog.folded``) and how many ``items`` the catalog holds."""

    changes: list[TaughtItem]
    folded: list[dict]
    items: int


class Teaching:
    """Teach, edit and remove items of a ``LiveCatalog`` from shots; every change is searchable on return.

    Shots are ``(rgb, kind)`` pairs: rgb uint8 [H, W, 3] in R,G,B order, kind ``"camera"`` (framed like a live
    query, the empty scene taken out) or ``"photo"`` (framed like a catalog photo). ``barcode``: codes
    separated by ``;`` ("" clears them). ``scene``: a photo of the empty scene (RGB uint8 [H, W, 3]) to take
    out of camera shots instead of the one remembered. Bad input raises CatalogError or ImageError (400),
    an unknown item NoSuchItem (404), a taken id ItemConflict (409), no bundle served BundleError. One change
    embeds at a time (the model is shared with the frame loop).
    """

    max_shots = MAX_SHOTS   # shots one request may carry

    def __init__(self, catalog, extractor=None):
        self.catalog = catalog
        self.extractor = extractor if extractor is not None else catalog.extractor
        self._embedding = threading.BoundedSemaphore(1)

    def _embed(self, shots: list, scene: np.ndarray | None) -> tuple[np.ndarray, bytes]:
        """float32 [n, dim] (L2-normalised rows) and the first shot's JPEG thumbnail."""
        with self._embedding:
            background = (embed_background(self.extractor, scene) if scene is not None
                          else self.catalog.background)
            return embed_shots(self.extractor, shots, background=background)

    def add(self, title: str, price: str | None, shots: list, *, item_id: str | None = None,
            barcode: str | None = None, scene: np.ndarray | None = None) -> Taught:
        """Teach a new item from one or more shots (each one more view of it); ``item_id`` None: a new id."""
        if not shots:
            raise CatalogError(NO_SHOTS)
        extra = (with_barcode(None, barcode) or None) if barcode else None
        vecs, thumb = self._embed(shots, scene)
        new_id = self.catalog.add(title, price, vecs, item_id=item_id, thumb=thumb, extra=extra)
        return Taught(new_id, self.catalog.item(new_id), len(shots))

    def edit(self, item_id: str, *, title: str | None = None, price: str | None = None,
             barcode: str | None = None, shots: list = (), scene: np.ndarray | None = None) -> Taught:
        """Change an item's title, price ("" clears it) or barcode, and/or add shots of it (taught items and
        bundle items alike)."""
        extra = None
        if barcode is not None:
            extra = with_barcode((self.catalog.item(item_id) or {}).get("extra"), barcode)
        vecs = self._embed(list(shots), scene)[0] if shots else None
        self.catalog.edit(item_id, title=title, price=price or None, vectors=vecs, clear_price=price == "",
                          extra=extra)
        return Taught(item_id, self.catalog.item(item_id), len(shots))

    def remove(self, item_id: str) -> int:
        """Remove an item (taught, or from the bundle): it stops matching at once. Returns how many items the
        catalog holds now."""
        self.catalog.remove(item_id)
        return len(self.catalog)

    def listing(self, limit: int = 50) -> Listing:
        """The changes pending and the ``limit`` items taught most recently that are folded already."""
        return Listing(self.catalog.changes(), self.catalog.folded(limit), len(self.catalog))

    @property
    def has_scene(self) -> bool:
        """True when an empty scene is remembered (taken out of camera shots)."""
        return self.catalog.background is not None

    def set_scene(self, rgb: np.ndarray) -> None:
        """Remember the empty scene (RGB uint8 [H, W, 3]): taken out of every camera shot taught afterwards,
        so items taught at one counter do not match each other's counter."""
        with self._embedding:
            self.catalog.set_background(embed_background(self.extractor, rgb))
        try:   # kept for pi-search index relearn: the views learn on this counter too
            keep_scene(self.catalog.directory, encode_jpeg(rgb, 90))
        except OSError as exc:
            log.warning("the empty scene was not kept for relearning (%s)", exc)

    def clear_scene(self) -> None:
        """Forget the empty scene."""
        self.catalog.set_background(None)
