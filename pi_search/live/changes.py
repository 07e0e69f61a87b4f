"""The change store: items taught on the kiosk, edits and removals, in an SQLite file beside the bundle."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..bundle import check_id
from ..errors import CatalogError, ItemConflict, NoSuchItem

log = logging.getLogger(__name__)

SUFFIX = ".changes.sqlite"
SCHEMA_VERSION = 1
MAX_SHOTS = 16            # vectors kept per item in the store
MAX_TITLE = 200
MAX_PRICE = 40

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY, title TEXT NOT NULL, price TEXT, extra TEXT NOT NULL DEFAULT '{}', thumb BLOB,
    created REAL NOT NULL, updated REAL NOT NULL, deleted INTEGER NOT NULL DEFAULT 0,
    base INTEGER NOT NULL DEFAULT 0, seq INTEGER NOT NULL, own INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS vectors (
    id INTEGER PRIMARY KEY AUTOINCREMENT, item_id TEXT NOT NULL, vec BLOB NOT NULL, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS vectors_item ON vectors (item_id);
"""


def store_path(bundle_dir: str | Path) -> Path:
    """Where the changes of ``bundle_dir`` live: ``NAME.changes.sqlite`` beside it (the bundle directory is
    replaced whole by a compaction, the store is not)."""
    bundle_dir = Path(bundle_dir)
    return bundle_dir.parent / f"{bundle_dir.name}{SUFFIX}"


def check_text(value: str | None, name: str, limit: int, *, required: bool = False) -> str | None:
    """``value`` stripped, None when empty (CatalogError if ``required``), CatalogError when too long."""
    value = None if value is None else str(value).strip()
    if not value:
        if required:
            raise CatalogError(f"the {name} is empty; type a {name}")
        return None
    if len(value) > limit or re.search(r"[\x00-\x08\x0b-\x1f\x7f]", value):
        raise CatalogError(f"the {name} {value[:40]!r}...: use at most {limit} characters, no control "
                           "characters")
    return value


@dataclass(frozen=True)
class TaughtItem:
    """One row of the store: a taught item (``base`` False) or an edit/removal of a bundle item (True)."""

    id: str
    title: str
    price: str | None
    extra: dict = field(default_factory=dict)
    created: float = 0.0
    updated: float = 0.0
    deleted: bool = False
    base: bool = False
    seq: int = 0
    shots: int = 0
    own: int = 0           # change from which the bundle's shots of this id are replaced by the taught ones

    @property
    def masks_bundle(self) -> bool:
        """The bundle's vectors of this id must not match (the item was removed or taught afresh)."""
        return self.deleted or self.own > 0

    def as_dict(self) -> dict:
        return {"id": self.id, "title": self.title, "price": self.price, "extra": self.extra,
                "created": round(self.created, 3), "updated": round(self.updated, 3), "deleted": self.deleted,
                "in_bundle": self.base, "shots": self.shots, "seq": self.seq}


@dataclass(frozen=True)
class Snapshot:
    """Everything the store holds at one instant, read in one transaction.

    ``vectors``: float32 [m, dim], L2-normalised; ``owners``: the item id of each vector row (object [m]).
    """

    seq: int
    items: dict            # id -> TaughtItem (deleted ones included)
    vectors: np.ndarray
    owners: np.ndarray
    vector_seqs: np.ndarray  # int64 [m]: the change that added each vector


