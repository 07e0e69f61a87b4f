"""Safe image decoding: bytes or files to RGB uint8 arrays, with limits against decompression bombs."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from .errors import Busy, ImageError

# 200 MP: a 200-megapixel phone sensor's full-size photo (16320x12240); more is a decompression bomb. What a
# photo may take to decode is bounded apart from this (MAX_DECODE_BYTES), so only baseline JPEGs, decoded
# reduced, come near it.
MAX_PIXELS = 200_000_000
# Photos are decoded no larger than the model and the thumbnails need: with the shorter side at least
# MIN_SIDE pixels (and under twice that). A query is framed as the centre 0.65 (views.QUERY_CROP) of its
# shorter side scaled to the model's 224 pixels: 224 / 0.65 = 345, so every model pixel still averages at
# least one photo pixel. Catalog framing (the whole photo padded square, zoomed 0.8: 280 pixels on the
# longer side) and thumbnails (256 pixels on the longer side) need less. A 4032x3024 phone photo is decoded
# at 1/4 scale and averaged down to 504x378 (1.5 MB at most instead of 37 MB); a 40 MP one at 1/4, then to
# 608x456.
MIN_SIDE = 345
# The most memory decoding may take, judged from each file's header before any decoder runs
# (``decode_cost``): one photo may take all of it, and photos decoding at once share it (``DecodeBudget``),
# so decoding never holds more than this, whatever arrives. A JPEG is decoded reduced, so any baseline JPEG
# up to MAX_PIXELS fits; PNG, WebP, BMP, TIFF and GIF are decoded whole, so a 40 MP 16-bit RGBA PNG (640 MB
# at the decoder's peak, from a 330 KB file) is refused. 192 MB takes a 12 MP 16-bit RGBA PNG, a 24 MP RGBA
# PNG, a 32 MP RGB PNG or WebP, and a 40 MP progressive phone JPEG (4:2:0).
MAX_DECODE_BYTES = 192_000_000
# How long a photo waits for others to finish decoding before it is refused as busy.
DECODE_WAIT_S = 30.0


class DecodeBudget:
    """Memory shared by the decodes running at once: ``hold(n)`` waits until n bytes are free."""

    def __init__(self, total: int):
        import threading

        self.total = total
        self.used = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, need: int, wait: float | None = None):
        """Hold ``need`` bytes (at most the whole budget) while inside; Busy after ``wait`` seconds
        (default DECODE_WAIT_S) without room."""
        need = min(need, self.total)
        with self._cond:
            if not self._cond.wait_for(lambda: self.used + need <= self.total,
                                       timeout=DECODE_WAIT_S if wait is None else wait):
                raise Busy("the appliance is busy decoding other photos; try again in a moment")
            self.used += need
        try:
            yield
        finally:
            with self._cond:
                self.used -= need
                self._cond.notify_all()


BUDGET = DecodeBudget(MAX_DECODE_BYTES)


def _jpeg_frame(data: bytes) -> tuple[int, int, int] | None:
    """``(SOF marker, width, height)`` of a JPEG from its frame header (0xC0 baseline, 0xC2 progressive)."""
    found = _jpeg_sof(data)
    return None if found is None else found[:3]


def progressive_jpeg(data: bytes) -> bool:
    """True for a progressive JPEG (its frame header is SOF2, 6, 10 or 14)."""
    return (_jpeg_frame(data) or (0,))[0] in (0xC2, 0xC6, 0xCA, 0xCE)


def _jpeg_sof(data: bytes) -> tuple[int, int, int, list[tuple[int, int]]] | None:
    """``(SOF marker, width, height, [(h, v) sampling factor of each component]``) of a JPEG."""
    import struct

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
            n = data[i + 9] if i + 9 < len(data) else 0
            comps = [(b >> 4, b & 15) for b in data[i + 11 : i + 11 + 3 * n : 3]]
            return marker, w, h, comps
        i += 2 + seg
    return None


def _header_size(data: bytes) -> tuple[int, int] | None:
    """Width and height read from a PNG, JPEG, GIF, WebP, BMP or TIFF header without decoding; None if
    unknown."""
    import struct

    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return w, h
    if data[:2] == b"\xff\xd8":
        sof = _jpeg_frame(data)
        return None if sof is None else sof[1:]
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        layout = _tiff_layout(data)
        return None if layout is None else layout[:2]
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


def _tiff_layout(data: bytes) -> tuple[int, int, int, int] | None:
    """``(width, height, samples per pixel, bits per sample)`` from a TIFF's first directory."""
    order = {b"II": "little", b"MM": "big"}.get(data[:2])
    if order is None or len(data) < 8:
        return None
    ifd = int.from_bytes(data[4:8], order)
    count = int.from_bytes(data[ifd : ifd + 2], order) if ifd + 2 <= len(data) else 0
    tags: dict[int, int] = {}
    for n in range(count):
        entry = data[ifd + 2 + 12 * n : ifd + 14 + 12 * n]
        if len(entry) < 12:
            break
        tag, kind, num = (int.from_bytes(entry[0:2], order), int.from_bytes(entry[2:4], order),
                          int.from_bytes(entry[4:8], order))
        if kind == 3 and (num == 1 or tag != 258):
            tags[tag] = int.from_bytes(entry[8:10], order)
        elif kind == 4 and num == 1:
            tags[tag] = int.from_bytes(entry[8:12], order)
        elif kind == 3 and tag == 258:  # one size per sample, stored elsewhere: the widest counts
            at = int.from_bytes(entry[8:12], order)
            sizes = [int.from_bytes(data[at + 2 * k : at + 2 * k + 2], order) for k in range(min(num, 16))]
            tags[tag] = max(sizes or [8])
    if 256 not in tags or 257 not in tags:
        return None
    return tags[256], tags[257], max(1, tags.get(277, 1)), max(1, tags.get(258, 1))


