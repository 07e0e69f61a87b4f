"""Approximate-candidate backends of a bundle: each module here defines one ``Backend`` subclass, which
registers itself by name (the manifest's ``index.backend``); every module of this package is loaded here."""

from __future__ import annotations

import importlib
import pkgutil

from .base import BACKENDS, Backend, Flag, NoOptions, Searcher, flags, get_backend, names, option

__all__ = ["BACKENDS", "Backend", "Flag", "NoOptions", "Searcher", "flags", "get_backend", "names", "option"]


def _load_all() -> None:
    """Import every backend module of this package (each registers its backend when it is defined)."""
    for mod in pkgutil.iter_modules(__path__):
        if mod.name != "base" and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


_load_all()
