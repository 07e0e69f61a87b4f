"""What every request handler reaches: the app's worker and config (``create_app`` stores them)."""

from __future__ import annotations

from flask import current_app


def ext() -> dict:
    """``{"service": Worker, "config": Config, ...}`` of the current app."""
    return current_app.extensions["pi_search"]
