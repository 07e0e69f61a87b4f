"""The rules a bundle passes before the daemon serves it when ``[index] trusted_keys`` is set."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import BundleError
from .manifest import MANIFEST, Manifest
from .signing import Signed, check_contents, check_not_older, load_trusted, parse
from .slots import read_state, status

log = logging.getLogger(__name__)


class Trust:
    """The trusted keys (key id -> ``signing.PublicKey``) and the rules a served bundle must pass."""

    def __init__(self, keys: dict):
        self.keys = dict(keys)

    @classmethod
    def from_paths(cls, paths) -> Trust | None:
        """The trust of ``[index] trusted_keys`` (None when it is empty: no signature is asked for)."""
        return cls(load_trusted(paths)) if paths else None

    def admit(self, directory: Path, served: Signed | None) -> tuple[Signed, Manifest]:
        """The signature and manifest of the bundle at ``directory`` if it may replace ``served``.

        The manifest is parsed from the very bytes the signature covers, so the files checked against it
        (sizes and SHA-256) are the files signed. SignatureError naming the rule otherwise.
        """
        directory = Path(directory)
        try:
            raw = (directory / MANIFEST).read_bytes()
        except FileNotFoundError:
            raise BundleError(f"{directory / MANIFEST}: missing; {directory} is not a bundle (pi-search "
                              "index install a signed one)") from None
        signed = parse(directory, self.keys, raw)
        try:
            manifest = Manifest.from_dict(json.loads(raw), directory)
        except ValueError as exc:
            raise BundleError(f"{directory / MANIFEST}: unreadable ({exc})") from None
        check_contents(directory, manifest)
        state = status(directory)
        recorded = (read_state(directory).get("slots") or {}).get(state.get("slot") or "", {})
        if recorded.get("signature_sha256") == signed.signature_sha256:
            return signed, manifest   # put there by index install or rollback (a downgrade on purpose)
        floor = [v for v in (served.version if served else None, state.get("version")) if v is not None]
        check_not_older(directory, signed, max(floor) if floor else None)
        return signed, manifest


def served_status(catalog) -> dict | None:
    """Slot, version and signer of the bundle ``catalog`` serves, and the last install event (``/healthz``):
    the version and signer are its checked signature's when signatures are required, else the slot's
    record."""
    directory = getattr(catalog, "directory", None)
    if directory is None:
        return None
    out = status(directory)
    bundle = getattr(catalog, "bundle", None)
    required = getattr(catalog, "trust", None) is not None
    out["signatures_required"] = required
    out["bundle"] = str(directory)
    if bundle is None:
        out.update(slot=None, version=None, signer=None)
        return out
    slot = getattr(bundle, "served_slot", out["slot"])
    if required:
        signed = getattr(bundle, "signed", None)
        out.update(slot=slot, version=signed and signed.version, signer=signed and signed.signer,
                   key_id=signed and signed.key_id)
    elif slot != out["slot"]:
        held = (read_state(directory).get("slots") or {}).get(slot or "", {})
        out.update(slot=slot, version=held.get("version"), signer=held.get("signer"))
    return out
