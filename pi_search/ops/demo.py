"""The demo: the bundled catalog, built once into a cache directory, and its replayed camera frames."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from ..bundle import Bundle, bundle_lock
from ..embed.build import build_bundle
from ..errors import BundleError, CatalogError

log = logging.getLogger(__name__)

KEY_FILE = "demo-bundle.key"


def demo_data() -> Path:
    """The demo catalog shipped with the package: ``catalog.csv``, ``images/`` and camera ``frames/``."""
    root = Path(__file__).resolve().parents[1] / "data" / "demo"
    if not (root / "catalog.csv").is_file() or not (root / "frames").is_dir():
        raise CatalogError(f"{root}: the demo catalog is missing; reinstall pi-search from a full checkout")
    return root


def default_state_dir() -> Path:
    """``$XDG_CACHE_HOME/pi-search`` (default ``~/.cache/pi-search``): where the demo bundle is kept."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pi-search"


def _catalog_key(catalog: Path, extractor) -> str:
    """Changes whenever the catalog (csv, image names and sizes) or the model changes."""
    h = hashlib.sha256()
    h.update((catalog / "catalog.csv").read_bytes())
    for p in sorted((catalog / "images").rglob("*")):
        if p.is_file():
            h.update(f"{p.relative_to(catalog)}:{p.stat().st_size}\n".encode())
    h.update(extractor.sha256.encode())
    return h.hexdigest()


def demo_bundle(extractor, state_dir: str | Path | None = None, *, rebuild: bool = False,
                progress: bool = True, on_build: Callable[[Path], None] | None = None) -> Path:
    """The demo bundle in ``state_dir``, built (with a progress bar) on first use or when stale;
    ``on_build(out)`` is called before a build starts."""
    catalog = demo_data()
    state = Path(state_dir) if state_dir else default_state_dir()
    out = state / "demo-bundle"
    key_file = state / KEY_FILE
    key = _catalog_key(catalog, extractor)
    state.mkdir(parents=True, exist_ok=True)
    with bundle_lock(out, what="pi-search demo build"):   # a second demo waits for the first one's build
        if not rebuild and key_file.is_file() and key_file.read_text().strip() == key:
            try:
                Bundle.open(out, extractor=extractor).close()
                log.info("demo bundle %s is up to date", out)
                return out
            except BundleError as exc:
                log.info("rebuilding the demo bundle: %s", exc)
        log.info("building the demo bundle in %s (once)", out)
        if on_build is not None:
            on_build(out)
        build_bundle(catalog, out, extractor, progress=progress, locked=True)
        key_file.write_text(key + "\n")
    return out
