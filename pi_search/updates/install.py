"""Putting a bundle built elsewhere in place (``index install``) and describing one (``index info``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..bundle import (
    MANIFEST,
    Bundle,
    bundle_lock,
    check_model,
    check_out_dir,
    machine_fit,
    needs,
    read_manifest,
    recover,
    signing,
    slots,
)
from ..errors import BundleError
from . import selfcheck as selfcheck_mod

log = logging.getLogger(__name__)


def install_bundle(source: str | Path, out_dir: str | Path, *, model_sha256: str | None = None,
                   trusted: dict | None = None, allow_downgrade: bool = False, extractor=None,
                   selfcheck: bool = True) -> dict:
    """Put the bundle at ``source`` (built elsewhere, copied here) at ``out_dir`` in one atomic step.

    The source is checked whole first (every byte of every file against its manifest's SHA-256, SQLite's
    quick_check, the model when ``model_sha256`` or ``extractor`` is given, at least one item); with
    ``trusted`` (key id -> ``signing.PublicKey``) it must be signed by one of those keys and not older
    than the bundle served (``allow_downgrade``: go back on purpose). Its files are copied into the slot
    ``out_dir`` does not serve (``slots``; each byte copied checked again; a plain bundle directory at
    ``out_dir`` is converted), synced, self-checked (``selfcheck.run``) and switched in by renaming a
    symlink, so a daemon serving ``out_dir`` keeps answering from the old bundle until it maps the new one.
    A failed self-check switches nothing and is recorded. Run as root, the copy gets the owner of the
    bundle it replaces.
    """
    source, out_dir = Path(source), Path(out_dir)
    t0 = time.perf_counter()
    if not source.is_dir():
        raise BundleError(f"{source}: no such folder; give the folder of the bundle you copied over")
    if source.resolve() == out_dir.resolve() or source.resolve().parent == slots.slots_dir(out_dir).resolve():
        raise BundleError(f"{source} is already the bundle at {out_dir}; give the folder of the new bundle")
    raw = (source / MANIFEST).read_bytes() if (source / MANIFEST).is_file() else b""
    signed = signing.parse(source, trusted, raw) if trusted is not None else None
    if signed is None and (source / signing.SIGNATURE).is_file():
        try:
            signed = signing.parse(source, None, raw)   # shown, not trusted: no trusted_keys are set
        except signing.SignatureError:
            signed = None
    with Bundle.open(source, deep=True) as bundle:
        manifest = bundle.manifest
    if (source / MANIFEST).read_bytes() != raw:
        raise BundleError(f"{source / MANIFEST}: changed while it was checked; copy the bundle again")
    signing.check_contents(source, manifest)
    if extractor is not None:
        check_model(manifest, extractor, source)
    if model_sha256 and manifest.model.sha256 != model_sha256:
        raise BundleError(f"{source}: built with model {manifest.model.name} (sha256 "
                          f"{manifest.model.sha256[:12]}), but this appliance uses another model "
                          f"(sha256 {model_sha256[:12]}); rebuild it with the appliance's model")
    check_out_dir(out_dir)
    with bundle_lock(out_dir, what="install"):
        slots.recover(out_dir)
        recover(out_dir, locked=True)
        if trusted is not None and not allow_downgrade:
            signing.check_not_older(source, signed, served_version(out_dir, trusted))
        try:
            slot = slots.write_slot(out_dir, source, manifest.files, raw, (signing.SIGNATURE,))
        except OSError as exc:
            raise BundleError(f"{out_dir}: cannot write the new bundle beside it ({exc.strerror or exc}); "
                              f"nothing was changed: free some space in {out_dir.parent} and install again"
                              ) from None
        new = slots.slots_dir(out_dir) / slot
        Bundle.open(new).close()   # the copy is what the source was, as written
        record = {**slots.record_of(new, signed), "items": int(manifest.items), "source": str(source),
                  "installed": slots._now()}
        check = None
        if selfcheck:
            try:
                check = selfcheck_mod.run(new, extractor)
            except BundleError as exc:
                slots.note(out_dir, {"kind": "refused", "slot": slot, "reason": str(exc)})
                log.error("%s", exc)
                raise
        slots.switch(out_dir, slot, record, {"kind": "installed", "slot": slot,
                                             "version": record["version"], "signer": record["signer"],
                                             **({"downgrade": True} if allow_downgrade else {})})
    log.info("installed %s at %s (slot %s): %d items", source, out_dir, slot, manifest.items)
    return {"bundle": str(out_dir), "source": str(source), "items": int(manifest.items),
            "created": manifest.created, "slot": slot, "version": record["version"],
            "signer": record["signer"], "selfcheck": check, "seconds": round(time.perf_counter() - t0, 3)}


def served_version(out_dir: Path, trusted: dict | None) -> int | None:
    """The version of the bundle served at ``out_dir``: its trusted signature's, else the recorded one."""
    version = None
    if (Path(out_dir) / signing.SIGNATURE).is_file():
        try:
            version = signing.parse(out_dir, trusted).version
        except BundleError:
            version = None
    if version is None:
        version = slots.status(out_dir).get("version")
    return version


def info(directory: str | Path) -> dict:
    """What ``pi-search index info`` shows: the manifest plus the size of every file."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}
    raw = manifest.to_dict()
    memory = raw.get("memory") or needs(directory, raw)
    return {"directory": str(directory), **raw, "items": manifest.items - manifest.views,
            "photos": manifest.items, "files": files, "total_bytes": sum(files.values()),
            "memory": {**memory, "machine": machine_fit(memory)}, "update": update_status(directory)}


def update_status(directory: str | Path, trusted: dict | None = None) -> dict:
    """Slot, version and signer of the bundle at ``directory`` (its ``manifest.sig``, checked against
    ``trusted`` when given) and the last install event recorded beside it."""
    out = slots.status(directory)
    try:
        signed = signing.parse(directory, trusted)
        out.update(version=signed.version, signer=signed.signer, key_id=signed.key_id, signed=True)
    except BundleError as exc:
        out.update(signed=False, signature_problem=str(exc))
    return out
