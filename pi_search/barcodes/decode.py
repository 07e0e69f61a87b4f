"""Reading barcodes (EAN-13/8, UPC-A/E, Code 128, QR) from a picture with zxing-cpp, imported lazily."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

FORMATS = ("EAN13", "EAN8", "UPCA", "UPCE", "Code128", "QRCode")
_lock = threading.Lock()
_state: dict = {}


@dataclass(frozen=True)
class Code:
    """One code read in a picture: its text as the decoder gives it (an EAN/UPC number with its check
    digit, which the decoder has verified), its format's name and its box ``(x0, y0, x1, y1)`` in pixels."""

    text: str
    format: str
    box: tuple[int, int, int, int]


def _zxing():
    """The zxingcpp module and the formats to read, or None (not installed: logged once)."""
    with _lock:
        if "mod" not in _state:
            try:
                import zxingcpp
            except ImportError:
                log.warning("zxing-cpp is not installed: barcodes are not read (pip install zxing-cpp)")
                _state["mod"] = None
            else:
                fmts = zxingcpp.BarcodeFormats([getattr(zxingcpp.BarcodeFormat, n) for n in FORMATS])
                _state["mod"], _state["formats"] = zxingcpp, fmts
        return _state["mod"], _state.get("formats")


def available() -> bool:
    """True when the decoder can be used (zxing-cpp is installed)."""
    return _zxing()[0] is not None


def _box(position) -> tuple[int, int, int, int]:
    pts = [position.top_left, position.top_right, position.bottom_right, position.bottom_left]
    xs, ys = [p.x for p in pts], [p.y for p in pts]
    return min(xs), min(ys), max(xs), max(ys)


def reading_order(codes: list[Code]) -> list[Code]:
    """Codes as they are read: top line first, left to right within a line (boxes that overlap vertically
    are one line)."""
    rest = sorted(codes, key=lambda c: (c.box[1] + c.box[3]) / 2)
    out: list[Code] = []
    while rest:
        top = rest[0]
        line = [c for c in rest if c.box[1] <= top.box[3] and c.box[3] >= top.box[1]]
        out += sorted(line, key=lambda c: c.box[0])
        rest = [c for c in rest if c not in line]
    return out


def read_codes(image: np.ndarray, *, fast: bool = False) -> list[Code]:
    """The codes in ``image`` (RGB uint8 [H, W, 3] or grey uint8 [H, W], read-only, not copied beyond one
    grey conversion), in reading order, each text once. EAN/UPC codes with a wrong check digit are refused
    by the decoder. ``fast``: no rotated (90 degrees) or inverted codes, for the camera loop. Empty when
    zxing-cpp is missing."""
    zx, formats = _zxing()
    if zx is None:
        return []
    img = np.asarray(image)
    if img.ndim == 3:
        import cv2

        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    elif not img.flags.c_contiguous:
        img = np.ascontiguousarray(img)
    found = zx.read_barcodes(img, formats=formats, try_rotate=not fast, try_invert=not fast)
    codes: dict[str, Code] = {}
    for b in found:
        if not b.valid or not b.text:
            continue
        codes.setdefault(b.text, Code(b.text, b.format.name, _box(b.position)))
    return reading_order(list(codes.values()))
