"""Private copies of a bundle's checked files beside it, served when its own files may change underneath."""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from pathlib import Path

from ..bundle import Manifest, read_manifest, verify, write_manifest
from ..errors import BundleError

log = logging.getLogger(__name__)

KEEP_FREE_BYTES = 200 * 1024 * 1024   # a copy must leave this much free (as doctor asks for rebuilds)
PREFIX = ".{name}.serving-"           # beside the bundle: .NAME.serving-XXXXXXXX


def pattern(directory: Path) -> str:
    return PREFIX.format(name=directory.name) + "*"


def size_of(manifest: Manifest) -> int:
    return sum(int(w.get("bytes") or 0) for w in manifest.files.values())


def fits(directory: Path, manifest: Manifest) -> bool:
    """True when a copy of the bundle's files leaves ``KEEP_FREE_BYTES`` free beside it."""
    try:
        free = shutil.disk_usage(directory.parent).free
    except OSError:
        return False
    return size_of(manifest) + KEEP_FREE_BYTES <= free


def take(directory: Path, manifest: Manifest | None = None, *, seconds: float | None = None) -> Path:
    """Copy the bundle at ``directory`` into a new private folder beside it, checking every byte copied
    against ``manifest`` (default: its own) (one read of each file); returns the folder.

    The copy's files are known checked (``verify.remember``), so opening it does not read them again.
    BundleError naming the file if one is damaged, missing or mixed; TimeoutError after ``seconds``. Nothing
    is left behind on failure.
    """
    directory = Path(directory)
    if manifest is None:
        manifest = read_manifest(directory)
    deadline = None if seconds is None else time.monotonic() + seconds
    dst = directory.parent / (PREFIX.format(name=directory.name) + uuid.uuid4().hex[:8])
    dst.mkdir(mode=0o700)
    try:
        for name, want in manifest.files.items():
            name = Path(name).name
            verify.copy_checked(directory / name, dst / name, want, deadline)
        write_manifest(dst, manifest)   # the one these files were checked against, not what is there now
    except BaseException:
        drop(dst)
        raise
    return dst


def drop(copy: Path) -> None:
    """Delete a private copy (its files may stay mapped until closed: the kernel keeps them until then)."""
    verify.forget(copy)
    shutil.rmtree(copy, ignore_errors=True)


def clear(directory: Path) -> None:
    """Delete private copies of ``directory`` a previous process left (call before serving it)."""
    for p in Path(directory).parent.glob(pattern(Path(directory))):
        log.info("removing %s, a private copy left by an earlier run", p)
        drop(p)


def copy_error(exc: OSError, directory: Path) -> BundleError:
    """An OSError while copying (no space, a file gone) as the one-line BundleError the catalog reports."""
    where = exc.filename or directory
    return BundleError(f"{where}: cannot make a private copy of the bundle ({exc.strerror or exc}); free "
                       f"some space beside {directory} or replace the bundle only with pi-search index "
                       "install")
