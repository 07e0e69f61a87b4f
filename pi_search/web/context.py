"""What every request handler reaches: the appliance (the port) and the config ``create_app`` stores."""

from __future__ import annotations

from flask import current_app

from ..app import Appliance
from ..config import Config


def ext() -> dict:
    """``{"appliance": Appliance, "config": Config, "registry", "viewers"}`` of the current app."""
    return current_app.extensions["pi_search"]


def appliance() -> Appliance:
    """The running appliance this app serves (``app.Appliance``)."""
    return current_app.extensions["pi_search"]["appliance"]


def config() -> Config:
    """The daemon's settings."""
    return current_app.extensions["pi_search"]["config"]
