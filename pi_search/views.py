"""How an image becomes model inputs: catalog photos and camera queries are framed differently."""

from __future__ import annotations

import numpy as np

from .preprocess import pad_to_square, to_model_input


def catalog_inputs(rgb: np.ndarray, size: int = 224) -> list[np.ndarray]:
    """Model inputs (RGB uint8 [size, size, 3] each) for one catalog photo: the whole item, padded white."""
    return [to_model_input(pad_to_square(rgb), size)]


def query_inputs(rgb: np.ndarray, size: int = 224) -> list[np.ndarray]:
    """Model inputs (RGB uint8 [size, size, 3] each) for one camera frame or uploaded photo: centre square."""
    return [to_model_input(rgb, size)]


def embed(extractor, inputs: list[np.ndarray]) -> np.ndarray:
    """Mean of the inputs' embeddings, L2-normalised: float32 [dim]."""
    vecs = np.stack([extractor.embed(x) for x in inputs])
    v = vecs.mean(axis=0)
    n = float(np.linalg.norm(v))
    return (v / n if n > 0 else v).astype(np.float32)


def embed_catalog_image(extractor, rgb: np.ndarray) -> np.ndarray:
    return embed(extractor, catalog_inputs(rgb, extractor.size))


def embed_query_image(extractor, rgb: np.ndarray) -> np.ndarray:
    return embed(extractor, query_inputs(rgb, extractor.size))
