"""Safe image decoding: bytes or files to RGB uint8 arrays, with limits against decompression bombs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ImageError

MAX_PIXELS = 40_000_000  # 40 MP: more than any camera photo we accept; guards against decompression bombs.


def _header_size(data: bytes) -> tuple[int, int] | None:
    """Width and height read from a PNG, JPEG, GIF or WebP header without decoding; None if unknown."""
    import struct

    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return w, h
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            (seg,) = struct.unpack(">H", data[i + 2 : i + 4])
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                return w, h
            i += 2 + seg
        return None
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        w, h = struct.unpack("<HH", data[6:10])
        return w, h
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        kind = data[12:16]
        if kind == b"VP8X":
            w = 1 + int.from_bytes(data[24:27], "little")
            h = 1 + int.from_bytes(data[27:30], "little")
            return w, h
        if kind == b"VP8 " and len(data) >= 30:
            w, h = struct.unpack("<HH", data[26:30])
            return w & 0x3FFF, h & 0x3FFF
        if kind == b"VP8L" and len(data) >= 25:
            b = data[21:25]
            w = 1 + (((b[1] & 0x3F) << 8) | b[0])
            h = 1 + (((b[3] & 0xF) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
            return w, h
    return None


def decode(data: bytes, *, name: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 array [H, W, 3]; raise ImageError with the reason.

    Alpha is composited on white (catalog photos with transparent backgrounds look like shop listings).
    """
    import cv2

    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    size = _header_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageError(
            f"{name}: {size[0]}x{size[1]} pixels is larger than the limit of {max_pixels:,} pixels"
        )
    buf = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageError(f"{name}: not a readable image (JPEG, PNG or WebP expected)")
    if img.shape[0] * img.shape[1] > max_pixels:
        raise ImageError(f"{name}: {img.shape[1]}x{img.shape[0]} pixels is larger than the limit")
    return to_rgb(img)


def to_rgb(img: np.ndarray) -> np.ndarray:
    """OpenCV's decoded layout (gray, BGR or BGRA, any depth) to RGB uint8 [H, W, 3]."""
    import cv2

    if img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8) if img.dtype.kind == "f" \
            else (img >> 8).astype(np.uint8) if img.dtype == np.uint16 else img.astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        alpha = img[:, :, 3:4].astype(np.float32) / 255.0
        rgb = img[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return cv2.cvtColor(rgb.astype(np.uint8), cv2.COLOR_BGR2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file to RGB uint8 [H, W, 3]; ImageError names the file and the reason."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return decode(data, name=str(path), max_pixels=max_pixels)


def encode_jpeg(rgb: np.ndarray, quality: int = 80) -> bytes:
    """RGB uint8 [H, W, 3] to JPEG bytes."""
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ImageError("JPEG encoding failed")
    return buf.tobytes()
