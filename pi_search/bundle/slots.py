"""Two bundle slots behind one path (a symlink), switched atomically, with a state file and rollback."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from ..errors import BundleError
from .files import _exchange, bundle_lock, fsync_dir, fsync_tree, swap_into_place, write_atomic
from .manifest import MANIFEST
from .signing import parse
from .verify import copy_checked

log = logging.getLogger(__name__)

SLOTS = ("a", "b")
STATE = "state.json"
LINK_PREFIX = ".{name}.slotlink-"
FAULT_ENV = "PI_SEARCH_INSTALL_PAUSE"   # tests: "STEP" or "STEP:SECONDS" pauses at a named step


def pause(step: str) -> None:
    """Stop for a while at ``step`` when ``PI_SEARCH_INSTALL_PAUSE`` names it (fault tests kill us there)."""
    want = os.environ.get(FAULT_ENV, "")
    if not want:
        return
    name, _, seconds = want.partition(":")
    if name == step:
        print(f"PAUSED {step}", flush=True)
        time.sleep(float(seconds or 30))


def slots_dir(target: Path) -> Path:
    return target.parent / f"{target.name}.slots"


def state_path(target: Path) -> Path:
    return slots_dir(target) / STATE


def read_state(target: str | Path) -> dict:
    """The state file of ``target`` (``{}`` when it has none or it is unreadable)."""
    try:
        data = json.loads(state_path(Path(target)).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_state(target: Path, state: dict) -> None:
    body = (json.dumps(state, indent=1, sort_keys=True) + "\n").encode()
    write_atomic(state_path(target), lambda f: f.write(body))


def active(target: str | Path) -> str | None:
    """The slot ``target`` points at (``a``/``b``), or None (a plain directory or nothing)."""
    target = Path(target)
    if not target.is_symlink():
        return None
    name = Path(os.readlink(target)).name
    return name if name in SLOTS else None


def status(target: str | Path) -> dict:
    """Slot, version, signer and the last event of ``target`` (for info, doctor and /healthz)."""
    target = Path(target)
    state = read_state(target)
    slot = active(target)
    held = (state.get("slots") or {}).get(slot or "", {})
    return {"slot": slot, "version": held.get("version"), "signer": held.get("signer"),
            "previous": _previous(target, slot), "last_event": state.get("last_event")}


def _previous(target: Path, slot: str | None) -> str | None:
    if slot is None:
        return None
    other = "b" if slot == "a" else "a"
    return other if (slots_dir(target) / other / MANIFEST).is_file() else None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _point(target: Path, slot: str) -> None:
    """Make ``target`` a symlink to ``TARGET.slots/slot`` in one atomic step (a plain directory there is
    moved into the other slot: the first install converts an existing bundle)."""
    link = target.parent / (LINK_PREFIX.format(name=target.name) + uuid.uuid4().hex[:8])
    os.symlink(f"{target.name}.slots/{slot}", link)
    if target.is_symlink() or not target.exists():
        os.replace(link, target)
        fsync_dir(target.parent)
        return
    other = slots_dir(target) / ("b" if slot == "a" else "a")
    if _exchange(link, target):     # target: the link; link's name: the old plain directory
        fsync_dir(target.parent)
        pause("convert")
        if other.exists():
            shutil.rmtree(other)
        os.rename(link, other)
    else:                            # no atomic exchange here: two renames (``recover`` finishes a kill)
        tmp = target.parent / (LINK_PREFIX.format(name=target.name) + "dir-" + uuid.uuid4().hex[:8])
        os.rename(target, tmp)
        os.replace(link, target)
        if other.exists():
            shutil.rmtree(other)
        os.rename(tmp, other)
    fsync_dir(target.parent)
    fsync_dir(slots_dir(target))


def recover(target: str | Path) -> None:
    """Tidy after a killed install or switch: a plain bundle left under a link name goes into the free slot
    (or back at ``target`` if nothing is there), stray links and half-written slots are deleted."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    for p in target.parent.glob(LINK_PREFIX.format(name=target.name) + "*"):
        if p.is_symlink():
            p.unlink()
        elif p.is_dir():
            if not target.exists() and not target.is_symlink():
                os.rename(p, target)
                continue
            slot = "a" if active(target) == "b" else "b"
            dest = slots_dir(target) / slot
            if (p / MANIFEST).is_file() and not dest.exists():
                log.warning("%s: an interrupted switch left the old bundle at %s; keeping it as slot %s",
                            target, p.name, slot)
                os.rename(p, dest)
            else:
                shutil.rmtree(p, ignore_errors=True)
    sd = slots_dir(target)
    if sd.is_dir():
        for p in sd.glob(".*.install-*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in sd.glob(f".{STATE}.tmp-*"):
            p.unlink(missing_ok=True)


def write_slot(target: Path, source: Path, files: dict, raw_manifest: bytes, extra: tuple[str, ...]) -> str:
    """Copy the bundle at ``source`` into the slot ``target`` does not serve (each byte checked against
    ``files``, the manifest's entries), synced; returns the slot's name. Call holding ``bundle_lock``."""
    slot = "b" if active(target) == "a" else "a"
    sd = slots_dir(target)
    sd.mkdir(exist_ok=True)
    dest = sd / slot
    tmp = sd / f".{slot}.install-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        for name, want in files.items():
            name = Path(name).name
            copy_checked(source / name, tmp / name, want)
            pause("copy")
        (tmp / MANIFEST).write_bytes(raw_manifest)
        for name in extra:
            if (source / name).is_file():
                shutil.copyfile(source / name, tmp / name)
        if os.geteuid() == 0 and target.exists():
            st = target.stat()
            for p in (tmp, *tmp.iterdir()):
                os.chown(p, st.st_uid, st.st_gid)
        fsync_tree(tmp)
        pause("written")
        if active(target) is None and target.exists() and dest.exists():
            shutil.rmtree(dest)   # a plain bundle at target is served: the slot dirs are leftovers
        swap_into_place(tmp, dest)
        fsync_dir(sd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return slot


def record_of(directory: Path, signed=None) -> dict:
    """What the state file keeps about a slot's bundle: its signature's version, signer and digest."""
    if signed is None:
        try:
            signed = parse(directory, None)
        except BundleError:
            signed = None
    if signed is None:
        return {"version": None, "signer": None, "key_id": None, "signature_sha256": None}
    return {"version": signed.version, "signer": signed.signer, "key_id": signed.key_id,
            "signature_sha256": signed.signature_sha256}


def switch(target: Path, slot: str, record: dict, event: dict) -> None:
    """Point ``target`` at ``slot`` and record ``record`` (version, signer ...) for it and ``event``."""
    state = read_state(target)
    state.setdefault("slots", {})
    before = active(target)
    pause("switch")
    _point(target, slot)
    if before is None and target.exists():   # the plain bundle served now becomes the other slot
        other = "b" if slot == "a" else "a"
        state["slots"][other] = record_of(slots_dir(target) / other)
    state["slots"][slot] = record
    state["last_event"] = {"at": _now(), **event}
    _write_state(target, state)
    pause("switched")


def note(target: Path, event: dict) -> None:
    """Record ``event`` (a refused install, a rollback) as the last one, without switching."""
    slots_dir(target).mkdir(exist_ok=True)
    state = read_state(target)
    state["last_event"] = {"at": _now(), **event}
    _write_state(target, state)


def rollback(target: str | Path, *, check=None, reason: str = "by hand") -> dict:
    """Point ``target`` back at the other slot (its bundle checked whole first by ``check(dir)``)."""
    target = Path(target)
    with bundle_lock(target, what="rollback"):
        recover(target)
        slot = active(target)
        prev = _previous(target, slot)
        if prev is None:
            raise BundleError(f"{target}: no previous bundle to go back to (only an install through "
                              "pi-search index install keeps one); install the bundle you want instead")
        dest = slots_dir(target) / prev
        if check is not None:
            check(dest)
        state = read_state(target)
        _point(target, prev)
        state["last_event"] = {"at": _now(), "kind": "rolled back", "from": slot, "to": prev,
                               "reason": reason}
        _write_state(target, state)
    log.warning("%s: rolled back from slot %s to slot %s (%s)", target, slot, prev, reason)
    return {"bundle": str(target), "slot": prev, "from": slot, **{k: v for k, v in (state.get("slots") or {})
                                                                  .get(prev, {}).items() if k in
                                                                  ("version", "signer")}}

