"""Putting a bundle built elsewhere in place (``index install``) and describing one (``index info``)."""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from ..errors import BundleError
from . import verify
from .bundle import Bundle
from .files import bundle_lock, fsync_tree, recover, swap_into_place
from .manifest import MANIFEST, read_manifest
from .memory import machine_fit, needs
from .write import check_out_dir

log = logging.getLogger(__name__)


def install_bundle(source: str | Path, out_dir: str | Path, *, model_sha256: str | None = None) -> dict:
    """Put the bundle at ``source`` (built elsewhere, copied here) at ``out_dir`` in one atomic step.

    The source is checked whole first (every byte of every file against its manifest's SHA-256, SQLite's
    quick_check, the model when ``model_sha256`` is given); the files its manifest lists are copied beside
    ``out_dir`` (each byte copied checked again), synced, read back, and swapped in
    (``swap_into_place``), so a daemon serving ``out_dir`` keeps answering from the old bundle until it maps
    the new one. Run as root, the copy gets the owner of the bundle it replaces. Returns a report.
    """
    source, out_dir = Path(source), Path(out_dir)
    t0 = time.perf_counter()
    if not source.is_dir():
        raise BundleError(f"{source}: no such folder; give the folder of the bundle you copied over")
    if source.resolve() == out_dir.resolve():
        raise BundleError(f"{source} is already the bundle at {out_dir}; give the folder of the new bundle")
    raw = (source / MANIFEST).read_bytes() if (source / MANIFEST).is_file() else b""
    with Bundle.open(source, deep=True) as bundle:
        manifest = bundle.manifest
    if (source / MANIFEST).read_bytes() != raw:
        raise BundleError(f"{source / MANIFEST}: changed while it was checked; copy the bundle again")
    if model_sha256 and manifest.model.sha256 != model_sha256:
        raise BundleError(f"{source}: built with model {manifest.model.name} (sha256 "
                          f"{manifest.model.sha256[:12]}), but this appliance uses another model "
                          f"(sha256 {model_sha256[:12]}); rebuild it with the appliance's model")
    check_out_dir(out_dir)
    with bundle_lock(out_dir, what="install"):
        recover(out_dir, locked=True)
        tmp = out_dir.parent / f".{out_dir.name}.install-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            for name, want in manifest.files.items():   # each byte copied is checked against the manifest
                name = Path(name).name
                verify.copy_checked(source / name, tmp / name, want)
            (tmp / MANIFEST).write_bytes(raw)
            if os.geteuid() == 0 and out_dir.exists():
                st = out_dir.stat()
                for p in (tmp, *tmp.iterdir()):
                    os.chown(p, st.st_uid, st.st_gid)
            fsync_tree(tmp)
            Bundle.open(tmp).close()   # the copy is what the source was, as written
            swap_into_place(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("installed %s at %s: %d items", source, out_dir, manifest.items)
    return {"bundle": str(out_dir), "source": str(source), "items": int(manifest.items),
            "created": manifest.created, "seconds": round(time.perf_counter() - t0, 3)}


def info(directory: str | Path) -> dict:
    """What ``pi-search index info`` shows: the manifest plus the size of every file."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}
    raw = manifest.to_dict()
    memory = raw.get("memory") or needs(directory, raw)
    return {"directory": str(directory), **raw, "items": manifest.items - manifest.views,
            "photos": manifest.items, "files": files, "total_bytes": sum(files.values()),
            "memory": {**memory, "machine": machine_fit(memory)}}
