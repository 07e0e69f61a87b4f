"""Several kiosks at once: their update status from ``/healthz`` and pushing a bundle to them one by one."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..bundle import MANIFEST, SIGNATURE, Manifest
from ..errors import BundleError, PiSearchError

log = logging.getLogger(__name__)

PIECE = 4 << 20          # bytes a PUT carries (halved when a kiosk's upload limit is lower)
TIMEOUT_S = 30


def base_url(host: str) -> str:
    """``HOST[:PORT]`` (port 8080 when none) or a full ``http://`` address, without a trailing slash."""
    if host.startswith(("http://", "https://")):
        return host.rstrip("/")
    return f"http://{host}" + ("" if ":" in host.rsplit("]", 1)[-1] else ":8080")


def _request(url: str, token: str | None, *, method: str = "GET", data: bytes | None = None,
             timeout: float = TIMEOUT_S) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of one request; PiSearchError when nothing answers."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if data is not None:
        headers["Content-Type"] = "application/octet-stream"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}"), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read() or b"{}")
        except ValueError:
            body = {}
        return exc.code, body, dict(exc.headers)
    except (OSError, ValueError) as exc:
        raise PiSearchError(f"{url}: no answer ({getattr(exc, 'reason', None) or exc})") from None


def status(host: str, token: str | None = None) -> dict:
    """One kiosk's health and bundle: ``{"host", "ok", "items", "slot", "version", "signer", "problem"}``."""
    url = base_url(host)
    try:
        code, h, _ = _request(url + "/healthz", token, timeout=5)
    except PiSearchError as exc:
        return {"host": host, "ok": False, "items": None, "slot": None, "version": None, "signer": None,
                "problem": str(exc)}
    ix = h.get("index") or {}
    up = ix.get("update") or {}
    problem = "; ".join(h.get("reasons") or []) or ix.get("refused")
    return {"host": host, "ok": code == 200 and bool(h.get("ok")), "items": ix.get("items"),
            "slot": up.get("slot"), "version": up.get("version"), "signer": up.get("signer"),
            "problem": problem or (None if code == 200 else f"HTTP {code}")}


def _upload(url: str, token: str | None, path: Path, say: Callable[[str], None]) -> None:
    """PUT ``path`` to ``url`` in pieces, going on from what the kiosk has already (409 names it)."""
    size = path.stat().st_size
    piece = PIECE
    offset = 0
    with open(path, "rb") as f:
        while True:
            f.seek(offset)
            block = f.read(piece)
            code, body, headers = _request(f"{url}?offset={offset}", token, method="PUT", data=block)
            if code == 413 and piece > 64 * 1024:
                piece //= 2
                continue
            if code == 409 and "X-Have-Bytes" in headers:
                offset = int(headers["X-Have-Bytes"])
                continue
            if code != 200:
                raise BundleError(f"{url}: HTTP {code}: {body.get('error', '')}")
            offset = int(body["bytes"])
            if offset >= size:
                return


def push_one(host: str, bundle: Path, token: str | None, *, allow_downgrade: bool = False,
             wait_s: float = 120.0, say: Callable[[str], None] = log.info) -> dict:
    """Upload ``bundle`` to one kiosk, install it there and wait until it serves it; BundleError if not."""
    url = base_url(host)
    manifest = Manifest.from_dict(json.loads((bundle / MANIFEST).read_bytes()), bundle)
    names = [Path(n).name for n in manifest.files] + [SIGNATURE, MANIFEST]   # the manifest last
    code, body, _ = _request(f"{url}/api/bundle/files", token, method="DELETE")
    if code != 200:
        raise BundleError(f"{host}: does not take bundles: HTTP {code}: {body.get('error', '')}")
    for name in names:
        if (bundle / name).is_file():
            _upload(f"{url}/api/bundle/files/{name}", token, bundle / name, say)
    code, body, _ = _request(f"{url}/api/bundle/install" + ("?allow_downgrade=1" if allow_downgrade else ""),
                             token, method="POST", data=b"")
    if code != 202:
        raise BundleError(f"{host}: install not started: HTTP {code}: {body.get('error', '')}")
    deadline = time.monotonic() + wait_s
    while True:
        code, job, _ = _request(f"{url}/api/bundle/install", token)
        if job.get("state") == "failed":
            raise BundleError(f"{host}: {job.get('error')}")
        if job.get("state") == "done":
            break
        if time.monotonic() > deadline:
            raise BundleError(f"{host}: the install did not finish within {wait_s:.0f} s")
        time.sleep(0.5)
    slot = job["report"]["slot"]
    while True:   # the daemon maps the new slot within seconds
        st = status(host, token)
        if st["slot"] == slot:
            return {**st, "installed": job["report"]}
        if time.monotonic() > deadline:
            raise BundleError(f"{host}: installed into slot {slot} but not served within {wait_s:.0f} s"
                              + (f": {st['problem']}" if st["problem"] else ""))
        time.sleep(0.5)


def push(bundle: Path, hosts: list[str], token: str | None, *, allow_downgrade: bool = False,
         wait_s: float = 120.0, say: Callable[[str], None] = log.info) -> list[dict]:
    """``push_one`` to each host in turn; stops at the first that fails (BundleError names it and says
    which hosts got the bundle)."""
    done: list[dict] = []
    for host in hosts:
        try:
            done.append(push_one(host, bundle, token, allow_downgrade=allow_downgrade, wait_s=wait_s,
                                 say=say))
        except PiSearchError as exc:
            ok = ", ".join(d["host"] for d in done) or "none"
            rest = ", ".join(hosts[len(done) + 1:]) or "none"
            raise BundleError(f"{exc}; stopped: installed on {ok}, not tried on {rest}") from None
        say(f"{host}: serving version {done[-1].get('version')} (slot {done[-1].get('slot')})")
    return done
