"""Every error the app answers is JSON ``{"error": "..."}`` with the status the failure carries."""

from __future__ import annotations

import logging
import math

from flask import current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from ..errors import PiSearchError

log = logging.getLogger(__name__)


def error(status: int, message: str, headers: dict | None = None):
    """A JSON error response: ``{"error": message}`` with ``status``."""
    resp = jsonify({"error": message})
    resp.status_code = status
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


MB = 1024 * 1024
# What a multipart form may add around its photos (boundaries, field names, title, price): the HTTP server
# refuses a body only once it is this much over ``server.max_upload_mb``; the app refuses the rest.
FORM_BYTES = 64 * 1024
BUILD_OR_INSTALL = ("build one (pi-search index build CATALOG --out DIR) or install one "
                    "(pi-search index install BUNDLE)")


def too_big(size_bytes: int | None, limit_mb: float) -> str:
    """The one-line refusal of a photo over the upload limit, in words staff use (no "request body")."""
    size = ""
    if size_bytes:
        mb = size_bytes / MB
        shown = round(mb) if mb >= 10 else round(mb, 1)
        if shown <= limit_mb:  # never "too big (25 MB); the limit is 25 MB"
            shown = math.ceil(mb * 10) / 10
        size = f" ({shown:g} MB)"
    return f"This photo is too big{size}; the limit is {limit_mb:g} MB. Take it again at a smaller size."


def no_catalog_message(problem: str | None) -> str:
    """What to say while no bundle is served: why (the catalog's ``problem``) and what to do."""
    why = problem or "no bundle is served"
    if "pi-search index" in why:  # the problem already says how to build one
        return f"there is no catalog yet: {why}; or install one (pi-search index install BUNDLE); the " \
               "appliance picks it up by itself"
    return f"there is no catalog yet ({why}); {BUILD_OR_INSTALL}; the appliance picks it up by itself"


def no_catalog(problem: str | None):
    """503 for a request that needs the catalog while no bundle is served: says what to do."""
    return error(503, no_catalog_message(problem), {"Retry-After": "5"})


def _http(exc: HTTPException):
    """Flask's and werkzeug's own refusals (404, 405, 413, a malformed form ...) as JSON."""
    code = exc.code or 500
    if code < 400:  # a routing redirect (a missing trailing slash): not an error
        return exc
    if code == 404:
        return error(404, f"no such page: {request.path}")
    if code == 405:
        allowed = ", ".join(sorted(getattr(exc, "valid_methods", None) or ()))
        return error(405, f"{request.method} is not allowed on {request.path}"
                          + (f" (use {allowed})" if allowed else ""), {"Allow": allowed} if allowed else None)
    if code == 413:
        return error(413, _too_large_message())
    return error(code, exc.description or exc.name)


def _too_large_message() -> str:
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if request.content_length is not None and limit and request.content_length <= limit:
        return (f"the form has too many fields or files (at most {current_app.config.get('MAX_FORM_PARTS')} "
                f"parts) or a text field over {current_app.config.get('MAX_FORM_MEMORY_SIZE') // 1024} KB")
    mb = current_app.extensions["pi_search"]["config"].server.max_upload_mb
    return too_big(request.content_length, mb)


def _known(exc: PiSearchError):
    """A failure the user can act on: its message, with the status its class carries."""
    status = int(getattr(exc, "status", 500) or 500)
    if status >= 500:
        log.warning("%s %s: %s", request.method, request.path, exc)
    headers = {"Retry-After": "1"} if status == 503 else None
    return error(status, str(exc), headers)


def _unhandled(exc: Exception):
    """A bug or an unexpected fault: the traceback goes to the log, the client gets no internals."""
    log.error("%s %s failed", request.method, request.path, exc_info=exc)
    return error(500, f"internal error while answering {request.method} {request.path}; the daemon's log "
                      "has the details (journalctl -u pi-search)")


def register(app) -> None:
    """Install the handlers on ``app``: HTTP refusals, PiSearchError subclasses and anything unhandled."""
    app.register_error_handler(HTTPException, _http)
    app.register_error_handler(PiSearchError, _known)
    app.register_error_handler(Exception, _unhandled)
