"""The published design: Keras MobileNetV2 (width 1.4), global-average-pooled 1792-d features."""

from __future__ import annotations


def build(weights: str):
    """Features model: float32 [N, 224, 224, 3] RGB 0..255 -> [N, 1792] (normalisation to [-1, 1] in-graph).

    ``weights``: "imagenet" downloads Keras's weights (needs the internet); "random" works offline.
    """
    import tensorflow as tf

    if weights not in ("imagenet", "random"):
        raise ValueError("weights must be 'imagenet' or 'random'")
    k = tf.keras
    if weights == "random":
        k.utils.set_random_seed(0)
    base = k.applications.MobileNetV2(input_shape=(224, 224, 3), alpha=1.4, include_top=False,
                                      pooling="avg", weights="imagenet" if weights == "imagenet" else None)
    inputs = k.Input((224, 224, 3), dtype="float32", name="image")
    x = k.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalise")(inputs)
    return k.Model(inputs, base(x), name="mobilenet_v2_140_features")
