"""The kiosk lock: with [page] lock_teaching, teaching needs the PIN (or the server token)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time

from flask import Blueprint, current_app, jsonify, request

from ..errors import Locked, Refused, TooManyTries
from .auth import given_token

log = logging.getLogger(__name__)

bp = Blueprint("pi_search_lock", __name__)

PIN_COOKIE = "pi_search_teach"
PIN_HEADER = "X-Pi-Search-Pin"
MAX_TRIES = 5          # wrong PINs in a row before unlocking pauses
PAUSE_S = 30.0         # how long unlocking pauses after MAX_TRIES wrong PINs
UNLOCK_S = 1800.0      # the PIN unlocks teaching on one screen for this long (or until "Lock")


class _State:
    """A per-app secret for the unlock cookie and the count of wrong PINs."""

    def __init__(self):
        self.secret = secrets.token_bytes(32)
        self.lock = threading.Lock()
        self.wrong = 0
        self.paused_until = 0.0

    def cookie(self, pin: str, expires: int) -> str:
        """``EXPIRES.MAC``: proves the PIN was given, until ``expires`` (Unix time)."""
        mac = hmac.new(self.secret, f"{expires}:{pin}".encode(), hashlib.sha256).hexdigest()
        return f"{expires}.{mac}"

    def valid(self, cookie: str, pin: str) -> bool:
        expires, _, _mac = cookie.partition(".")
        if not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(cookie.encode(), self.cookie(pin, int(expires)).encode())


def _state() -> _State:
    return current_app.extensions["pi_search"].setdefault("lock", _State())


def _same(a: str, b: str) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())


def teaching_state() -> str:
    """``open`` (no lock), ``unlocked`` (locked, and this request carries the PIN or token) or ``locked``.

    The PIN comes as the ``X-Pi-Search-Pin`` header or as the cookie ``POST /api/unlock`` sets; the server
    token from ``auth.given_token`` (the header, ``?token=`` on a page, or its cookie; the token check itself
    runs before this).
    """
    ext = current_app.extensions["pi_search"]
    page, server = ext["config"].page, ext["config"].server
    if not page.lock_teaching:
        return "open"
    if _same(given_token()[0], server.token):
        return "unlocked"
    if page.pin and (_same(request.headers.get(PIN_HEADER, ""), page.pin)
                     or _state().valid(request.cookies.get(PIN_COOKIE, ""), page.pin)):
        return "unlocked"
    return "locked"


def refuse_if_locked():
    """Locked (403, the body says ``"locked": true``) when teaching is locked for this request (call it in a
    route guard)."""
    if teaching_state() != "locked":
        return
    pin = current_app.extensions["pi_search"]["config"].page.pin
    how = "tap Staff and enter the PIN" if pin else "open /teach?token=TOKEN"
    raise Locked(f"teaching is locked on this screen; {how} to unlock it")


@bp.post("/api/unlock")
def unlock():
    """Form field ``pin``: the right PIN sets a cookie that unlocks teaching for ``UNLOCK_S`` seconds, or
    until ``POST /api/lock``. (Another site's page is refused before this, by ``auth.check_origin``.)"""
    page = current_app.extensions["pi_search"]["config"].page
    if not page.lock_teaching:
        return jsonify({"teach": "open"})
    if not page.pin:
        raise Refused("no PIN is set for this screen: open /teach?token=TOKEN to teach items")
    state = _state()
    with state.lock:
        wait = state.paused_until - time.monotonic()
        if wait > 0:
            raise TooManyTries(f"too many wrong PINs; try again in {wait:.0f} s")
        if not _same(request.form.get("pin", "").strip(), page.pin):
            state.wrong += 1
            if state.wrong >= MAX_TRIES:
                state.wrong, state.paused_until = 0, time.monotonic() + PAUSE_S
                log.warning("%d wrong teaching PINs: unlocking paused for %.0f s", MAX_TRIES, PAUSE_S)
            raise Refused("wrong PIN; ask the person who set up the appliance")
        state.wrong = 0
    resp = jsonify({"teach": "unlocked"})
    expires = int(time.time() + UNLOCK_S)
    resp.set_cookie(PIN_COOKIE, state.cookie(page.pin, expires), max_age=int(UNLOCK_S), httponly=True,
                    samesite="Strict")
    return resp


@bp.post("/api/lock")
def relock():
    """Forget this screen's PIN cookie: teaching is locked again."""
    resp = jsonify({"locked": True})
    resp.delete_cookie(PIN_COOKIE)
    return resp
