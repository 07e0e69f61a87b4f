"""The model export tool chain (TensorFlow): both architectures, verification, refusal of bad models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from pi_search import images
from pi_search.cli import main
from pi_search.errors import ModelError, PiSearchError
from pi_search.export import convert as conv
from pi_search.export.photos import held_out_paths
from pi_search.model.extractor import Extractor
from pi_search.model.framing import to_model_input

pytestmark = pytest.mark.slow


def _tiny_features(channels_first: bool = False, channels: int = 3):
    """A small real Keras feature model: conv + global average pooling."""
    import tensorflow as tf

    k = tf.keras
    shape = (channels, 224, 224) if channels_first else (224, 224, channels)
    inputs = k.Input(shape, dtype="float32")
    x = k.layers.Rescaling(1 / 255.0)(inputs)
    if channels_first:
        x = k.layers.Permute((2, 3, 1))(x)
    x = k.layers.Conv2D(16, 3, strides=4, activation="relu")(x)
    return k.Model(inputs, k.layers.GlobalAveragePooling2D()(x))


def test_mobilenet_v2_140_random_weights_exports_a_1792d_int8_model(tmp_path):
    result = CliRunner().invoke(main, ["model", "export", "--arch", "mobilenet_v2_140", "--weights", "random",
                                       "--out", str(tmp_path), "--calibration-per-photo", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dim"] == 1792
    q = Extractor(tmp_path / "mobilenet_v2_140_int8.tflite")
    assert q.input.shape == (1, 224, 224, 3) and q.input.dtype == "uint8"
    assert q.output.dtype == "float32" and q.dim == 1792
    assert report["int8_bytes"] < report["float_bytes"] / 3
    assert report["float_max_abs_diff"] <= conv.MAX_FLOAT_DIFF
    vec = q.embed(to_model_input(images.read(held_out_paths()[0])))
    assert np.isfinite(vec).all() and abs(float(np.linalg.norm(vec)) - 1) < 1e-5


def test_efficientnet_export_reproduces_the_shipped_model(tmp_path, extractor):
    report = conv.export("efficientnet_lite0", "imagenet", tmp_path, calibration_per_photo=2)
    assert "espresso" in report.top5["scikit-image:coffee"]
    assert report.int8_cosine_mean >= 0.98 and report.held_out >= 20
    assert report.int8_bytes <= 4_500_000
    fresh = Extractor(report.int8_path)
    photos = [to_model_input(images.read(p)) for p in held_out_paths()[:8]]
    cos = [float(np.dot(fresh.embed(x), extractor.embed(x))) for x in photos]
    assert min(cos) > 0.97, cos


def test_export_refuses_to_write_a_model_that_fails_its_checks(tmp_path, monkeypatch):
    monkeypatch.setattr(conv, "build_keras", lambda arch, weights: (_tiny_features(), None))
    with pytest.raises(PiSearchError, match="nothing written"):
        conv.export("tiny", "random", tmp_path, calibration_per_photo=1, min_cosine=1.01)
    assert not list(tmp_path.glob("*.tflite"))
    report = conv.export("tiny", "random", tmp_path, calibration_per_photo=1)
    assert Extractor(report.int8_path).dim == 16


@pytest.mark.parametrize("channels_first,channels", [(True, 3), (False, 1)])
def test_models_that_are_not_nhwc_rgb_are_refused(tmp_path, channels_first, channels):
    import tensorflow as tf

    model = _tiny_features(channels_first, channels)
    shape = [1, 3, 224, 224] if channels_first else [1, 224, 224, channels]
    fn = tf.function(lambda x: model(x), input_signature=[tf.TensorSpec(shape, tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], model)
    path = tmp_path / "odd.tflite"
    path.write_bytes(converter.convert())
    with pytest.raises(ModelError, match="odd.tflite: input must be NHWC"):
        Extractor(path)
