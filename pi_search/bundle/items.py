"""``items.sqlite``, the bundle's item metadata: the only code that opens it (writing, reading, checking)."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..barcodes.codes import keys, split_codes
from ..errors import BundleError
from .ids import ROW_SEP

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """Catalog metadata of one indexed item; ``thumbnail`` is JPEG bytes or None."""

    id: str
    title: str
    price: str | None = None
    extra: dict = field(default_factory=dict)
    thumbnail: bytes | None = None


def write_items(path: Path, items: Iterable[Item]) -> None:
    """Write the rows of a new bundle, row ``idx`` being the i-th item (the index's integer id), and the
    ``codes`` table (barcode key -> item id) from each item's ``barcode`` extra (codes separated by ``;``;
    a code already taken by another item stays with the first and is a warning)."""
    con = sqlite3.connect(path)
    codes: dict[str, str] = {}

    def rows():
        for i, it in enumerate(items):
            if ROW_SEP not in it.id:
                for code in split_codes(it.extra.get("barcode")):
                    for key in keys(code):
                        owner = codes.setdefault(key, it.id)
                        if owner != it.id:
                            log.warning("barcode %s of item %r is already item %r's; kept for %r", code,
                                        it.id, owner, owner)
            yield i, it.id, it.title, it.price, json.dumps(it.extra, ensure_ascii=False), it.thumbnail

    try:
        con.execute("PRAGMA journal_mode=OFF")
        con.execute("PRAGMA synchronous=OFF")
        con.execute("CREATE TABLE items (idx INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, "
                    "title TEXT NOT NULL, price TEXT, extra TEXT NOT NULL, thumb BLOB)")
        con.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)", rows())
        con.execute("CREATE TABLE codes (code TEXT PRIMARY KEY, id TEXT NOT NULL)")
        con.executemany("INSERT INTO codes VALUES (?, ?)", codes.items())
        con.commit()
    finally:
        con.close()


class ItemsFile:
    """A bundle's ``items.sqlite`` opened read-only (shared by threads; one read at a time).

    Every read that fails (a damaged row, a closed file) is a BundleError naming the file and the fix, not a
    crash. ``deep`` runs SQLite's quick_check on opening.
    """

    def __init__(self, path: Path, *, deep: bool = False):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._has_codes: bool | None = None
        self._db: sqlite3.Connection | None = sqlite3.connect(
            f"file:{self.path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        if deep:
            bad = [r[0] for r in self._db.execute("PRAGMA quick_check").fetchall() if r[0] != "ok"]
            if bad:
                first = " ".join(bad[0].split())[:200]
                self.close()
                raise BundleError(f"{self.path}: damaged ({first}); rebuild the bundle or copy it again")

    def _query(self, sql: str, args=(), *, many: bool = False):
        with self._lock:
            if self._db is None:
                raise BundleError(f"{self.path.parent}: the bundle was closed (it is being replaced)")
            try:
                cur = self._db.execute(sql, args)
                return cur.fetchall() if many else cur.fetchone()
            except sqlite3.DatabaseError as exc:
                raise BundleError(f"{self.path}: cannot read an item ({exc}); rebuild the bundle or copy it "
                                  "again") from exc

    def count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM items")[0])

    def rows(self, idx: list[int]) -> dict[int, tuple]:
        """``idx -> (idx, id, title, price)`` of the given rows."""
        marks = ",".join("?" * len(idx))
        found = self._query(f"SELECT idx, id, title, price FROM items WHERE idx IN ({marks})",
                            [int(i) for i in idx], many=True)
        return {r[0]: r for r in found}

    def item(self, item_id: str) -> dict | None:
        """Metadata of one item by catalog id (id, title, price, extra), or None."""
        r = self._query("SELECT id, title, price, extra FROM items WHERE id = ?", (str(item_id),))
        if r is None:
            return None
        return {"id": r[0], "title": r[1], "price": r[2], "extra": json.loads(r[3] or "{}")}

    def thumbnail(self, item_id: str) -> bytes | None:
        """JPEG bytes of an item's thumbnail by catalog id; None if unknown or without one."""
        r = self._query("SELECT thumb FROM items WHERE id = ?", (str(item_id),))
        return None if r is None or r[0] is None else bytes(r[0])

    def code_items(self, codes: list[str]) -> dict[str, str]:
        """``code -> item id`` for the lookup keys (``barcodes.codes.keys``) that name an item; a bundle
        written before barcodes has no codes table and names none."""
        if not codes:
            return {}
        if self._has_codes is None:
            self._has_codes = self._query(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'codes'") is not None
        if not self._has_codes:
            return {}
        marks = ",".join("?" * len(codes))
        found = self._query(f"SELECT code, id FROM codes WHERE code IN ({marks})", list(codes), many=True)
        return dict(found)

    def all_rows(self) -> list[tuple]:
        """``(idx, id, title, price, extra_json)`` of every row, in index order (compaction)."""
        return self._query("SELECT idx, id, title, price, extra FROM items ORDER BY idx", many=True)

    def taught_rows(self) -> list[tuple]:
        """``(id, title, price, extra_json)`` of rows whose extra records a ``taught_at`` time."""
        return self._query("SELECT id, title, price, extra FROM items WHERE extra LIKE '%\"taught_at\"%'",
                           many=True)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
