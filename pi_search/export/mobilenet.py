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
    inputs = k.Input((224, 224, 3), dtype="float32", name="image")
    x = k.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalise")(inputs)
    # input_tensor builds one flat graph from the image to the pooled features (no nested model).
    base = k.applications.MobileNetV2(input_tensor=x, alpha=1.4, include_top=False, pooling="avg",
                                      weights="imagenet" if weights == "imagenet" else None)
    return k.Model(inputs, base.output, name="mobilenet_v2_140_features")


def set_batchnorm_statistics(model, images) -> None:
    """Set every BatchNormalization's moving mean/variance to the statistics of ``images``.

    ``images``: float32 [N, 224, 224, 3] RGB 0..255. Random weights with the default statistics (mean 0,
    variance 1) shrink the signal to nothing within a few blocks; real statistics keep the features scaled.
    """
    import tensorflow as tf

    bns = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.BatchNormalization)]
    saved = [layer.momentum for layer in bns]
    for layer in bns:
        layer.momentum = 0.0
    model(images, training=True)
    for layer, momentum in zip(bns, saved, strict=True):
        layer.momentum = momentum
