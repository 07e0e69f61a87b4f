"""Real-size photos: Debian wallpapers, 12 MP phone JPEGs with EXIF orientation, PNG, WebP."""

from __future__ import annotations

import csv
import functools
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Photos shipped by Debian's lomiri-wallpapers-16.04 and -20.04 (install.sh --dev): 0.3-6.7 MB JPEGs of up
# to 6028x3391 pixels, as cameras wrote them (two carry EXIF).
WALLPAPERS = Path("/usr/share/backgrounds")
TUX_STAMPS = Path("/usr/share/tuxpaint/stamps")
PHONE_SIZE = (4032, 3024)        # width, height of a 12 MP phone photo held in landscape
BIG_SIZE = (7296, 5472)          # 39.9 MP: just under images.MAX_PIXELS
ORIENTATIONS = (1, 3, 6, 8)      # as stored by phones: upright, upside down, turned right, turned left

# (id, title, wallpaper file): catalog items photographed at real size.
PHOTO_ITEMS = [
    ("fig-bowl", "Fig in a red bowl", "Picture_0B_by_freespace.jpg"),
    ("brushes", "Paint brushes", "Picture_1A_by_freespace.jpg"),
    ("nuthatch", "Nuthatch on a tree", "Kleiber_by_Lukas_Baubkus.jpg"),
    ("teddies", "Teddy bears at a window", "friends_by_Aitzol_Berasategi.jpg"),
    ("clock", "Wall clock", "greentock_by_Peter_Nerlich.jpg"),
    ("dandelion", "Dandelion", "seeding_by_Clements_Engelhardt.jpg"),
    ("ornament", "Bird ornament", "free_by_Peter_Nerlich.jpg"),
    ("dragonfly", "Dragonfly on a twig", "Dragonfly_by_Bolly.jpg"),
    ("living-room", "Living room", "Wine_by_Jakkub_Mede.jpg"),
]
# What the phone photos show: a bird on an upright trunk. Turned sideways it scores far lower (0.52 instead
# of 0.71 as a query), so a photo searched the wrong way up cannot pass for upright.
PHONE_ITEM = "nuthatch"
ALPHA_ITEM = ("strawberry", f"{TUX_STAMPS}/food/fruit/Strawberry2.png")  # a cut-out on transparency


def wallpaper(name: str) -> Path:
    path = WALLPAPERS / name
    assert path.exists(), f"{path} is missing: install Debian's lomiri-wallpapers-16.04 and " \
                          "lomiri-wallpapers-20.04 (./install.sh --dev)"
    return path


def wallpapers() -> list[Path]:
    """Every JPEG the wallpaper packages ship."""
    found = sorted(WALLPAPERS.glob("*.jpg"))
    assert len(found) >= 15, "install Debian's lomiri-wallpapers-16.04 and lomiri-wallpapers-20.04 " \
                             "(./install.sh --dev)"
    return found


# ---------------------------------------------------------------- EXIF written by hand
def tiff_orientation(orientation: int) -> bytes:
    """A little-endian TIFF block with IFD0 holding only the Orientation tag (0x0112, SHORT)."""
    entry = struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + entry + struct.pack("<I", 0)


