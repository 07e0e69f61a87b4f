"""Several photos per item: naming the bundle rows of an item's further photos, and ranking items by photo."""

from __future__ import annotations

from .ids import ROW_SEP

MAX_PHOTOS = 16     # photos kept per catalog item (as many as a taught item keeps shots)
DEPTH = 4           # rows asked of the index per wanted item, at first, when items have several photos


def row_id(item_id: str, photo: int) -> str:
    """The bundle row id of an item's photo: the item id for its first photo (0), ``<id>\\x1f<n>`` after."""
    return item_id if photo == 0 else f"{item_id}{ROW_SEP}{int(photo)}"


def split(rid: str) -> tuple[str, int]:
    """``(item id, photo number)`` of a bundle row id (the inverse of ``row_id``)."""
    item_id, sep, n = rid.partition(ROW_SEP)
    if not sep:
        return item_id, 0
    try:
        return item_id, int(n)
    except ValueError:
        return item_id, 0


def best_per_item(rows, k: int) -> list:
    """The first ``k`` distinct items of ``rows`` (``(row id, score, *rest)`` best first): each item once, at
    its best-scoring photo, as ``(item id, photo, score, *rest)``."""
    seen: set[str] = set()
    out = []
    for rid, score, *rest in rows:
        item_id, photo = split(rid)
        if item_id in seen:
            continue
        seen.add(item_id)
        out.append((item_id, photo, score, *rest))
        if len(out) == k:
            break
    return out


class RowNames:
    """Names the kept catalog rows of a build in order: an item's first kept photo is its row (with the
    item's metadata), each further one ``<id>\\x1f<n>`` (n = 1, 2, ...) marked ``{"view_of": id}``."""

    def __init__(self):
        self.count: dict[str, int] = {}

    def __call__(self, item_id: str, extra: dict) -> tuple[str, dict]:
        n = self.count.get(item_id, 0)
        self.count[item_id] = n + 1
        return row_id(item_id, n), (extra if n == 0 else {"view_of": item_id})


def counts(item_ids) -> dict:
    """``{"items", "photos"}`` of a build's kept rows (their item ids, one per photo)."""
    ids = list(item_ids)
    return {"items": len(set(ids)), "photos": len(ids)}
