"""Checks on an uploaded photo before decoding: form shape, file type, completeness; then a safe decode."""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable

import numpy as np

from ..errors import BadInput, Busy, ImageError, Unsupported
from ..images import decode
from .errors import ClientGone

log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def kind_of(data: bytes) -> str | None:
    """``"jpeg"``, ``"png"`` or ``"webp"`` from the file's first bytes; None for anything else."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == PNG_SIGNATURE:
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def truncated(data: bytes, kind: str) -> bool:
    """True when a JPEG, PNG or WebP file ends before its image data does (a cut-off upload)."""
    if kind == "jpeg":
        sos = data.rfind(b"\xff\xda")
        return sos < 0 or data.find(b"\xff\xd9", sos) < 0  # no end-of-image after the last scan
    if kind == "png":
        return data.rfind(b"IEND") < 0
    if kind == "webp":
        (size,) = struct.unpack("<I", data[4:8])
        return len(data) < 8 + size
    return False


def check_form(request, field: str = "image", max_files: int = 1):
    """The uploaded files of ``field`` in a multipart request; Unsupported (not a form) or BadInput (no file,
    too many) for any other shape."""
    if request.mimetype != "multipart/form-data":
        raise Unsupported(f"send the photo as multipart/form-data field '{field}' "
                               f"(got {request.mimetype or 'no content type'})")
    files = request.files.getlist(field)
    if not files:
        raise BadInput(f"send the photo as multipart/form-data field '{field}'")
    total = sum(len(request.files.getlist(k)) for k in request.files)
    if total > max_files:
        raise BadInput(f"{total} files in one request: send at most {max_files} "
                               f"photo{'s' if max_files > 1 else ''} as field '{field}'")
    return files


def client_gone() -> Callable[[], bool]:
    """The current request's "has the client left?" test (the server's ``pi_search.gone``); never True
    outside a request or under a server that does not provide it."""
    from flask import has_request_context, request

    if has_request_context():
        return request.environ.get("pi_search.gone") or (lambda: False)
    return lambda: False


def decode_upload(data: bytes, name: str = "upload", gone: Callable[[], bool] | None = None) -> np.ndarray:
    """Bytes of an uploaded photo to RGB uint8 [H, W, 3]; otherwise ImageError (unreadable) or Unsupported
    (another file type) with the reason.

    Only JPEG, PNG and WebP are decoded (other codecs are refused before any decoder sees them); a file cut
    short is refused rather than shown half grey; huge dimensions, or a decode that would take more memory
    than ``images.MAX_DECODE_BYTES``, are refused from the header. ``gone`` (default: the current request's
    connection) is asked before decoding and again before the pixels go on to be embedded: ClientGone when
    the client has left, so a flood of abandoned uploads costs no decoding or inference.
    """
    gone = gone or client_gone()
    if gone():
        raise ClientGone(f"{name}: the client closed the connection; the photo was not searched")
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    kind = kind_of(data)
    if kind is None:
        raise Unsupported(f"{name}: not a JPEG, PNG or WebP photo")
    if truncated(data, kind):
        raise ImageError(f"{name}: the {kind.upper()} file is truncated (cut off before its end); "
                         "send the whole file")
    try:
        rgb = decode(data, name=name)
    except (ImageError, Busy):  # unreadable (400); other photos hold the decoding memory (503, try again)
        raise
    except Exception as exc:  # a decoder error on hostile bytes is a bad upload, not a server fault
        log.info("%s: decoder refused it: %s", name, exc)
        raise ImageError(f"{name}: not a readable image ({type(exc).__name__})") from None
    if gone():
        raise ClientGone(f"{name}: the client closed the connection; the photo was not searched")
    return rgb
