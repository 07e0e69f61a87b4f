"""Where the shipped model files are: ``models/`` of a checkout, the package data, or beside the venv."""

from __future__ import annotations

import sys
from pathlib import Path

SHIPPED_INT8 = "efficientnet_lite0_int8.tflite"
SHIPPED_FLOAT = "efficientnet_lite0_float32.tflite"


def _candidates() -> tuple[Path, ...]:
    """Folders that may hold the shipped models, in the order they are tried.

    1. ``models/`` beside the package: a checkout (also an editable install), the source of truth;
    2. ``pi_search/data/models``: the package data of a wheel (built from ``models/``; int8 model only);
    3. ``models/`` beside the venv: ``/opt/pi-search/models`` of the system install (both models).
    """
    here = Path(__file__).resolve().parent.parent
    found = [here.parent / "models", here / "data" / "models"]
    if sys.prefix != sys.base_prefix:  # in a venv
        found.append(Path(sys.prefix).parent / "models")
    return tuple(found)


def models_dir() -> Path:
    """The first folder that holds the shipped int8 model (``models/`` of the checkout when none does)."""
    candidates = _candidates()
    for candidate in candidates:
        if (candidate / SHIPPED_INT8).is_file():
            return candidate
    return candidates[0]


def shipped_model(name: str = SHIPPED_INT8) -> Path:
    """The shipped model file ``name`` from the first folder that holds it (else under ``models_dir()``)."""
    for candidate in _candidates():
        if (candidate / name).is_file():
            return candidate / name
    return models_dir() / name
