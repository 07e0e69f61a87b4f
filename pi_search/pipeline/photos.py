"""Searching still photos (``pi-search query``): each image gets the look a still camera frame gets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .. import images
from ..errors import ImageError
from ..model import look as looking


def query_images(extractor, catalog, paths: Sequence[str | Path], k: int = 5) -> list[dict]:
    """``{"query", "matches"}`` per image file, best first; an unreadable image gets an ``"error"`` entry."""
    results = []
    for path in paths:
        try:
            seen = looking.look(extractor, images.read(path))
        except ImageError as exc:
            results.append({"query": str(path), "error": str(exc), "matches": []})
            continue
        matches = looking.search(catalog, seen, k)[0]
        results.append({"query": str(path), "matches": [m.as_dict() for m in matches]})
    return results
