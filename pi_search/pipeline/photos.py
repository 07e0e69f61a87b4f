"""Searching still photos (``pi-search query``): each image framed like a camera query and searched."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .. import images
from ..errors import ImageError
from ..model.framing import embed_query_image


def query_images(extractor, catalog, paths: Sequence[str | Path], k: int = 5) -> list[dict]:
    """``{"query", "matches"}`` per image file, best first; an unreadable image gets an ``"error"`` entry."""
    results = []
    for path in paths:
        try:
            vec = embed_query_image(extractor, images.read(path))
        except ImageError as exc:
            results.append({"query": str(path), "error": str(exc), "matches": []})
            continue
        results.append({"query": str(path), "matches": [m.as_dict() for m in catalog.search(vec, k)]})
    return results
