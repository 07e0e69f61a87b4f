"""Searching still photos (``pi-search query``): each image gets the look a still camera frame gets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .. import images
from ..barcodes.pictures import codes_in_photo
from ..barcodes.search import codes_first
from ..errors import ImageError
from ..model import look as looking


def query_images(extractor, catalog, paths: Sequence[str | Path], k: int = 5) -> list[dict]:
    """``{"query", "matches", "codes"}`` per image file, best first (items named by a barcode in the
    photo first, ``via`` "barcode"); an unreadable image gets an ``"error"`` entry."""
    results = []
    for path in paths:
        try:
            seen = looking.look(extractor, images.read(path))
        except ImageError as exc:
            results.append({"query": str(path), "error": str(exc), "matches": []})
            continue
        try:
            codes = codes_in_photo(Path(path).read_bytes(), str(path))
        except OSError:
            codes = []
        matches, found = codes_first(catalog, codes, looking.search(catalog, seen, k)[0], k)
        results.append({"query": str(path), "matches": [m.as_dict() for m in matches], "codes": found})
    return results
