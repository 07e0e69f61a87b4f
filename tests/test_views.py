"""Framing of catalog photos and queries: the views, the query crop, product photos on white."""

from __future__ import annotations

import numpy as np

from pi_search import images
from pi_search.model.extractor import Extractor
from pi_search.model.framing import (
    CATALOG_TINT,
    QUERY_CROP,
    catalog_inputs,
    embed_catalog_image,
    embed_query_image,
    on_plain_white,
    pad_to_square,
    query_inputs,
    to_model_input,
)
from pi_search.tools.benchmark_data import DEMO_DIR


def _demo(name: str) -> np.ndarray:
    return images.read(DEMO_DIR / name)


def test_product_photo_on_white_is_recognised_and_camera_frames_are_not():
    assert on_plain_white(_demo("images/hammer.jpg"))
    frames = sorted((DEMO_DIR / "frames").glob("*.jpg"))
    assert frames and not any(on_plain_white(images.read(f)) for f in frames)
    grey = np.full((100, 100, 3), 200, np.uint8)
    assert not on_plain_white(grey)
    white_wall_with_dark_corner = np.full((100, 100, 3), 250, np.uint8)
    white_wall_with_dark_corner[:10, :10] = 20
    assert not on_plain_white(white_wall_with_dark_corner)


def test_query_framing_zooms_frames_and_keeps_product_photos_whole():
    frame = images.read(sorted((DEMO_DIR / "frames").glob("*.jpg"))[0])
    (x,) = query_inputs(frame)
    np.testing.assert_array_equal(x, to_model_input(frame, 224, QUERY_CROP))
    photo = _demo("images/hammer.jpg")
    (y,) = query_inputs(photo)
    np.testing.assert_array_equal(y, to_model_input(pad_to_square(photo), 224))


def test_catalog_views_are_model_inputs_and_differ():
    photo = _demo("images/hammer.jpg")
    inputs = catalog_inputs(photo)
    assert len(inputs) == 5
    assert all(v.shape == (224, 224, 3) and v.dtype == np.uint8 for v in inputs)
    assert len({v.tobytes() for v in inputs}) == 5
    np.testing.assert_array_equal(inputs[0], to_model_input(pad_to_square(photo), 224))


def test_dimmer_warmer_view_is_the_tint_formula_to_the_byte():
    """The dim view tints through a lookup table: the same bytes as multiplying the whole photo in float32."""
    photo = _demo("images/hammer.jpg")
    every_level = np.arange(256 * 3, dtype=np.uint16).reshape(16, 16, 3) % 256     # each level, each channel
    for rgb in (photo, every_level.astype(np.uint8)):
        sq = pad_to_square(rgb)
        tinted = np.clip(sq.astype(np.float32) * np.array(CATALOG_TINT, np.float32), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(catalog_inputs(rgb)[4], to_model_input(tinted, 224))


def test_embeddings_are_unit_vectors_and_a_frame_is_closest_to_its_item():
    ex = Extractor()
    truth = (DEMO_DIR / "frames" / "truth.csv").read_text().splitlines()[1].split(",")
    frame = images.read(DEMO_DIR / "frames" / truth[0])
    q = embed_query_image(ex, frame)
    assert q.shape == (ex.dim,) and q.dtype == np.float32
    assert abs(float(np.linalg.norm(q)) - 1) < 1e-5
    own = embed_catalog_image(ex, _demo(f"images/{truth[1]}.jpg"))
    other = embed_catalog_image(ex, _demo("images/hammer.jpg" if truth[1] != "hammer" else
                                                 "images/teapot.jpg"))
    assert abs(float(np.linalg.norm(own)) - 1) < 1e-5
    assert float(q @ own) > float(q @ other)
