"""Reads a catalog directory (catalog.csv or a plain folder of images) into rows, reporting every bad one."""

from __future__ import annotations

import csv
import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..barcodes.codes import check_codes
from ..bundle import MAX_PHOTOS, id_problem
from ..errors import CatalogError

log = logging.getLogger(__name__)

CSV_NAME = "catalog.csv"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
REQUIRED = ("id", "title", "image")
MAX_FIELD = 1 << 20


@dataclass(frozen=True)
class Row:
    """One usable catalog photo. ``line`` is its line in catalog.csv (0 for a plain folder); ``photo`` is 0
    for an item's first photo and 1, 2, ... for its further ones (same id, title, price and extra)."""

    line: int
    id: str
    title: str
    price: str | None
    image: Path
    extra: dict = field(default_factory=dict)
    photo: int = 0


@dataclass(frozen=True)
class Problem:
    """A catalog row that cannot be indexed: where it is and why."""

    line: int
    file: str
    message: str

    def __str__(self) -> str:
        where = f"{CSV_NAME} line {self.line}" if self.line else "folder"
        return f"{where}: {self.file}: {self.message}" if self.file else f"{where}: {self.message}"


def _decode(data: bytes, path: Path) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        log.warning("%s: not UTF-8 (byte %d); reading it as Latin-1: save it as UTF-8 to keep accents right",
                    path, exc.start)
        return data.decode("latin-1")


def _inside(root: Path, rel: str) -> Path | None:
    """``root / rel`` if it stays inside ``root`` (no absolute paths, no ``..`` escapes); else None."""
    if not rel or "\x00" in rel:
        return None
    p = Path(rel)
    if p.is_absolute():
        return None
    try:
        full = (root / p).resolve()
        full.relative_to(root.resolve())
    except (OSError, ValueError, RuntimeError):
        return None
    return root / p


def read_csv(catalog_dir: Path) -> tuple[list[Row], list[Problem]]:
    """Rows of ``catalog.csv`` (id, title, price, image + extra columns) and the problems of the bad ones."""
    path = catalog_dir / CSV_NAME
    try:
        text = _decode(path.read_bytes(), path)
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    text = text.replace("\x00", "")
    csv.field_size_limit(MAX_FIELD)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise CatalogError(f"{path}: empty file; it needs a header line: id,title,price,image") from None
    except csv.Error as exc:
        raise CatalogError(f"{path}: header line unreadable ({exc})") from exc
    header = [h.strip().lower() for h in header]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise CatalogError(f"{path}: missing column(s) {', '.join(missing)} in the header line "
                           f"({','.join(header)[:200]}); expected id,title,price,image")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise CatalogError(f"{path}: column(s) {', '.join(dupes)} appear twice in the header line")
    rows: list[Row] = []
    problems: list[Problem] = []
    seen: dict[str, list[Row]] = {}
    raw_lines: list[str] | None = None
    while True:
        line = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(Problem(line, "", f"unreadable CSV ({exc})"))
            continue
        try:
            if len(values) > len(header) and any(v.strip() for v in values):
                if raw_lines is None:  # only split the text again when a row needs it
                    raw_lines = io.StringIO(text, newline="").readlines()
                raw = "".join(raw_lines[line - 1:reader.line_num])
                row, problem = None, Problem(line, "", _too_many_values(raw, len(values), header))
            else:
                row, problem = _parse_row(catalog_dir, header, values, line, seen)
        except Exception as exc:  # a row must never stop the build: report it and go on
            row, problem = None, Problem(line, "", f"cannot read this row ({type(exc).__name__}: {exc})")
        if problem:
            problems.append(problem)
        if row:
            rows.append(row)
    return rows, problems


def _unquoted_value_comma(raw: str) -> str | None:
    """The first value of a CSV row's raw text that an unquoted comma split in two, as written: a comma
    followed by a space ("Mug, blue") or between digits ("3,50"); None if every such comma was quoted."""
    quoted, start = False, 0
    for i, ch in enumerate(raw):
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            after = raw[i + 1:i + 2]
            if after == " " or (after.isdigit() and raw[i - 1:i].isdigit()):
                end = i + 1
                while end < len(raw) and raw[end] not in ',\r\n"':
                    end += 1
                return raw[start:end].strip()
            start = i + 1
    return None


def _too_many_values(raw: str, n: int, header: list[str]) -> str:
    split = _unquoted_value_comma(raw)
    if split is not None:
        return (f"{n} values for {len(header)} columns: the comma in {split!r} splits a value; put quotes "
                f"around a value with a comma (\"{split}\")")
    return (f"{n} values for {len(header)} columns ({','.join(header)}): remove the extra value, or name its "
            "column in the header line")


def _further_photo(first: Row, rec: dict, line: int, image: str, photos: int) -> Problem | None:
    """Checks a further row of an item (a repeated id): the first row's title and price win; a different
    one is one warning naming both lines. A Problem when the item has MAX_PHOTOS photos already."""
    if photos >= MAX_PHOTOS:
        return Problem(line, image, f"id {first.id!r} has {MAX_PHOTOS} photos already (from line "
                                    f"{first.line}); at most {MAX_PHOTOS} photos per item")
    differ = [f"{col} {value!r} (line {first.line}: {have!r})"
              for col, have in (("title", first.title), ("price", first.price))
              if (value := rec.get(col) or None) is not None and value != have]
    if differ:
        log.warning("%s line %d: a further photo of id %r with another %s; line %d's are kept", CSV_NAME,
                    line, first.id, " and ".join(differ), first.line)
    return None


