"""Bundles pushed over HTTP (`pi-search fleet push`): uploaded in pieces, installed like index install."""

from __future__ import annotations

import logging
import re
import shutil
import threading
from pathlib import Path

from flask import Blueprint, jsonify, request

from ..app import Appliance
from ..errors import BadInput, Conflict, NoSpace, PiSearchError, Refused
from .context import appliance as _appliance
from .context import config as _config

log = logging.getLogger(__name__)

bp = Blueprint("pi_search_bundles", __name__)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")
PIECE = 1 << 20          # bytes written at a time

_lock = threading.Lock()
_job: dict = {"state": "idle"}   # state: idle, running, done, failed; plus report or error


def staging(config) -> Path:
    """Where pushed files are gathered: ``.NAME.push`` beside the bundle."""
    target = Path(config.index.bundle)
    return target.parent / f".{target.name}.push"


class WrongOffset(Conflict):
    """A piece sent from another offset than the bytes already here; ``X-Have-Bytes`` says how many."""

    def __init__(self, name: str, have: int):
        super().__init__(f"{name}: {have} bytes are here; send from offset {have}")
        self.headers = {"X-Have-Bytes": str(have)}


def _not_while_installing() -> None:
    """Conflict (409) while an install runs; call with ``_lock`` held."""
    if _job["state"] == "running":
        raise Conflict("an install is running; wait for it")


@bp.before_request
def _needs_token():
    config = _config()
    if not config.server.token:
        raise Refused("this daemon takes bundles over HTTP only with a [server] token set; set one, or "
                           "install with pi-search index install on the kiosk")
    if not config.index.bundle:
        raise Conflict("no [index] bundle is configured")


@bp.route("/api/bundle/files/<name>", methods=["PUT"])
def put_file(name: str):
    """Append the body to the staged file ``name`` at ``?offset=N`` (its current size: 409 says it)."""
    if not NAME.match(name) or name.startswith("."):
        raise BadInput(f"{name!r}: not a bundle file name")
    stage = staging(_config())
    stage.mkdir(exist_ok=True)
    path = stage / name
    have = path.stat().st_size if path.exists() else 0
    try:
        offset = int(request.args.get("offset", "0"))
    except ValueError:
        raise BadInput("offset: give a number of bytes") from None
    if offset == 0 and have:
        path.unlink()
        have = 0
    if offset != have:
        raise WrongOffset(name, have)
    with _lock:
        _not_while_installing()
    written = 0
    try:
        with open(path, "ab") as f:
            while True:
                block = request.stream.read(PIECE)
                if not block:
                    break
                f.write(block)
                written += len(block)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise NoSpace(f"{name}: cannot store it beside the bundle ({exc.strerror or exc}); free some "
                      "space on the kiosk and push again") from exc
    return jsonify({"name": name, "bytes": have + written})


@bp.route("/api/bundle/files", methods=["DELETE"])
def clear_files():
    """Forget files uploaded before (a push starts with this)."""
    with _lock:
        _not_while_installing()
        shutil.rmtree(staging(_config()), ignore_errors=True)
    return jsonify({"cleared": True})


@bp.route("/api/bundle/install", methods=["POST"])
def start_install():
    """Install the staged files as a bundle in a background thread; 202 at once, then poll GET."""
    stage = staging(_config())
    if not (stage / "manifest.json").is_file():
        raise Conflict("no manifest.json uploaded; upload the bundle's files first")
    allow_downgrade = request.args.get("allow_downgrade") == "1"
    with _lock:
        _not_while_installing()
        _job.clear()
        _job["state"] = "running"
    threading.Thread(target=_install, args=(_appliance(), stage, allow_downgrade), name="pi-search-push",
                     daemon=True).start()
    return jsonify({"state": "running"}), 202


@bp.route("/api/bundle/install", methods=["GET"])
def install_state():
    with _lock:
        return jsonify(dict(_job))


def _install(port: Appliance, stage: Path, allow_downgrade: bool) -> None:
    """The install itself (``port.install_bundle``), in a thread that always records how it ended."""
    try:
        report = port.install_bundle(stage, allow_downgrade)
        shutil.rmtree(stage, ignore_errors=True)
        result = {"state": "done", "report": report}
    except (PiSearchError, OSError) as exc:
        log.warning("pushed bundle refused: %s", exc)
        result = {"state": "failed", "error": str(exc)}
    except Exception as exc:  # the thread must always say how it ended
        log.exception("pushed bundle: install failed")
        result = {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}
    with _lock:
        _job.clear()
        _job.update(result)
