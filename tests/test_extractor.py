"""The shipped extractor: tensor contract, fidelity to the float model, camera-view invariance, bad files."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from pi_search import images
from pi_search.cli import main
from pi_search.errors import ModelError, RuntimeMissingError
from pi_search.export.photos import held_out_paths
from pi_search.model.extractor import Extractor, load_runtime
from pi_search.model.framing import embed_query_image, pad_to_square, to_model_input
from pi_search.model.shipped import SHIPPED_FLOAT, shipped_model


def test_model_info_json_states_the_tensor_contract():
    result = CliRunner().invoke(main, ["model", "info", str(shipped_model()), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["input"]["shape"] == [1, 224, 224, 3]
    assert info["input"]["dtype"] == "uint8"
    assert info["output"]["shape"] == [1, 1280]
    assert info["output"]["dtype"] == "float32"
    assert info["size_bytes"] <= 4_500_000
    assert info["runtime"]["name"] in ("ai_edge_litert", "tflite_runtime")
    assert len(info["sha256"]) == 64


def test_shipped_checksums_match(extractor):
    lines = (shipped_model().parent / "SHA256SUMS").read_text().splitlines()
    sums = dict(line.split()[::-1] for line in lines)
    assert sums[shipped_model().name] == extractor.sha256


def test_embedding_is_unit_length_and_deterministic(extractor):
    rgb = to_model_input(images.read(held_out_paths()[0]))
    a, b = extractor.embed(rgb), extractor.embed(rgb)
    assert a.dtype == np.float32 and a.shape == (1280,)
    assert abs(float(np.linalg.norm(a)) - 1.0) < 1e-5
    assert np.array_equal(a, b)


def test_embed_rejects_wrong_tensor(extractor):
    with pytest.raises(ValueError, match="224, 224, 3"):
        extractor.embed(np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(ValueError):
        extractor.embed(np.zeros((224, 224, 3), np.float32))


def test_int8_matches_stored_float_reference_on_held_out_photos(extractor):
    """Mean cosine >= 0.98 between the int8 model and the float Keras reference, on unseen photos."""
    ref = np.load(shipped_model().parent / "efficientnet_lite0_reference.npz")
    sources, float_vecs = list(ref["sources"]), ref["float_embeddings"]
    assert len(sources) >= 20
    int8_vecs = np.stack([extractor.embed(to_model_input(pad_to_square(images.read(s)))) for s in sources])
    cos = np.sum(int8_vecs * float_vecs, axis=1)
    assert cos.mean() >= 0.98, cos
    assert cos.min() >= 0.9


def test_float_model_agrees_with_int8(extractor):
    fx = Extractor(shipped_model(SHIPPED_FLOAT))
    assert fx.input.dtype == "float32" and fx.dim == extractor.dim
    rgb = to_model_input(images.read(held_out_paths()[1]))
    assert float(np.dot(fx.embed(rgb), extractor.embed(rgb))) > 0.95


def _camera_view(rgb: np.ndarray, seed: int) -> np.ndarray:
    """A different shot of the same object: crop, rotation, lighting and JPEG."""
    rng = np.random.default_rng(seed)
    h, w = rgb.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-15, 15)), float(rng.uniform(1.0, 1.2)))
    rot = cv2.warpAffine(rgb, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    y, x = int(rng.uniform(0, 0.1) * h), int(rng.uniform(0, 0.1) * w)
    crop = rot[y : y + int(h * 0.88), x : x + int(w * 0.88)]
    lit = np.clip(crop.astype(np.float32) * rng.uniform(0.7, 1.2) + rng.uniform(-20, 20), 0, 255)
    return images.decode(images.encode_jpeg(lit.astype(np.uint8), 75))


def test_views_of_one_object_are_closer_than_other_objects(extractor):
    photos = [images.read(p) for p in held_out_paths()[:12]]
    a = np.stack([embed_query_image(extractor, _camera_view(p, 1)) for p in photos])
    b = np.stack([embed_query_image(extractor, _camera_view(p, 2)) for p in photos])
    sims = a @ b.T
    same = np.diag(sims)
    other = np.where(np.eye(len(photos), dtype=bool), -np.inf, sims).max(axis=1)
    assert np.all(same > other), (same, other)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        Extractor(tmp_path / "nope.tflite")


def test_non_tflite_file_is_refused(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"<html>this is not a model</html>")
    with pytest.raises(ModelError, match=r"model\.tflite: not a TFLite model"):
        Extractor(path)


def test_truncated_model_is_refused(tmp_path):
    path = tmp_path / "cut.tflite"
    path.write_bytes(shipped_model().read_bytes()[:1_000_000])
    with pytest.raises(ModelError, match="cut.tflite.*corrupt or truncated"):
        Extractor(path)


def test_cli_gives_one_line_error_for_a_bad_model(tmp_path):
    path = tmp_path / "bad.tflite"
    path.write_bytes(b"garbage")
    result = CliRunner().invoke(main, ["model", "info", str(path)])
    assert result.exit_code == 2
    assert "bad.tflite" in result.output and "Traceback" not in result.output


def test_missing_runtimes_are_named(monkeypatch):
    import sys

    for name in ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime",
                 "tflite_runtime.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)  # a None entry makes the import fail
    with pytest.raises(RuntimeMissingError, match="ai-edge-litert.*tflite-runtime"):
        load_runtime()


def test_threads_are_configurable():
    x = Extractor(num_threads=2)
    assert x.num_threads == 2 and x.info()["num_threads"] == 2