def _parse_row(root: Path, header: list[str], values: list[str], line: int,
               seen: dict[str, list[Row]]) -> tuple[Row | None, Problem | None]:
    if not any(v.strip() for v in values):
        return None, None  # blank line
    rec = dict(zip(header, [v.strip() for v in values], strict=False))
    item_id = rec.get("id", "")
    image = rec.get("image", "")
    if not item_id:
        return None, Problem(line, image, "empty id")
    problem = id_problem(item_id)
    if problem:
        return None, Problem(line, image, problem)
    photos = seen.get(item_id, [])
    first = photos[0] if photos else None
    title = rec.get("title", "") if first is None else first.title
    if first is not None:   # a further photo of an item
        problem = _further_photo(first, rec, line, image, len(photos))
        if problem:
            return None, problem
    elif not title:
        return None, Problem(line, image, f"empty title for id {item_id!r}")
    if not image:
        return None, Problem(line, "", f"no image for id {item_id!r}")
    path = _inside(root, image)
    if path is None:
        return None, Problem(line, image, "image path must be relative to the catalog directory and stay "
                                          "inside it")
    try:
        is_file = path.is_file()
    except OSError:
        is_file = False
    if not is_file:
        return None, Problem(line, image, "missing image file")
    if first is not None:
        row = Row(line, item_id, first.title, first.price, path, first.extra, len(photos))
    else:
        price = rec.get("price") or None
        extra = {k: v for k, v in rec.items() if k not in ("id", "title", "price", "image")}
        bad_code = check_codes(extra.get("barcode"))
        if bad_code:   # kept as written (the item is fine), but no reader will ever return that number
            log.warning("%s line %d: %s (id %r)", CSV_NAME, line, bad_code, item_id)
        row = Row(line, item_id, title, price, path, extra)
    seen.setdefault(item_id, []).append(row)
    return row, None


def _title_from_name(stem: str) -> str:
    words = re.sub(r"[_\-.]+", " ", stem).split()
    return " ".join(words) if words else stem


def read_folder(catalog_dir: Path) -> tuple[list[Row], list[Problem]]:
    """A plain folder of images: each image in the folder itself is one item, each sub-folder is one item
    with the images in it (at any depth, in name order) as its photos; id and title from the file's or the
    sub-folder's name."""
    rows: list[Row] = []
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    try:
        files = sorted(p for p in catalog_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as exc:
        raise CatalogError(f"{catalog_dir}: cannot list ({exc.strerror or exc})") from exc
    photos: dict[str, list[Row]] = {}
    for p in files:
        rel = p.relative_to(catalog_dir).as_posix()
        try:
            if not p.is_file():
                continue
        except OSError:
            problems.append(Problem(0, rel, "cannot read"))
            continue
        parts = p.relative_to(catalog_dir).parts
        folder = parts[0] if len(parts) > 1 else None
        item_id = (folder if folder is not None else p.stem).strip()
        source = f"{folder}/" if folder is not None else rel
        problem = id_problem(item_id)
        if problem:
            what = "the folder" if folder is not None else "the file"
            problems.append(Problem(0, rel, f"{problem} (rename {what})"))
            continue
        if seen.setdefault(item_id, source) != source:
            problems.append(Problem(0, rel, f"duplicate id {item_id!r} (also {seen[item_id]})"))
            continue
        have = photos.setdefault(item_id, [])
        if len(have) >= MAX_PHOTOS:
            problems.append(Problem(0, rel, f"{source} has {MAX_PHOTOS} photos already; at most "
                                            f"{MAX_PHOTOS} photos per item"))
            continue
        extra = have[0].extra if have else ({"folder": folder} if folder is not None else {"file": rel})
        row = Row(0, item_id, _title_from_name(item_id), None, p, extra, len(have))
        have.append(row)
        rows.append(row)
    return rows, problems


def read_catalog(catalog_dir: str | Path) -> tuple[list[Row], list[Problem]]:
    """Rows and problems of a catalog directory; CatalogError only when the whole catalog is unusable."""
    catalog_dir = Path(catalog_dir)
    if not catalog_dir.is_dir():
        raise CatalogError(f"{catalog_dir}: not a directory; give a folder with catalog.csv or images")
    if (catalog_dir / CSV_NAME).is_file():
        rows, problems = read_csv(catalog_dir)
    else:
        rows, problems = read_folder(catalog_dir)
    if not rows and not problems:
        raise CatalogError(f"{catalog_dir}: no catalog.csv and no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return rows, problems


def report_problems(problems: list[Problem], strict: bool) -> None:
    """Log each bad row as skipped; with ``strict`` any of them is a CatalogError (nothing is written)."""
    for p in problems:
        log.warning("skipped %s", p)
    if strict and problems:
        raise CatalogError(f"{len(problems)} bad catalog row(s) and --strict; first: {problems[0]}")
