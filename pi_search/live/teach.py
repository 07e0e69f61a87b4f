"""Embedding what staff teach: an item's shots (camera frames or product photos) and the empty scene."""

from __future__ import annotations

import numpy as np

from ..errors import CatalogError
from ..images import thumbnail
from ..model.framing import embed_catalog_image, embed_query_image

BACKGROUND_WEIGHT = 0.8    # share of the empty scene taken out of a camera shot (bench/bench_taught.py)


def without_background(vectors: np.ndarray, background: np.ndarray | None,
                       weight: float = BACKGROUND_WEIGHT) -> np.ndarray:
    """Camera-shot embeddings (float32 [n, dim]) minus ``weight`` times the empty scene's (float32 [dim]),
    L2-normalised again; unchanged when ``background`` is None.

    A shot carries the counter or room it was taken in, and a query taken there would otherwise resemble every
    item taught there (README, "Teaching new items": with the empty scene taken out, recall@1 on the public
    benchmark stays at the catalog photos' level instead of falling by 8 points).
    """
    v = np.asarray(vectors, dtype=np.float32)
    if background is None:
        return v
    v = v - weight * np.asarray(background, dtype=np.float32)
    return (v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def embed_background(extractor, rgb: np.ndarray) -> np.ndarray:
    """The empty scene (the counter without an item, RGB uint8 [H, W, 3]) framed like a camera shot:
    float32 [dim], L2-normalised."""
    return embed_query_image(extractor, rgb)


def embed_shots(extractor, shots: list[tuple[np.ndarray, str]],
                background: np.ndarray | None = None) -> tuple[np.ndarray, bytes]:
    """Embeddings of one item's shots and a thumbnail of the first.

    ``shots``: ``(rgb, kind)`` pairs, rgb uint8 [H, W, 3]; kind ``"camera"`` (a frame from the kiosk camera,
    framed like a query) or ``"photo"`` (a product photo, framed like a catalog photo). ``background``: the
    empty scene's embedding (``embed_background``), taken out of camera shots. Returns float32 [n, dim]
    (L2-normalised rows) and JPEG bytes.
    """
    if not shots:
        raise CatalogError("no shots: capture or upload at least one photo of the item")
    vecs = []
    for rgb, kind in shots:
        if kind not in ("camera", "photo"):
            raise CatalogError(f"shot kind {kind!r}: use camera or photo")
        if kind == "camera":
            vecs.append(without_background(embed_query_image(extractor, rgb)[None, :], background)[0])
        else:
            vecs.append(embed_catalog_image(extractor, rgb))
    return np.stack(vecs).astype(np.float32), thumbnail(shots[0][0])