def exif_app1(orientation: int) -> bytes:
    """A JPEG APP1 segment ``Exif\\0\\0`` + TIFF, as cameras write right after the start of the image."""
    payload = b"Exif\x00\x00" + tiff_orientation(orientation)
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def stored(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a phone stores for an upright view ``rgb`` when it writes ``orientation``: turning them
    the way the tag says gives ``rgb`` back (6: the view is the stored pixels turned 90 degrees clockwise)."""
    turns = {1: 0, 3: 2, 6: 1, 8: 3}[orientation]  # counter-clockwise quarter turns
    return np.ascontiguousarray(np.rot90(rgb, turns))


def jpeg_bytes(rgb: np.ndarray, quality: int = 92, orientation: int | None = None) -> bytes:
    """RGB uint8 [H, W, 3] as a JPEG; with ``orientation``, stored turned and tagged like a phone's photo
    (EXIF APP1 first, no JFIF header)."""
    import cv2

    pixels = rgb if orientation is None else stored(rgb, orientation)
    bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    data = buf.tobytes()
    if orientation is None:
        return data
    rest = data[2:]
    if rest[:2] == b"\xff\xe0":  # drop the JFIF APP0: a camera file starts with its EXIF
        rest = rest[2 + struct.unpack(">H", rest[2:4])[0]:]
    return b"\xff\xd8" + exif_app1(orientation) + rest


def png_bytes(pixels: np.ndarray, orientation: int | None = None) -> bytes:
    """RGB or RGBA uint8 as a PNG; with ``orientation``, stored turned with an ``eXIf`` chunk."""
    import cv2

    if orientation is not None:
        pixels = stored(pixels, orientation)
    code = cv2.COLOR_RGBA2BGRA if pixels.shape[2] == 4 else cv2.COLOR_RGB2BGR
    ok, buf = cv2.imencode(".png", cv2.cvtColor(pixels, code), [cv2.IMWRITE_PNG_COMPRESSION, 6])
    assert ok
    data = buf.tobytes()
    if orientation is None:
        return data
    body = tiff_orientation(orientation)
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    idat = data.find(b"IDAT") - 4
    return data[:idat] + chunk + data[idat:]


def webp_bytes(rgb: np.ndarray, quality: int = 90, orientation: int | None = None) -> bytes:
    """RGB uint8 as a lossy WebP; with ``orientation``, stored turned in an extended (VP8X) file with an
    ``EXIF`` chunk."""
    import cv2

    pixels = rgb if orientation is None else stored(rgb, orientation)
    bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, quality])
    assert ok
    data = buf.tobytes()
    if orientation is None:
        return data
    assert data[12:16] in (b"VP8 ", b"VP8L"), data[12:16]
    h, w = pixels.shape[:2]
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0x08, 0, 0, 0]) + (w - 1).to_bytes(3, "little") \
        + (h - 1).to_bytes(3, "little")
    body = tiff_orientation(orientation)
    exif = b"EXIF" + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) & 1 else b"")
    chunks = vp8x + data[12:] + exif
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


# ---------------------------------------------------------------- photos
def full_size(path: Path) -> np.ndarray:
    """A packaged photo decoded at full size, upright: RGB uint8 [H, W, 3]."""
    from pi_search import images

    return images.read(path, min_side=None)


def cover(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """``rgb`` cropped around its centre to the aspect of ``width`` x ``height``, resized to exactly that."""
    import cv2

    h, w = rgb.shape[:2]
    scale = max(width / w, height / h)
    cw, ch = round(width / scale), round(height / scale)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = rgb[top: top + ch, left: left + cw]
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(crop, (width, height), interpolation=interp)


def handheld(rgb: np.ndarray, size=PHONE_SIZE, seed: int = 0) -> np.ndarray:
    """A phone shot of a photographed item: off-centre 90% framing, a little darker, sensor noise (sigma 2),
    at ``size``."""
    h, w = rgb.shape[:2]
    crop = rgb[int(h * 0.04): int(h * 0.94), int(w * 0.07): int(w * 0.97)]
    shot = cover(crop, *size).astype(np.float32) * 0.92 + 4
    shot += np.random.default_rng(seed).normal(0, 2.0, shot.shape).astype(np.float32)
    return np.clip(shot, 0, 255).astype(np.uint8)


def cut_out(path: str | Path, long_side: int) -> np.ndarray:
    """An RGBA cut-out (a transparent-background PNG) enlarged to ``long_side``: RGBA uint8 [H, W, 4]."""
    import cv2

    bgra = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert bgra is not None and bgra.shape[2] == 4, path
    s = long_side / max(bgra.shape[:2])
    size = (round(bgra.shape[1] * s), round(bgra.shape[0] * s))
    big = cv2.resize(bgra, size, interpolation=cv2.INTER_CUBIC)
    return cv2.cvtColor(big, cv2.COLOR_BGRA2RGBA)


@dataclass
class Corpus:
    """Files of real-size photos (every one a real photograph; sizes in the fields' comments)."""

    root: Path
    upright: np.ndarray = field(repr=False)  # the phone shot as shown: RGB uint8 [3024, 4032, 3]
    phone: dict[int, Path]        # 4032x3024 JPEG (q95, 2.9 MB) of the phone item, stored per orientation
    phone_5mb: Path               # the same, orientation 6, at q98: 5 MB
    phone_png: Path               # the same shot as PNG, 2016x1512 (a PNG of a photo is large)
    phone_webp: Path              # the same shot as lossy WebP, 4032x3024
    turned_png: Path              # 2016x1512 PNG stored turned with an eXIf orientation of 6
    turned_webp: Path             # 4032x3024 WebP stored turned with an EXIF chunk, orientation 8
    alpha_png: Path               # 2400 px RGBA cut-out of ALPHA_ITEM on transparency
    big: Path                     # 7296x5472 (39.9 MP) JPEG: the phone item enlarged

    @functools.cached_property
    def phone_21mb(self) -> Path:
        """A top phone camera's full-size photo: 7296x5472 (39.9 MP) with its own sensor noise, q99, stored
        turned (EXIF orientation 6): 21.5 MB. Made on first use (about 10 s)."""
        path = self.root / "phone-40mp-21mb.jpg"
        shot = handheld(cover(self.upright, *BIG_SIZE), BIG_SIZE, seed=1)
        path.write_bytes(jpeg_bytes(shot, 99, orientation=6))
        return path

    @functools.cached_property
    def phone_50mp(self) -> Path:
        """A 50 MP phone photo (8160x6120, q95, EXIF orientation 6), sent shrunk by the pages or as it is
        through the API. Made on first use."""
        path = self.root / "phone-50mp.jpg"
        shot = handheld(cover(self.upright, 8160, 6120), (8160, 6120), seed=2)
        path.write_bytes(jpeg_bytes(shot, 95, orientation=6))
        return path

    def all_photos(self) -> list[Path]:
        """Every photo of the corpus and every packaged wallpaper."""
        return [*self.phone.values(), self.phone_5mb, self.phone_png, self.phone_webp, self.turned_png,
                self.turned_webp, self.alpha_png, self.big, *wallpapers()]


def build(root: Path) -> Corpus:
    """Write the corpus under ``root`` (made from packaged photos; nothing is downloaded)."""
    root.mkdir(parents=True, exist_ok=True)
    source = wallpaper(dict((i, f) for i, _, f in PHOTO_ITEMS)[PHONE_ITEM])
    shot = handheld(full_size(source))
    phone = {}
    for o in ORIENTATIONS:
        phone[o] = root / f"phone-o{o}.jpg"
        phone[o].write_bytes(jpeg_bytes(shot, 95, orientation=o))
    half = cover(shot, PHONE_SIZE[0] // 2, PHONE_SIZE[1] // 2)
    c = Corpus(root, shot, phone, root / "phone-5mb.jpg", root / "phone.png", root / "phone.webp",
               root / "phone-o6.png", root / "phone-o8.webp", root / "cut-out.png", root / "big-40mp.jpg")
    c.phone_5mb.write_bytes(jpeg_bytes(shot, 98, orientation=6))
    c.phone_png.write_bytes(png_bytes(half))
    c.phone_webp.write_bytes(webp_bytes(shot, 90))
    c.turned_png.write_bytes(png_bytes(half, orientation=6))
    c.turned_webp.write_bytes(webp_bytes(shot, 90, orientation=8))
    c.alpha_png.write_bytes(png_bytes(cut_out(ALPHA_ITEM[1], 2400)))
    c.big.write_bytes(jpeg_bytes(cover(shot, *BIG_SIZE), 85))
    return c


def write_photo_catalog(root: Path, small_photos, phone: Path | None = None) -> Path:
    """A catalog of real-size photos: ``root/catalog.csv`` with the PHOTO_ITEMS (the packaged files as
    they are) and ``small_photos`` rows (id, title, price, source) as conftest writes them; ``phone``
    replaces the PHONE_ITEM's photo (a phone JPEG with EXIF, say)."""
    from conftest import write_catalog

    write_catalog(root, small_photos)
    with open(root / "catalog.csv", newline="") as f:
        rows = list(csv.reader(f))
    for item_id, title, name in PHOTO_ITEMS:
        src = phone if phone is not None and item_id == PHONE_ITEM else wallpaper(name)
        copy = root / "images" / f"{item_id}{src.suffix}"
        shutil.copyfile(src, copy)  # a copy: a catalog's photos must stay inside its folder
        rows.append([item_id, title, "1.00", f"images/{copy.name}", "n/a"])
    with open(root / "catalog.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


# ---------------------------------------------------------------- barcodes
def barcode(text: str, fmt: str = "EAN13", scale: int = 4) -> np.ndarray:
    """A code drawn by zxing-cpp's writer: grey uint8 [H, W] with its quiet zones (EAN13, EAN8, UPCA,
    UPCE, Code128 or QRCode). EAN/UPC codes are given with their check digit."""
    import cv2
    import zxingcpp

    code = zxingcpp.create_barcode(text, getattr(zxingcpp.BarcodeFormat, fmt))
    img = np.asarray(zxingcpp.write_barcode_to_image(code, scale=scale))
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    if fmt in ("EAN13", "EAN8", "UPCA", "UPCE", "Code128") and img.shape[0] < img.shape[1] // 3:
        # bars a third as tall as the code is wide, as on a pack
        img = cv2.resize(img, (img.shape[1], img.shape[1] // 3), interpolation=cv2.INTER_NEAREST)
    return img


def ean13_wrong_check(good: str, wrong_digit: str) -> np.ndarray:
    """An EAN-13 whose printed check digit is wrong: the bars of ``good`` with the last digit's bars
    redrawn for ``wrong_digit`` (the writer refuses to draw it, so it is pieced from two valid codes: the
    right half of an EAN-13 encodes its digits the same way whatever the left half)."""
    other = next(good[:7] + mid + wrong_digit for mid in ("00000", "00001", "11111", "22222", "33333",
                                                           "44444", "55555", "66666", "77777", "88888")
                 if _gtin_check(good[:7] + mid) == int(wrong_digit))
    a, b = barcode(good), barcode(other)
    # the last digit's 7 modules end 3 modules (end guard) + quiet zone before the right edge
    scale = 4
    quiet = (a.shape[1] // scale - 95) // 2
    end = a.shape[1] - (quiet + 3) * scale
    out = a.copy()
    out[:, end - 7 * scale:end] = b[:, end - 7 * scale:end]
    return out


def _gtin_check(body: str) -> int:
    total = sum(int(c) * (3 if i % 2 == 0 else 1) for i, c in enumerate(reversed(body)))
    return (10 - total % 10) % 10


def with_code(photo: np.ndarray, code: np.ndarray, width: float, at=(0.5, 0.5), angle: float = 0.0
              ) -> np.ndarray:
    """``photo`` (RGB uint8) with ``code`` (grey) printed on a white label ``width`` of the photo's width
    wide, centred at ``at`` (fractions of the photo), turned ``angle`` degrees (a new array)."""
    import cv2

    h, w = photo.shape[:2]
    cw = max(8, int(w * width))
    ch = max(8, round(code.shape[0] * cw / code.shape[1]))
    label = cv2.resize(code, (cw, ch), interpolation=cv2.INTER_AREA)
    pad = max(2, cw // 20)
    label = cv2.copyMakeBorder(label, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=255)
    lh, lw = label.shape
    big = int(np.ceil(np.hypot(lh, lw))) + 2
    canvas = np.zeros((big, big), np.uint8)
    mask = np.zeros((big, big), np.uint8)
    y0, x0 = (big - lh) // 2, (big - lw) // 2
    canvas[y0:y0 + lh, x0:x0 + lw] = label
    mask[y0:y0 + lh, x0:x0 + lw] = 255
    rot = cv2.getRotationMatrix2D((big / 2, big / 2), angle, 1.0)
    canvas = cv2.warpAffine(canvas, rot, (big, big), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(mask, rot, (big, big), flags=cv2.INTER_LINEAR)
    out = photo.copy()
    cx, cy = int(at[0] * w), int(at[1] * h)
    top, left = cy - big // 2, cx - big // 2
    ys, xs = slice(max(0, top), min(h, top + big)), slice(max(0, left), min(w, left + big))
    part = out[ys, xs].astype(np.float32)
    m = mask[ys.start - top:ys.stop - top, xs.start - left:xs.stop - left, None].astype(np.float32) / 255
    c = canvas[ys.start - top:ys.stop - top, xs.start - left:xs.stop - left, None].astype(np.float32)
    out[ys, xs] = (part * (1 - m) + c * m).astype(np.uint8)
    return out
