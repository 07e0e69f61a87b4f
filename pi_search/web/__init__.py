"""The local web page and JSON API: an app factory over the appliance's port (no camera access here)."""

from __future__ import annotations

import logging

from ..app import Appliance
from ..config import Config
from . import auth, errors
from .bundles import bp as bundles_bp
from .items import bp as items_bp
from .lock import bp as lock_bp
from .metrics import make_registry
from .routes import bp

log = logging.getLogger(__name__)

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def create_app(port: Appliance, config: Config):
    """A Flask app serving ``port`` (the running appliance, ``app.Appliance``) with settings from ``config``.

    The app never captures or infers on its own: it reads the frame loop's latest result through the port,
    and uploads go through ``port.search_image``.
    """
    from flask import Flask

    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = int(config.server.max_upload_mb * 1024 * 1024)
    app.config["JSON_SORT_KEYS"] = False
    app.config["MAX_FORM_PARTS"] = 64            # a teaching request holds up to 16 shots and a few fields
    # Text fields only (title, price, k...); files are limited by MAX_CONTENT_LENGTH. werkzeug checks this
    # against its whole parse buffer (a 64 KB read plus what is left of the last one, file data included),
    # so it must stay well above 64 KB or any file part over about 64 KB is refused.
    app.config["MAX_FORM_MEMORY_SIZE"] = 512 * 1024
    app.extensions["pi_search"] = {"appliance": port, "config": config,
                                   "registry": make_registry(port), "viewers": _Viewers()}
    auth.register(app)    # Host, Origin and token checks before every request (docs/security.md)
    errors.register(app)  # every error answers JSON {"error": ...}
    app.register_blueprint(bp)
    app.register_blueprint(items_bp)  # teaching items: the "add item" page and /api/items
    app.register_blueprint(lock_bp)   # the kiosk lock: /api/unlock and /api/lock
    app.register_blueprint(bundles_bp)  # bundles pushed by pi-search fleet push (token only)

    @app.after_request
    def _headers(resp):
        resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        return resp

    return app


class _Viewers:
    """Counts open /stream.mjpg responses across request threads."""

    def __init__(self):
        import threading

        self._lock = threading.Lock()
        self.count = 0

    def enter(self, limit: int) -> bool:
        with self._lock:
            if self.count >= limit:
                return False
            self.count += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.count -= 1
