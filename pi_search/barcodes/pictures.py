"""Photos (uploads, ``pi-search query`` files) decoded for the barcode reader: grey, upright, large enough."""

from __future__ import annotations

import logging

import numpy as np

from .. import images
from ..errors import Busy
from .decode import Code, available, read_codes

log = logging.getLogger(__name__)

# A code's bars need about 1.5 pixels each: an EAN-13 is 113 bars wide with its margins, so one a tenth as
# wide as the photo needs the photo about 1,700 pixels wide. A JPEG is decoded grey, reduced by the largest
# of 1/2, 1/4, 1/8 that keeps its shorter side at CODE_SIDE pixels or more (a 4032x3024 phone photo:
# 2016x1512, 3 MB; a 40 MP one: 1824x1368, 2.5 MB), never in colour at full size.
CODE_SIDE = 1200
# A progressive JPEG's decoder holds every coefficient of the photo whatever the scale (about 2.7 bytes a
# pixel: 110 MB at 40 MP); above this many pixels such a photo is not read for codes, so two uploads at once
# stay within the daemon's memory goal (bench/bench_uploads.py --progressive). Phone cameras write baseline
# JPEGs, and the page sends every photo as a 1280-pixel baseline JPEG.
PROGRESSIVE_MAX_PIXELS = 16_000_000
_REDUCED = {2: "IMREAD_REDUCED_GRAYSCALE_2", 4: "IMREAD_REDUCED_GRAYSCALE_4", 8: "IMREAD_REDUCED_GRAYSCALE_8"}


def grey_for_codes(data: bytes, name: str = "image") -> np.ndarray | None:
    """The photo in ``data`` as upright grey uint8 [H, W] for the reader, or None when it cannot be decoded
    (the visual search reports why), would take more memory than images' decoding bound, finds no room in the
    decoding budget shared with the other uploads (``images.BUDGET``), or is a progressive JPEG over
    ``PROGRESSIVE_MAX_PIXELS``."""
    size = images.photo_size(data)
    cost = images.decode_cost(data, CODE_SIDE)
    if size is None or cost is None or images.too_large(data, name=name, min_side=CODE_SIDE) is not None:
        return None
    big = size[0] * size[1] > PROGRESSIVE_MAX_PIXELS
    if data[:2] == b"\xff\xd8" and big and images.progressive_jpeg(data):
        log.info("%s: a progressive JPEG of %dx%d is not read for barcodes (memory)", name, *size)
        return None
    try:
        with images.BUDGET.hold(cost[2]):   # shared with the colour decodes: never over the budget at once
            return _decode_grey(data, size, name)
    except Busy as exc:
        log.info("%s: not read for barcodes (%s)", name, exc)
        return None


def _decode_grey(data: bytes, size: tuple[int, int], name: str) -> np.ndarray | None:
    import cv2

    flag = cv2.IMREAD_GRAYSCALE
    if data[:2] == b"\xff\xd8":
        scale = next((s for s in (8, 4, 2) if min(size) // s >= CODE_SIDE), 1)
        if scale > 1:
            flag = getattr(cv2, _REDUCED[scale])
    try:
        grey = cv2.imdecode(np.frombuffer(data, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as exc:
        log.info("%s: not decoded for barcodes (%s)", name, exc)
        return None
    if grey is None or grey.size == 0:
        return None
    return images.upright(grey, images.orientation(data))


def codes_in_photo(data: bytes, name: str = "image") -> list[Code]:
    """The codes in an encoded photo, in reading order (none when the reader is missing)."""
    if not available():
        return []
    grey = grey_for_codes(data, name)
    return [] if grey is None else read_codes(grey)
