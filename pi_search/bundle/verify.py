"""Whole-file SHA-256 checks of bundle files against their manifest, remembered per file within a process."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path

from ..errors import BundleError

log = logging.getLogger(__name__)

CHUNK = 1 << 20            # bytes read (and written, when copying) at a time

_lock = threading.Lock()
_checked: dict[tuple, str] = {}   # identity (see ``_identity``) -> sha256 of a file that passed its check


def _identity(path: Path, st: os.stat_result) -> tuple:
    """What must stay the same for a checked file to count as checked: its path, device, inode, size and
    modification and change times (a write in place changes them; so does setting the time back)."""
    return (str(Path(path).absolute()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def sha256_file(path: Path) -> str:
    """SHA-256 (hex) of every byte of ``path``, read in ``CHUNK``-sized pieces (the GIL is released while
    hashing, so searches of another bundle keep running)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def remember(path: Path, sha256: str) -> None:
    """Record that ``path`` as it is now has ``sha256`` (a file this process has just written or copied)."""
    st = os.stat(path)
    with _lock:
        _checked[_identity(path, st)] = sha256


def forget(directory: Path) -> None:
    """Drop what is remembered about files under ``directory`` (a private copy being deleted)."""
    prefix = str(Path(directory).absolute()) + os.sep
    with _lock:
        for key in [k for k in _checked if k[0].startswith(prefix)]:
            del _checked[key]


def _fix(directory: Path) -> str:
    return ("copy the whole bundle again (pi-search index install) or rebuild it: pi-search index build "
            f"CATALOG --out {directory}")


def check_file(path: Path, want: dict) -> None:
    """``path`` has the size and SHA-256 the manifest lists (``want``: ``{"bytes", "sha256", ...}``).

    BundleError in one line naming the file and what to do otherwise. A file checked before by this process
    and unchanged since (same path, inode, size and times) is not read again.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BundleError(f"{path}: missing; {_fix(path.parent)}") from None
    if st.st_size != want.get("bytes"):
        raise BundleError(f"{path}: {st.st_size} bytes, manifest says {want.get('bytes')}; the bundle is "
                          "incomplete (a copy in progress?) or mixed: " + _fix(path.parent))
    expected = want.get("sha256")
    if not expected:
        raise BundleError(f"{path}: the manifest lists no sha256 for it (a bundle written by an older "
                          f"pi-search), so it cannot be checked; rebuild it: pi-search index build CATALOG "
                          f"--out {path.parent}")
    key = _identity(path, st)
    with _lock:
        known = _checked.get(key)
    if known == expected:
        return
    have = sha256_file(path)
    if have != expected:
        raise BundleError(f"{path}: damaged (its SHA-256 differs from the manifest's: {have[:12]} is not "
                          f"{expected[:12]}); {_fix(path.parent)}")
    if _identity(path, os.stat(path)) == key:   # unchanged while it was read
        with _lock:
            _checked[key] = have


def copy_checked(src: Path, dst: Path, want: dict, deadline: float | None = None) -> None:
    """Copy ``src`` to the new file ``dst``, hashing the bytes copied; BundleError naming ``src`` unless they
    have the size and SHA-256 ``want`` lists. ``dst`` is then known checked (``remember``).

    ``deadline`` (``time.monotonic()``): TimeoutError once passed (the copy is left for the caller to delete).
    """
    expected = want.get("sha256")
    if not expected:
        check_file(src, want)   # says why it cannot be checked
    h = hashlib.sha256()
    n = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(src, "rb") as fi, open(dst, "xb") as fo:
        while True:
            got = fi.readinto(buf)
            if not got:
                break
            h.update(view[:got])
            fo.write(view[:got])
            n += got
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"copying {src} took too long")
    if n != want.get("bytes"):
        raise BundleError(f"{src}: {n} bytes, manifest says {want.get('bytes')}; the bundle is incomplete "
                          f"(a copy in progress?) or mixed: {_fix(src.parent)}")
    if h.hexdigest() != expected:
        raise BundleError(f"{src}: damaged (its SHA-256 differs from the manifest's: {h.hexdigest()[:12]} is "
                          f"not {expected[:12]}); {_fix(src.parent)}")
    remember(dst, expected)
