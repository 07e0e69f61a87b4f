"""Who may ask what: the Host check (DNS rebinding), the Origin check (cross-site requests) and the token.

One ``before_request`` hook runs ``CHECKS`` in order for every request; the first that raises refuses it
(``pi_search.errors`` types, answered by ``web.errors``). docs/security.md explains what each check defends
against. A further check (e.g. a PIN for teaching) is one more function of the same shape, ``check(config)``
(``config``: the daemon's ``Config``; returns nothing, raises to refuse), added to ``CHECKS``.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from urllib.parse import urlsplit

from flask import current_app, g, request

from ..config import is_loopback
from ..errors import BadInput, NeedsToken, Refused

log = logging.getLogger(__name__)

TOKEN_COOKIE = "pi_search_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
OTHER_SITES = frozenset({"cross-site", "same-site"})  # Sec-Fetch-Site values of a request another page made
_DEFAULT_PORTS = {"http": "80", "https": "443"}


# ---------------------------------------------------------------- marking views
def page(view):
    """Marks a view as a page: ``GET PAGE?token=TOKEN`` is accepted there and leaves the token cookie."""
    view.pi_search_page = True
    return view


def public(view):
    """Marks a view that needs no token (health checks); the Host check still applies."""
    view.pi_search_public = True
    return view


def _view_flag(name: str) -> bool:
    view = current_app.view_functions.get(request.endpoint or "")
    return bool(getattr(view, name, False))


def _is_static() -> bool:
    return (request.endpoint or "").rpartition(".")[2] == "static"


# ---------------------------------------------------------------- names
def split_host(value: str) -> tuple[str, str] | None:
    """``(name, port)`` of a Host header or an Origin's netloc, the name lower-case without a final dot and
    IPv6 brackets; port is "" when absent. None when it is not a host name with an optional port."""
    value = value.strip()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return name.lower(), rest[1:]
    name, sep, port = value.rpartition(":")
    if not sep:
        name, port = value, ""
    elif not port.isdigit() or ":" in name:
        return None
    name = name.lower().rstrip(".")
    return (name, port) if name else None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def host_allowed(name: str, server) -> bool:
    """True when ``name`` (from ``split_host``) is a name this appliance answers to.

    Loopback names, IP literals (a browser sends one only when it connected to that address, so a page
    cannot rebind it), the configured bind host and ``[server] allowed_hosts``.
    """
    if name in LOOPBACK_NAMES or _is_ip(name):
        return True
    own = {server.host.strip("[]").lower().rstrip(".")}
    own.update(h.strip("[]").lower().rstrip(".") for h in server.allowed_hosts)
    return name in own


# ---------------------------------------------------------------- the token
def given_token() -> tuple[str, str]:
    """``(token, source)`` this request carries: ``Authorization: Bearer`` ("header"), else ``?token=`` on a
    page GET ("query": that page then leaves the cookie), else the cookie ("cookie"); ``("", "")`` if none."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), "header"
    if request.method == "GET" and request.args.get("token") and _view_flag("pi_search_page"):
        return request.args["token"], "query"
    cookie = request.cookies.get(TOKEN_COOKIE)
    if cookie:
        return cookie, "cookie"
    return "", ""


def token_matches(given: str, token: str) -> bool:
    """``given == token`` in constant time; False when no token is configured."""
    return bool(token) and hmac.compare_digest(given.encode(), token.encode())


# ---------------------------------------------------------------- the checks
def check_host(config):
    """Every route: the Host header must name this appliance (a DNS-rebinding page sends its own name)."""
    server = config.server
    value = request.headers.get("Host")
    if value is None:
        return  # HTTP/1.0 without Host: no browser sends that
    parsed = split_host(value)
    if parsed is not None and host_allowed(parsed[0], server):
        return
    shown = value[:80].encode("ascii", "backslashreplace").decode()
    log.info("refused %s %s for host %r", request.method, request.path, shown)
    raise BadInput(f"this appliance does not answer to the host name {shown!r}: open it by its address "
                   f"(http://127.0.0.1:{server.port}/ on the Pi) or add the name to [server] "
                   "allowed_hosts")


def _same_origin(origin: str) -> bool:
    """True when ``origin`` is scheme://Host of this very request (default ports filled in)."""
    parts = urlsplit(origin.strip())
    if parts.scheme.lower() != request.scheme or request.scheme not in _DEFAULT_PORTS:
        return False
    if parts.path not in ("", "/") or parts.query or parts.username or parts.password:
        return False
    theirs, ours = split_host(parts.netloc), split_host(request.headers.get("Host", ""))
    if theirs is None or ours is None:
        return False
    default = _DEFAULT_PORTS[request.scheme]
    return theirs[0] == ours[0] and (theirs[1] or default) == (ours[1] or default)


def check_origin(config):
    """State changes come only from the page's own origin; nothing is loaded by another site's page.

    Refused: a change whose ``Origin`` is ``null`` (a sandboxed frame, a file) or another origin, or whose
    ``Sec-Fetch-Site`` says another site sent it; and any request another site's page made that is not a
    top-level navigation (an <img> of the preview, a script), so a hostile page cannot use up the preview's
    slots or the model. Requests without these headers (curl, scripts) pass.
    """
    site = request.headers.get("Sec-Fetch-Site", "").lower()
    origin = request.headers.get("Origin")
    shown = (origin or "")[:80].encode("ascii", "backslashreplace").decode()
    if request.method in SAFE_METHODS:
        if site in OTHER_SITES and request.headers.get("Sec-Fetch-Mode", "").lower() != "navigate":
            message = f"{request.path} may not be loaded by another site's page"
        else:
            return
    elif origin is not None and origin.strip().lower() == "null":
        message = ("a change from a page without an origin (a sandboxed frame or a local file) was refused; "
                   "use the page served by this appliance")
    elif origin is not None and not _same_origin(origin):
        message = f"a change from another site ({shown}) was refused; use the page served by this appliance"
    elif site in OTHER_SITES:
        message = "a change sent by another site's page was refused; use the page served by this appliance"
    else:
        return
    log.info("refused %s %s from another site (Origin %r, Sec-Fetch-Site %r)", request.method, request.path,
             shown or None, site or None)
    raise Refused(message)


def check_token(config):
    """With a token set, every route but health and static files needs it. Without one (loopback only), a
    daemon bound to another address still refuses changes."""
    server = config.server
    if not server.token:
        if request.method not in SAFE_METHODS and not is_loopback(server.host):
            raise Refused(f"the daemon listens on {server.host} without a token, so it takes no changes; "
                          "set [server] token in the config and restart")
        return
    if _is_static() or _view_flag("pi_search_public"):
        return
    given, source = given_token()
    if token_matches(given, server.token):
        g.pi_search_set_token_cookie = source == "query"
        return
    raise NeedsToken("a token is required: open the page once as /?token=TOKEN, or send 'Authorization: "
                     "Bearer TOKEN'")


CHECKS = [check_host, check_origin, check_token]


def _guard():
    config = current_app.extensions["pi_search"]["config"]
    for check in CHECKS:
        check(config)   # raises to refuse


def _remember_token(resp):
    """A page opened as /?token=TOKEN leaves the token in an HttpOnly, SameSite=Strict cookie."""
    if g.get("pi_search_set_token_cookie"):
        token = current_app.extensions["pi_search"]["config"].server.token
        resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", path="/")
    return resp


def register(app) -> None:
    """Run ``CHECKS`` before every request of ``app``; set the token cookie after a page opened with one."""
    app.before_request(_guard)
    app.after_request(_remember_token)
