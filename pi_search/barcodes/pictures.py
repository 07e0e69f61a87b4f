"""Photos (uploads, ``pi-search query`` files) decoded for the barcode reader: grey, upright, large enough."""

from __future__ import annotations

import logging

import numpy as np

from .. import images
from .decode import Code, available, read_codes

log = logging.getLogger(__name__)

# A code's bars need about 2 pixels each: an EAN-13 is 95 bars wide, so one a tenth as wide as the photo
# needs the photo about 2,000 pixels wide. A JPEG is decoded grey at half size once its shorter side is at
# least 2 * CODE_SIDE (a 4032x3024 phone photo: 2016x1512, 3 MB), never in colour at full size.
CODE_SIDE = 1400


def grey_for_codes(data: bytes, name: str = "image") -> np.ndarray | None:
    """The photo in ``data`` as upright grey uint8 [H, W] for the reader, or None when it cannot be decoded
    (the visual search reports why)."""
    import cv2

    size = images.photo_size(data)
    if size is None or size[0] * size[1] > images.MAX_PIXELS:
        return None
    flag = cv2.IMREAD_GRAYSCALE
    if data[:2] == b"\xff\xd8" and min(size) >= 2 * CODE_SIDE:
        flag = cv2.IMREAD_REDUCED_GRAYSCALE_2
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
