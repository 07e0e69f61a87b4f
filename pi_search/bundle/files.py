"""Bundle files on disk: fingerprints, syncing, the bundle lock, the one atomic swap and crash recovery."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import CatalogError
from .manifest import MANIFEST
from .verify import sha256_file

log = logging.getLogger(__name__)


SAMPLE_BYTES = 64 * 1024   # a file's fingerprint hashes its size, first and last 64 KiB


def fingerprint(path: Path, *, whole: bool = True) -> dict:
    """``{"bytes", "sample_sha256", "sha256"}`` of a bundle file, as its manifest lists it: the sample (its
    size, first and last 64 KiB) tells a file of another build cheaply; the SHA-256 of every byte is what a
    bundle is checked against before it is served (``verify.check_file``). ``whole=False``: no SHA-256."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(SAMPLE_BYTES))
        if size > SAMPLE_BYTES:
            f.seek(max(SAMPLE_BYTES, size - SAMPLE_BYTES))
            h.update(f.read(SAMPLE_BYTES))
    out = {"bytes": size, "sample_sha256": h.hexdigest()}
    if whole:
        out["sha256"] = sha256_file(path)
    return out


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    for p in path.iterdir():
        if p.is_file():
            with open(p, "rb+") as f:
                os.fsync(f.fileno())
    fsync_dir(path)


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a unique temporary file beside ``path``, sync it and rename it to ``path``: the
    file is there whole or not at all (a write that fails or is interrupted leaves no temporary file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


LEFTOVER_PATTERNS = (".{name}.tmp-*", ".{name}.old-*", ".{name}.compact-*", "..{name}.compact-*.tmp-*",
                     ".{name}.fold-*.npy", ".{name}.install-*")


def lock_path(out_dir: Path) -> Path:
    """The lock file that builds, installs and compactions of ``out_dir`` hold: ``.NAME.lock`` beside it."""
    return out_dir.parent / f".{out_dir.name}.lock"


@contextlib.contextmanager
def bundle_lock(out_dir: str | Path, *, wait: bool = True, what: str = "build") -> Iterator[None]:
    """Hold the lock of the bundle path ``out_dir`` (one build, install or compaction at a time).

    ``wait``: block until the other one ends (saying so once); otherwise CatalogError at once. The lock file
    (``.NAME.lock`` beside the bundle) is removed again on release, so it only exists while held.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(out_dir)
    said = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if not _flock(fd, blocking=False):
                holder = _holder(fd)
                if not wait:
                    raise CatalogError(f"{out_dir}: another {holder} is running; try again later")
                if not said:
                    log.warning("%s: waiting for another %s to finish", out_dir, holder)
                    said = True
                _flock(fd, blocking=True)
            if os.fstat(fd).st_ino == os.stat(path).st_ino:   # not a file its last holder removed
                break
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} (pid {os.getpid()})".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


HOLDER_GRACE_S = 0.5   # how long a waiter gives a lock's new holder to write its name in


def _holder(fd: int) -> str:
    """Who holds the lock on ``fd``, as it wrote itself in right after taking it (e.g. "pi-search demo build
    (pid 12)"); a holder that took it a moment ago gets ``HOLDER_GRACE_S`` to do so, else "build"."""
    end = time.monotonic() + HOLDER_GRACE_S
    while True:
        name = os.pread(fd, 64, 0).decode(errors="replace").strip()
        if name or time.monotonic() >= end:
            return name or "build"
        time.sleep(0.01)


def _flock(fd: int, *, blocking: bool) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries in one atomic step (Linux renameat2 RENAME_EXCHANGE); False if not there."""
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def swap_into_place(new: Path, out_dir: Path) -> None:
    """Put the complete bundle directory ``new`` at ``out_dir`` in one atomic step, then delete the old one.

    Where the file system can exchange two names (Linux renameat2), a reader or a kill at any instant finds
    either the old or the new bundle at ``out_dir``. Elsewhere it takes two renames, and a crash between them
    is finished by ``recover`` (the complete new bundle is put in place). Call it holding ``bundle_lock``.
    """
    new, out_dir = Path(new), Path(out_dir)
    if not out_dir.exists():
        os.rename(new, out_dir)
        fsync_dir(out_dir.parent)
        return
    if _exchange(new, out_dir):
        fsync_dir(out_dir.parent)
        if new.is_symlink():   # ``out_dir`` was a slot link (``slots``): the slots stay as they are
            new.unlink()
        else:
            shutil.rmtree(new, ignore_errors=True)   # ``new`` now names the old bundle
        return
    old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(out_dir, old)
    os.rename(new, out_dir)
    fsync_dir(out_dir.parent)
    if old.is_symlink():
        old.unlink()
    else:
        shutil.rmtree(old, ignore_errors=True)


def _leftovers(out_dir: Path) -> list[Path]:
    parent, name = out_dir.parent, out_dir.name
    return sorted({p for pat in LEFTOVER_PATTERNS for p in parent.glob(pat.format(name=name))},
                  key=lambda p: p.stat().st_mtime if p.exists() else 0.0)


def recover(out_dir: str | Path, *, locked: bool = False) -> None:
    """Clean up after a build, install or compaction that was killed; safe and cheap to call at any time.

    If ``out_dir`` is missing but a complete bundle was left beside it, that one is put in place (the newest).
    Leftover temporary and old directories are deleted. Does nothing while another process holds the lock.
    ``locked``: the caller holds ``bundle_lock`` already.
    """
    out_dir = Path(out_dir)
    if not out_dir.parent.is_dir() or (out_dir.exists() and not _leftovers(out_dir)
                                       and not lock_path(out_dir).exists()):
        return
    if not locked:
        try:
            with bundle_lock(out_dir, wait=False, what="clean-up"):
                recover(out_dir, locked=True)
        except CatalogError:
            log.info("%s: another process is writing it; leaving its files alone", out_dir)
        except OSError as exc:
            log.warning("%s: cannot check for an interrupted build (%s)", out_dir, exc)
        return
    left = _leftovers(out_dir)
    if not out_dir.exists():
        complete = [p for p in left if p.is_dir() and (p / MANIFEST).is_file()]
        if complete:
            log.warning("%s: missing after an interrupted build; putting %s in place", out_dir,
                        complete[-1].name)
            os.rename(complete[-1], out_dir)
            fsync_dir(out_dir.parent)
    for p in left:
        if not p.exists():
            continue
        log.warning("removing %s, left by an interrupted build", p)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
