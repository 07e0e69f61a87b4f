"""Bundles pushed over HTTP (`pi-search fleet push`): uploaded in pieces, installed like index install."""

from __future__ import annotations

import logging
import re
import shutil
import threading
from pathlib import Path

from flask import Blueprint, jsonify, request

from ..bundle import Trust
from ..errors import PiSearchError
from ..model.extractor import Extractor
from ..updates.install import install_bundle
from .context import ext as _ext
from .errors import error as _error

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


@bp.before_request
def _needs_token():
    config = _ext()["config"]
    if not config.server.token:
        return _error(403, "this daemon takes bundles over HTTP only with a [server] token set; set one, or "
                           "install with pi-search index install on the kiosk")
    if not config.index.bundle:
        return _error(409, "no [index] bundle is configured")
    return None


@bp.route("/api/bundle/files/<name>", methods=["PUT"])
def put_file(name: str):
    """Append the body to the staged file ``name`` at ``?offset=N`` (its current size: 409 says it)."""
    if not NAME.match(name) or name.startswith("."):
        return _error(400, f"{name!r}: not a bundle file name")
    stage = staging(_ext()["config"])
    stage.mkdir(exist_ok=True)
    path = stage / name
    have = path.stat().st_size if path.exists() else 0
    try:
        offset = int(request.args.get("offset", "0"))
    except ValueError:
        return _error(400, "offset: give a number of bytes")
    if offset == 0 and have:
        path.unlink()
        have = 0
    if offset != have:
        resp = _error(409, f"{name}: {have} bytes are here; send from offset {have}")
        resp.headers["X-Have-Bytes"] = str(have)
        return resp
    with _lock:
        if _job["state"] == "running":
            return _error(409, "an install is running; wait for it")
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
        return _error(507, f"{name}: cannot store it beside the bundle ({exc.strerror or exc}); free some "
                           "space on the kiosk and push again")
    return jsonify({"name": name, "bytes": have + written})


@bp.route("/api/bundle/files", methods=["DELETE"])
def clear_files():
    """Forget files uploaded before (a push starts with this)."""
    with _lock:
        if _job["state"] == "running":
            return _error(409, "an install is running; wait for it")
        shutil.rmtree(staging(_ext()["config"]), ignore_errors=True)
    return jsonify({"cleared": True})


@bp.route("/api/bundle/install", methods=["POST"])
def start_install():
    """Install the staged files as a bundle in a background thread; 202 at once, then poll GET."""
    config = _ext()["config"]
    stage = staging(config)
    if not (stage / "manifest.json").is_file():
        return _error(409, "no manifest.json uploaded; upload the bundle's files first")
    allow_downgrade = request.args.get("allow_downgrade") == "1"
    with _lock:
        if _job["state"] == "running":
            return _error(409, "an install is running; wait for it")
        _job.clear()
        _job["state"] = "running"
    threading.Thread(target=_install, args=(config, stage, allow_downgrade), name="pi-search-push",
                     daemon=True).start()
    return jsonify({"state": "running"}), 202


@bp.route("/api/bundle/install", methods=["GET"])
def install_state():
    with _lock:
        return jsonify(dict(_job))


def _install(config, stage: Path, allow_downgrade: bool) -> None:
    """The install itself, with a model of its own for the self-check (the worker's is busy with frames)."""
    try:
        trust = Trust.from_paths(config.index.trusted_keys)
        extractor = Extractor(config.model.path or None, num_threads=1, runtime=config.model.runtime or None)
        report = install_bundle(stage, Path(config.index.bundle), trusted=trust.keys if trust else None,
                                allow_downgrade=allow_downgrade, extractor=extractor)
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
