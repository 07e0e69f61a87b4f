"""The web's port: ``Appliance`` (what the web may use) and ``Kiosk`` (its one implementation)."""

from .kiosk import Kiosk
from .port import Appliance, FrameLoop

__all__ = ["Appliance", "FrameLoop", "Kiosk"]
