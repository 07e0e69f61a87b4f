"""After a switch, wait for the local daemon to serve the new slot (``/healthz``), or switch back."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..bundle import slots
from ..errors import BundleError

log = logging.getLogger(__name__)

POLL_S = 0.5


def healthz_url(host: str, port: int) -> str:
    probe = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    return f"http://{'[' + probe + ']' if ':' in probe else probe}:{port}/healthz"


def health(url: str) -> dict | None:
    """The JSON of ``/healthz`` at ``url`` (also when it answers 503), or None if no daemon answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return json.loads(exc.read() or b"{}")
        except ValueError:
            return None
    except (OSError, ValueError):
        return None


def _serving(h: dict | None, slot: str) -> tuple[bool, str | None]:
    """(serves ``slot``, why not when it refused it) from a ``/healthz`` answer."""
    ix = (h or {}).get("index") or {}
    update = ix.get("update") or {}
    if ix.get("up") and update.get("slot") == slot:
        return True, None
    return False, ix.get("refused") or ix.get("problem")


def serves(h: dict | None, target: Path) -> bool:
    """True when the daemon that gave ``/healthz`` answer ``h`` serves the bundle at ``target``."""
    where = (((h or {}).get("index") or {}).get("update") or {}).get("bundle")
    return bool(where) and Path(where).absolute() == Path(target).absolute()


def refused(h: dict | None) -> str | None:
    return ((h or {}).get("index") or {}).get("refused")


def await_served(target: Path, url: str, slot: str, seconds: float, refused_before: str | None = None
                 ) -> dict:
    """Wait up to ``seconds`` for the daemon at ``url`` to serve ``slot`` of ``target``; if it does not (it
    refused the bundle: a refusal other than ``refused_before``, or it stopped answering), point ``target``
    back at the other slot, record why and raise BundleError. Returns the last ``/healthz`` answer."""
    deadline = time.monotonic() + seconds
    while True:
        h = health(url)
        ok, why = _serving(h, slot)
        if ok:
            return h
        if refused(h) and refused(h) != refused_before:
            break   # it looked at the new bundle and refused it
        if time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    reason = (f"the daemon did not serve it within {seconds:.0f} s"
              + (f": {why}" if why else " (it did not answer)" if h is None else ""))
    try:
        slots.rollback(target, reason=reason)
    except (BundleError, OSError) as exc:
        raise BundleError(f"{target}: {reason}; switching back failed too ({exc}); run pi-search index "
                          "rollback") from None
    raise BundleError(f"{target}: {reason}; switched back to the previous bundle")
