"""Where the shipped model files are: ``models/`` of the checkout, or the installed package data."""

from __future__ import annotations

from pathlib import Path

SHIPPED_INT8 = "efficientnet_lite0_int8.tflite"
SHIPPED_FLOAT = "efficientnet_lite0_float32.tflite"


def models_dir() -> Path:
    """The directory that holds the shipped ``.tflite`` files."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "models", here / "data" / "models"):
        if (candidate / SHIPPED_INT8).is_file():
            return candidate
    return here.parent / "models"


def shipped_model(name: str = SHIPPED_INT8) -> Path:
    return models_dir() / name
