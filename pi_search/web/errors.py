"""Every error the app answers is JSON ``{"error": "..."}``; ``STATUS`` maps each error type to its status."""

from __future__ import annotations

import logging
import math

from flask import current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from .. import errors as e
from ..errors import PiSearchError

log = logging.getLogger(__name__)


class ClientGone(PiSearchError):
    """The client closed its connection while its request waited: the work for it is dropped."""


# The HTTP status of each error type: the first of its classes (most derived first) found here. The rest
# of the web only raises errors by type.
STATUS: dict[type, int] = {
    e.BadInput: 400, e.NeedsToken: 401, e.Refused: 403, e.NotFound: 404, e.Conflict: 409,
    e.TooLarge: 413, e.Unsupported: 415, e.NothingFound: 422, e.TooManyTries: 429,
    e.Unavailable: 503, e.Busy: 503, e.NoSpace: 507, ClientGone: 499,   # 499: nobody is left to read it
}
# Seconds a client should wait before asking again, sent as Retry-After.
RETRY_AFTER: dict[type, int] = {e.NoCatalog: 5, e.Unavailable: 1, e.Busy: 1}


def status_of(exc: BaseException) -> int:
    """The HTTP status for ``exc``: its nearest class in ``STATUS``, else 500."""
    return next((STATUS[c] for c in type(exc).__mro__ if c in STATUS), 500)


def _retry_after(exc: BaseException) -> int | None:
    return next((RETRY_AFTER[c] for c in type(exc).__mro__ if c in RETRY_AFTER), None)


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


def no_catalog(problem: str | None) -> e.NoCatalog:
    """The error for a request that needs the catalog while no bundle is served: says what to do (503)."""
    return e.NoCatalog(no_catalog_message(problem))


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
        return _known(e.TooLarge(_too_large_message()))
    return error(code, exc.description or exc.name)


def _too_large_message() -> str:
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if request.content_length is not None and limit and request.content_length <= limit:
        return (f"the form has too many fields or files (at most {current_app.config.get('MAX_FORM_PARTS')} "
                f"parts) or a text field over {current_app.config.get('MAX_FORM_MEMORY_SIZE') // 1024} KB")
    mb = current_app.extensions["pi_search"]["config"].server.max_upload_mb
    return too_big(request.content_length, mb)


def _known(exc: PiSearchError):
    """A failure the user can act on: its message, with the status ``STATUS`` maps its type to."""
    status = status_of(exc)
    if status >= 500:
        log.warning("%s %s: %s", request.method, request.path, exc)
    body = {"error": str(exc)}
    if isinstance(exc, e.Locked):   # the page shows its PIN pad
        body["locked"] = True
    resp = jsonify(body)
    resp.status_code = status
    wait = _retry_after(exc)
    if wait is not None:
        resp.headers["Retry-After"] = str(wait)
    for k, v in getattr(exc, "headers", {}).items():   # e.g. how many bytes of a pushed file are here
        resp.headers[k] = v
    return resp


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