def decode_cost(data: bytes, min_side: int | None = MIN_SIDE) -> tuple[int, int, int, str] | None:
    """``(width, height, bytes, kind)``: the most memory decoding ``data`` takes, read from its header
    (None when the format is not one we decode: JPEG, PNG, WebP, BMP, TIFF, GIF).

    bytes counts what the decoder holds at its peak: a JPEG's reduced output (and a progressive JPEG's
    coefficients, 2 bytes each, which it keeps whole), or for the other formats twice the whole image at
    the depth and channels the decoder writes it. ``kind`` names the format for messages ("16-bit RGBA
    PNG").
    """
    size = _header_size(data)
    if size is None:
        return None
    w, h = size
    if data[:2] == b"\xff\xd8":
        marker, _, _, comps = _jpeg_sof(data) or (0xC0, w, h, [(1, 1)] * 3)
        comps = comps or [(1, 1)]
        progressive = marker in (0xC2, 0xC6, 0xCA, 0xCE)
        scale = _jpeg_scale(w, h, min_side, progressive)
        out = -(-w // scale) * -(-h // scale) * 3
        if not progressive:
            return w, h, out, "JPEG"
        hmax, vmax = max(c[0] for c in comps) or 1, max(c[1] for c in comps) or 1
        coefs = sum(-(-w * c[0] // (8 * hmax)) * -(-h * c[1] // (8 * vmax)) * 128 for c in comps)
        return w, h, coefs * 3 // 2 + out, "progressive JPEG"  # measured: 1.5 times its coefficients
    # The other decoders write the whole image into a buffer of their own and convert it into the result:
    # they hold twice the decoded pixels at their peak (measured with OpenCV 5.1: a 94 MB PNG decode peaks
    # at 191 MB, a 74 MB WebP one at 145 MB).
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        depth, colour = data[24], data[25]
        # as OpenCV writes it unchanged: grey stays one channel, grey+alpha and anything transparent
        # become BGRA, palette becomes BGR(A) 8-bit; 16-bit samples stay 16-bit
        channels = {0: 1, 2: 3, 3: 3, 4: 4, 6: 4}.get(colour, 4)
        if b"tRNS" in data[:data.find(b"IDAT")] and colour in (0, 2, 3):
            channels = 4
        name = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}.get(colour, "")
        sample = 2 if depth == 16 and colour != 3 else 1
        return w, h, 2 * w * h * channels * sample, f"{depth}-bit {name} PNG"
    if data[:2] == b"BM":
        return w, h, 2 * w * h * 4, "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        layout = _tiff_layout(data)
        spp, bits = (layout[2], layout[3]) if layout else (4, 16)
        return w, h, 2 * w * h * max(spp, 3) * max(1, -(-bits // 8)), f"{bits}-bit TIFF"
    if data[:3] == b"GIF":
        return w, h, 2 * w * h * 4, "GIF"
    kind = data[12:16]
    alpha = (kind == b"VP8X" and data[20] & 0x10) or (kind == b"VP8L" and data[24] & 0x10)
    return w, h, 2 * w * h * (4 if alpha else 3), "WebP"


def _jpeg_scale(w: int, h: int, min_side: int | None, progressive: bool) -> int:
    """The reduced scale a JPEG is decoded at (8, 4, 2 or 1): see ``decode``."""
    most = reduction(w, h, min_side)
    return next((s for s in (8, 4, 2) if s * (1 if progressive else 2) <= most), 1)


def too_large(data: bytes, *, name: str = "image", max_pixels: int = MAX_PIXELS,
              max_bytes: int = MAX_DECODE_BYTES, min_side: int | None = MIN_SIDE) -> str | None:
    """The one-line reason a photo is refused from its header (too many pixels, or too much memory to
    decode), or None when it may be decoded."""
    cost = decode_cost(data, min_side)
    if cost is None:
        return None
    w, h, need, kind = cost
    mp = w * h / 1e6
    if w * h > max_pixels:
        return (f"{name}: this photo is {mp:.0f} megapixels ({w}x{h}); the largest accepted is "
                f"{max_pixels / 1e6:.0f} megapixels. Send a smaller photo.")
    if need > max_bytes:
        most = max_pixels if need == 0 else min(max_pixels, int(w * h * max_bytes / need))
        return (f"{name}: this {kind} is {mp:.0f} megapixels ({w}x{h}, {need / 1e6:.0f} MB to decode); the "
                f"largest {kind} accepted is {most / 1e6:.0f} megapixels. Send a smaller photo, or a "
                f"{'baseline ' if 'JPEG' in kind else ''}JPEG.")
    return None


def orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of a JPEG, PNG, WebP or TIFF file; 1 (as stored) when it has none.

    Phones store the sensor's pixels as they come and write how to turn them upright in the EXIF
    Orientation tag (6: turn 90 degrees clockwise, 8: counter-clockwise, 3: half a turn).
    """
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 4 <= len(data) and data[i] == 0xFF:
            marker = data[i + 1]
            if marker == 0xDA or marker == 0xD9:  # start of scan: no more metadata
                break
            if marker == 0x01 or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                i += 1 if marker == 0xFF else 2
                continue
            seg = int.from_bytes(data[i + 2 : i + 4], "big")
            if marker == 0xE1 and data[i + 4 : i + 10] == b"Exif\x00\x00":
                return _tiff_orientation(data[i + 10 : i + 2 + seg])
            i += 2 + seg
        return 1
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        i = 8
        while i + 8 <= len(data):
            length = int.from_bytes(data[i : i + 4], "big")
            kind = data[i + 4 : i + 8]
            if kind == b"eXIf":
                return _tiff_orientation(data[i + 8 : i + 8 + length])
            if kind in (b"IDAT", b"IEND"):
                break
            i += 12 + length
        return 1
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        i = 12
        while i + 8 <= len(data):
            length = int.from_bytes(data[i + 4 : i + 8], "little")
            if data[i : i + 4] == b"EXIF":
                body = data[i + 8 : i + 8 + length]
                return _tiff_orientation(body[6:] if body[:6] == b"Exif\x00\x00" else body)
            i += 8 + length + (length & 1)
        return 1
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff_orientation(data)
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of IFD0 of a TIFF-structured EXIF block; 1 when absent or invalid."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)
    count = int.from_bytes(tiff[ifd : ifd + 2], order) if ifd + 2 <= len(tiff) else 0
    for n in range(count):
        entry = tiff[ifd + 2 + 12 * n : ifd + 14 + 12 * n]
        if len(entry) < 12:
            break
        if int.from_bytes(entry[0:2], order) == 0x0112 and int.from_bytes(entry[2:4], order) == 3:
            value = int.from_bytes(entry[8:10], order)
            return value if 1 <= value <= 8 else 1
    return 1


def upright(img: np.ndarray, orient: int) -> np.ndarray:
    """Pixels as stored ([H, W, C], any channel order) turned the way EXIF orientation ``orient`` says."""
    import cv2

    if orient == 2:
        return cv2.flip(img, 1)
    if orient == 3:
        return cv2.rotate(img, cv2.ROTATE_180)
    if orient == 4:
        return cv2.flip(img, 0)
    if orient == 5:
        return cv2.transpose(img)
    if orient == 6:
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    if orient == 7:
        return cv2.flip(cv2.transpose(img), -1)
    if orient == 8:
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return img


def photo_size(data: bytes) -> tuple[int, int] | None:
    """Width and height of the photo as it is shown (EXIF orientation applied), read from its header."""
    size = _header_size(data)
    if size is None:
        return None
    return (size[1], size[0]) if orientation(data) >= 5 else size


def reduction(width: int, height: int, min_side: int | None = MIN_SIDE) -> int:
    """The largest whole factor a ``width`` x ``height`` photo can be shrunk by with its shorter side kept at
    ``min_side`` pixels or more (1: decode at full size; ``min_side`` None: always 1)."""
    if not min_side:
        return 1
    return max(1, min(width, height) // min_side)


def decode(data: bytes, *, name: str = "image", max_pixels: int = MAX_PIXELS,
           min_side: int | None = MIN_SIDE, max_bytes: int = MAX_DECODE_BYTES) -> np.ndarray:
    """Decode encoded image bytes to an upright RGB uint8 array [H, W, 3]; raise ImageError with the reason.

    The EXIF orientation is applied. The photo comes out no larger than needed: its shorter side is shrunk
    by a whole factor to between ``min_side`` and twice that (``min_side`` None: full size). A JPEG is
    decoded at 1/2, 1/4 or 1/8 scale directly (the decoder never holds the full-size pixels); other formats
    are decoded whole and shrunk a band of rows at a time. Before any decoder runs, the header says how much
    memory the decode takes: over ``max_bytes`` (or ``max_pixels``) the photo is refused with the largest
    size accepted (``too_large``); a format whose header we cannot read is refused too. Decodes running at
    once share MAX_DECODE_BYTES (``BUDGET``): a photo waits for room up to DECODE_WAIT_S, then Busy (503).
    Alpha is composited on white (catalog photos with transparent backgrounds look like shop listings).
    """

    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    size = _header_size(data)
    if size is None:
        raise ImageError(f"{name}: not a readable image (JPEG, PNG or WebP expected)")
    refused = too_large(data, name=name, max_pixels=max_pixels, max_bytes=max_bytes, min_side=min_side)
    if refused:
        raise ImageError(refused)
    with BUDGET.hold(decode_cost(data, min_side)[2]):
        return _decode(data, size, name, max_pixels, min_side)


def _decode(data: bytes, size: tuple[int, int], name: str, max_pixels: int, min_side: int | None
            ) -> np.ndarray:
    import cv2

    buf = np.frombuffer(data, dtype=np.uint8)
    if data[:2] == b"\xff\xd8":
        # A baseline JPEG is decoded one step short of the largest reduction and averaged down below, which
        # keeps the picture closer to a full-size decode than the decoder's own 1/8 (rounded chroma
        # upsampling). A progressive one holds all its coefficients while decoding whatever the scale, so
        # it takes the largest reduction to keep memory down.
        progressive = progressive_jpeg(data)
        scale = _jpeg_scale(*size, min_side, progressive)
        flag = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4,
                2: cv2.IMREAD_REDUCED_COLOR_2, 1: cv2.IMREAD_COLOR}[scale]
        img = cv2.imdecode(buf, flag | cv2.IMREAD_IGNORE_ORIENTATION)
    else:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageError(f"{name}: not a readable image (JPEG, PNG or WebP expected)")
    if img.shape[0] * img.shape[1] > max_pixels:
        raise ImageError(f"{name}: {img.shape[1]}x{img.shape[0]} pixels is larger than the limit")
    rgb = to_rgb(img, reduction(img.shape[1], img.shape[0], min_side))
    del img  # the full-size pixels go before the turn below makes its copy
    return upright(rgb, orientation(data))


def to_rgb(img: np.ndarray, shrink: int = 1) -> np.ndarray:
    """OpenCV's decoded layout (gray, BGR or BGRA, any depth) to RGB uint8 [H, W, 3], ``shrink`` times
    smaller (box average over whole ``shrink`` x ``shrink`` blocks; up to shrink - 1 edge pixels dropped).

    Depth, alpha (composited on white) and size are dealt with a band of rows at a time, so no full-size
    copy of any kind is made: a 16-bit or transparent photo takes no more than its decoded pixels.
    """
    import cv2

    if shrink > 1:
        img = img[: img.shape[0] - img.shape[0] % shrink, : img.shape[1] - img.shape[1] % shrink]
    h, w = img.shape[:2]
    channels = 1 if img.ndim == 2 else img.shape[2]
    lo, span = 0.0, 1.0
    if img.dtype.kind == "f":
        lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
        span = (hi - lo) or 1.0
    band = shrink * max(1, 256 // shrink)
    out = np.empty((h // shrink, w // shrink, 3), np.uint8)
    for top in range(0, h, band):
        part = _to_uint8(img[top : top + band], lo, span)
        if channels == 4:
            alpha = part[:, :, 3:4].astype(np.float32) * (1.0 / 255.0)
            part = (part[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
        elif channels == 1 or channels == 2:
            part = part if part.ndim == 2 else part[:, :, 0]
            part = cv2.cvtColor(part, cv2.COLOR_GRAY2BGR)
        elif channels > 4:
            part = np.ascontiguousarray(part[:, :, :3])
        out[top // shrink : (top + part.shape[0]) // shrink] = _shrink(part, shrink)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def _to_uint8(part: np.ndarray, lo: float, span: float) -> np.ndarray:
    """A band of decoded pixels as uint8: 16-bit keeps its high byte, float is stretched from ``lo``."""
    if part.dtype == np.uint8:
        return part
    if part.dtype == np.uint16:
        return (part >> 8).astype(np.uint8)
    if part.dtype.kind == "f":
        return np.clip((np.nan_to_num(part) - lo) * (255.0 / span), 0, 255).astype(np.uint8)
    return part.astype(np.uint8)


def _shrink(img: np.ndarray, factor: int) -> np.ndarray:
    """``img`` (sides multiples of ``factor``) box-averaged ``factor`` times smaller; itself for 1."""
    import cv2

    if factor <= 1:
        return img
    return cv2.resize(img, (img.shape[1] // factor, img.shape[0] // factor), interpolation=cv2.INTER_AREA)


def read(path: str | Path, *, max_pixels: int = MAX_PIXELS, min_side: int | None = MIN_SIDE) -> np.ndarray:
    """Read an image file to upright RGB uint8 [H, W, 3] (see ``decode``); ImageError names the file and
    the reason."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return decode(data, name=str(path), max_pixels=max_pixels, min_side=min_side)


def encode_jpeg(rgb: np.ndarray, quality: int = 80) -> bytes:
    """RGB uint8 [H, W, 3] to JPEG bytes."""
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ImageError("JPEG encoding failed")
    return buf.tobytes()


THUMB_SIZE = 256
THUMB_QUALITY = 80


def thumbnail(rgb: np.ndarray, size: int = THUMB_SIZE, quality: int = THUMB_QUALITY) -> bytes:
    """JPEG bytes of an RGB uint8 [H, W, 3] image scaled to fit ``size`` x ``size``."""
    import cv2

    h, w = rgb.shape[:2]
    scale = min(1.0, size / max(h, w))
    if scale < 1.0:
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = cv2.resize(rgb, new, interpolation=cv2.INTER_AREA)
    return encode_jpeg(rgb, quality)