class ChangeStore:
    """Taught items, their shot embeddings and thumbnails, and removals/edits of bundle items.

    Every change is one SQLite transaction (WAL journal, full sync) and gets the next change number
    (``seq``); a compaction folds the changes up to some ``seq`` into a new bundle and then forgets them.
    Thread-safe; several processes may open the same file (SQLite locking).
    """

    def __init__(self, path: str | Path, *, dim: int, model_sha256: str | None = None):
        self.path = Path(path)
        self.dim = int(dim)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._init_meta(model_sha256)
        except sqlite3.Error as exc:
            raise CatalogError(f"{self.path}: cannot open the change store ({exc}); check the file and its "
                               "directory are writable") from exc

    def _init_meta(self, model_sha256: str | None) -> None:
        with self._tx():
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                self._db.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("schema", str(SCHEMA_VERSION)), ("dim", str(self.dim)), ("seq", "0"),
                    ("model_sha256", model_sha256 or "")])
                return
        if int(meta.get("schema", 0)) > SCHEMA_VERSION:
            raise CatalogError(f"{self.path}: written by a newer pi-search; upgrade pi-search")
        if int(meta["dim"]) != self.dim:
            raise CatalogError(f"{self.path}: taught items are {meta['dim']}-d, the bundle {self.dim}-d; "
                               "move the file away (its items were made with another model)")
        if model_sha256 and meta.get("model_sha256") and meta["model_sha256"] != model_sha256:
            raise CatalogError(f"{self.path}: taught items were embedded with another model (sha256 "
                               f"{meta['model_sha256'][:12]}); move the file away or use that model")

    # ------------------------------------------------------------ transactions
    class _Tx:
        def __init__(self, store: ChangeStore):
            self.store = store

        def __enter__(self):
            self.store._lock.acquire()
            try:
                self.store._db.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.store._lock.release()
                raise
            return self.store._db

        def __exit__(self, exc_type, exc, tb):
            try:
                self.store._db.execute("ROLLBACK" if exc_type else "COMMIT")
            finally:
                self.store._lock.release()

    def _tx(self) -> ChangeStore._Tx:
        return ChangeStore._Tx(self)

    def _next_seq(self, db) -> int:
        db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'seq'")
        return int(db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0])

    def _vectors(self, vectors) -> np.ndarray:
        v = np.asarray(vectors, dtype=np.float32)
        if v.ndim == 1:
            v = v[None, :]
        if v.ndim != 2 or v.shape[1] != self.dim or not np.isfinite(v).all():
            raise CatalogError(f"shot embeddings of shape {tuple(v.shape)}: expected finite float32 "
                               f"[n, {self.dim}]")
        n = np.linalg.norm(v, axis=1, keepdims=True)
        return (v / np.where(n > 0, n, 1.0)).astype(np.float32)

    def _row(self, db, item_id: str) -> tuple | None:
        return db.execute("SELECT deleted, base, thumb FROM items WHERE id = ?", (item_id,)).fetchone()

    # ------------------------------------------------------------ changes
    def add(self, item_id: str, title: str, price: str | None, vectors, *, thumb: bytes | None = None,
            extra: dict | None = None, base: bool = False) -> int:
        """Teach a new item (or one that was removed) with one or more shot embeddings (float32 [n, dim]).

        ``base``: the id also exists in the bundle (the shots are added to it and the metadata overrides
        it). Returns the change number. CatalogError if the id is already taught.
        """
        item_id = check_id(item_id)
        title = check_text(title, "title", MAX_TITLE, required=True)
        price = check_text(price, "price", MAX_PRICE)
        v = self._vectors(vectors)
        if not 1 <= len(v) <= MAX_SHOTS:
            raise CatalogError(f"{len(v)} shots: teach an item with 1 to {MAX_SHOTS} shots")
        now = time.time()
        with self._tx() as db:
            row = self._row(db, item_id)
            if row is not None and not row[0]:
                raise ItemConflict(f"item {item_id!r} is already taught; edit it or choose another id")
            # a bundle item removed and taught again keeps only its new shots
            own = row is not None and bool(row[1])
            seq = self._next_seq(db)
            db.execute("DELETE FROM vectors WHERE item_id = ?", (item_id,))
            db.execute("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
                       (item_id, title, price, json.dumps(extra or {}, ensure_ascii=False), thumb, now, now,
                        int(base or own), seq, seq if own else 0))
            db.executemany("INSERT INTO vectors (item_id, vec, seq) VALUES (?, ?, ?)",
                           [(item_id, x.tobytes(), seq) for x in v])
        log.info("taught item %s (%d shot(s), change %d)", item_id, len(v), seq)
        return seq

    def edit(self, item_id: str, *, title: str | None = None, price: str | None = None,
             extra: dict | None = None, vectors=None, thumb: bytes | None = None,
             base_item: dict | None = None, clear_price: bool = False) -> int:
        """Change an item's title, price or extra fields and/or add shots (float32 [n, dim]).

        An item not in the store must be given as ``base_item`` (its bundle metadata: id, title, price,
        extra); the edit is then stored as an override of it. Returns the change number.
        """
        item_id = check_id(item_id)
        title = check_text(title, "title", MAX_TITLE)
        price = check_text(price, "price", MAX_PRICE)
        v = self._vectors(vectors) if vectors is not None and len(vectors) else None
        now = time.time()
        with self._tx() as db:
            row = self._row(db, item_id)
            if row is not None and row[0]:
                raise NoSuchItem(f"item {item_id!r} was removed; teach it again: pi-search item add")
            if row is None:
                if base_item is None:
                    raise NoSuchItem(f"no item {item_id!r} to edit; list them: pi-search item list")
                db.execute("INSERT INTO items VALUES (?, ?, ?, ?, NULL, ?, ?, 0, 1, 0, 0)",
                           (item_id, base_item["title"], base_item.get("price"),
                            json.dumps(base_item.get("extra") or {}, ensure_ascii=False), now, now))
            have = db.execute("SELECT COUNT(*) FROM vectors WHERE item_id = ?", (item_id,)).fetchone()[0]
            if v is not None and have + len(v) > MAX_SHOTS:
                raise CatalogError(f"item {item_id!r} has {have} shots; at most {MAX_SHOTS} are kept")
            seq = self._next_seq(db)
            sets, args = ["updated = ?", "seq = ?"], [now, seq]
            if title is not None:
                sets.append("title = ?")
                args.append(title)
            if price is not None or clear_price:
                sets.append("price = ?")
                args.append(price)
            if extra is not None:
                sets.append("extra = ?")
                args.append(json.dumps(extra, ensure_ascii=False))
            if thumb is not None:
                sets.append("thumb = ?")
                args.append(thumb)
            db.execute(f"UPDATE items SET {', '.join(sets)} WHERE id = ?", (*args, item_id))
            if v is not None:
                db.executemany("INSERT INTO vectors (item_id, vec, seq) VALUES (?, ?, ?)",
                               [(item_id, x.tobytes(), seq) for x in v])
        log.info("edited item %s (change %d)", item_id, seq)
        return seq

    def remove(self, item_id: str, *, base_item: dict | None = None) -> int:
        """Remove an item: its shots are dropped and a tombstone masks it (and the bundle item of that id).

        An item not in the store must be given as ``base_item`` (its bundle metadata). Returns the change
        number; CatalogError if there is no such item.
        """
        item_id = check_id(item_id)
        now = time.time()
        with self._tx() as db:
            row = self._row(db, item_id)
            if row is not None and row[0]:
                raise ItemConflict(f"item {item_id!r} is already removed")
            if row is None and base_item is None:
                raise NoSuchItem(f"no item {item_id!r}; list them: pi-search item list")
            seq = self._next_seq(db)
            db.execute("DELETE FROM vectors WHERE item_id = ?", (item_id,))
            if row is None:
                db.execute("INSERT INTO items VALUES (?, ?, ?, ?, NULL, ?, ?, 1, 1, ?, 0)",
                           (item_id, base_item["title"], base_item.get("price"),
                            json.dumps(base_item.get("extra") or {}, ensure_ascii=False), now, now, seq))
            else:
                db.execute("UPDATE items SET deleted = 1, thumb = NULL, updated = ?, seq = ? WHERE id = ?",
                           (now, seq, item_id))
        log.info("removed item %s (change %d)", item_id, seq)
        return seq

    def forget(self, folded_seq: int) -> int:
        """Drop every change numbered ``folded_seq`` or lower (a bundle now holds them); returns rows dropped.

        An item changed after ``folded_seq`` keeps its row; its older shots are in the bundle and dropped.
        """
        if folded_seq <= 0:
            return 0
        with self._tx() as db:
            a = db.execute("DELETE FROM items WHERE seq <= ?", (folded_seq,)).rowcount
            b = db.execute("DELETE FROM vectors WHERE seq <= ?", (folded_seq,)).rowcount
            db.execute("UPDATE items SET own = 0 WHERE own <= ?", (folded_seq,))
        if a or b:
            log.info("forgot %d item row(s) and %d shot(s) folded into the bundle (changes <= %d)", a, b,
                     folded_seq)
        return a + b

    def background(self) -> np.ndarray | None:
        """The empty scene's embedding (float32 [dim]) kept for camera shots, or None."""
        with self._lock:
            r = self._db.execute("SELECT value FROM meta WHERE key = 'background'").fetchone()
        if r is None or not r[0]:
            return None
        return np.frombuffer(bytes.fromhex(r[0]), dtype=np.float32).copy()

    def set_background(self, vector) -> None:
        """Keep (or, with None, forget) the empty scene's embedding; not a change to the catalog."""
        if vector is None:
            value = ""
        else:
            v = np.asarray(vector, dtype=np.float32).reshape(-1)
            if v.shape != (self.dim,) or not np.isfinite(v).all():
                raise CatalogError(f"background embedding of shape {v.shape}: expected finite float32 "
                                   f"[{self.dim}]")
            value = (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32).tobytes().hex()
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('background', ?)", (value,))

    def mark_in_bundle(self, ids) -> None:
        """Record that items ``ids`` now exist in the bundle (after a compaction folded them)."""
        ids = list(ids)
        if ids:
            with self._tx() as db:
                db.executemany("UPDATE items SET base = 1 WHERE id = ?", [(i,) for i in ids])

    # ------------------------------------------------------------ reading
    def seq(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0])

    def data_version(self) -> int:
        """Changes when another connection (another process) commits; cheap to poll."""
        with self._lock:
            return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def pending(self) -> int:
        """Number of item rows (taught, edited or removed) not yet folded into the bundle."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def snapshot(self) -> Snapshot:
        """Every row and shot at one instant (one read transaction)."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                seq = int(self._db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0])
                rows = self._db.execute(
                    "SELECT i.id, i.title, i.price, i.extra, i.created, i.updated, i.deleted, i.base, i.seq, "
                    "(SELECT COUNT(*) FROM vectors v WHERE v.item_id = i.id), i.own FROM items i").fetchall()
                vecs = self._db.execute("SELECT item_id, vec, seq FROM vectors ORDER BY id").fetchall()
            finally:
                self._db.execute("COMMIT")
        items = {r[0]: TaughtItem(r[0], r[1], r[2], json.loads(r[3] or "{}"), r[4], r[5], bool(r[6]),
                                  bool(r[7]), int(r[8]), int(r[9]), int(r[10])) for r in rows}
        if vecs:
            m = np.frombuffer(b"".join(r[1] for r in vecs), dtype=np.float32).reshape(len(vecs), self.dim)
            owners = np.array([r[0] for r in vecs], dtype=object)
            seqs = np.array([r[2] for r in vecs], dtype=np.int64)
        else:
            m, owners, seqs = (np.empty((0, self.dim), np.float32), np.empty(0, object),
                               np.empty(0, np.int64))
        return Snapshot(seq, items, m, owners, seqs)

    def items(self, *, include_deleted: bool = True) -> list[TaughtItem]:
        """The store's rows, most recently changed first."""
        snap = self.snapshot()
        out = [it for it in snap.items.values() if include_deleted or not it.deleted]
        return sorted(out, key=lambda it: (it.updated, it.seq), reverse=True)

    def get(self, item_id: str) -> TaughtItem | None:
        return self.get_row(item_id)

    def get_row(self, item_id: str) -> TaughtItem | None:
        """One row of the store (deleted ones included) without reading any shot."""
        with self._lock:
            r = self._db.execute(
                "SELECT i.id, i.title, i.price, i.extra, i.created, i.updated, i.deleted, i.base, i.seq, "
                "(SELECT COUNT(*) FROM vectors v WHERE v.item_id = i.id), i.own FROM items i WHERE i.id = ?",
                (str(item_id),)).fetchone()
        if r is None:
            return None
        return TaughtItem(r[0], r[1], r[2], json.loads(r[3] or "{}"), r[4], r[5], bool(r[6]), bool(r[7]),
                          int(r[8]), int(r[9]), int(r[10]))

    def thumbnail(self, item_id: str) -> bytes | None:
        with self._lock:
            r = self._db.execute("SELECT thumb FROM items WHERE id = ? AND deleted = 0",
                                 (str(item_id),)).fetchone()
        return None if r is None or r[0] is None else bytes(r[0])

    def thumbnails(self) -> dict[str, bytes]:
        """Thumbnails of the items that have one (for a compaction)."""
        with self._lock:
            rows = self._db.execute("SELECT id, thumb FROM items WHERE thumb IS NOT NULL").fetchall()
        return {r[0]: bytes(r[1]) for r in rows}

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
