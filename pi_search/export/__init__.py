"""Model export tool chain (needs the ``export`` extra: TensorFlow); never imported by the daemon."""
