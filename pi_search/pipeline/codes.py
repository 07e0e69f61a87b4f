"""Barcodes in the camera loop: read once per still scene (never on a frame that is being inferred)."""

from __future__ import annotations

import time

from ..barcodes.decode import Code, available, read_codes
from ..barcodes.search import codes_first


class StillCodes:
    """The codes of the scene in front of the camera.

    After each inference the scene's codes are due; the first frame the gate then skips (the scene is still)
    is read (``read``, grey 640x480: about 10 ms here) instead of a slice of the settled look. The codes stay
    with the item while the smoothing follows the same one (``inferred(fresh=False)``) and are dropped for a
    new item. ``apply`` puts the items they name before the visual matches.
    """

    def __init__(self, enabled: bool | None = None):
        self.enabled = available() if enabled is None else enabled
        self.codes: tuple[Code, ...] = ()
        self.due = False
        self.reads = 0
        self.seconds = 0.0

    def inferred(self, fresh: bool) -> None:
        """A frame was inferred: a new item (``fresh``) forgets the codes; read again once it is still."""
        if fresh:
            self.codes = ()
        self.due = self.enabled

    def read(self, rgb) -> tuple[Code, ...]:
        """Read the codes of a still frame (RGB uint8 [H, W, 3], not copied); they replace the last ones."""
        t0 = time.perf_counter()
        self.due = False
        self.codes = tuple(read_codes(rgb, fast=True))
        self.reads += 1
        self.seconds += time.perf_counter() - t0
        return self.codes

    def apply(self, catalog, matches, k: int) -> tuple[tuple, tuple]:
        """``(matches, codes info)``: the items the codes name first (``via`` "barcode"), then ``matches``."""
        if not self.codes:
            return tuple(matches), ()
        found, info = codes_first(catalog, list(self.codes), list(matches), k)
        return tuple(found), tuple(info)
