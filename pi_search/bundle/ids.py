"""The one rule for item ids, shared by catalog rows, taught items and the web API."""

from __future__ import annotations

import re

from ..errors import CatalogError

MAX_ID = 200
_BAD_ID = re.compile(r"[\x00-\x1f\x7f/\\]")
ROW_SEP = "\x1f"   # bundle rows holding further shots of one item are named "<id>\x1f<n>" (never in an id)
RULE = f"at most {MAX_ID} characters, no slashes, backslashes or control characters"


def id_problem(item_id: str) -> str | None:
    """Why ``item_id`` (already stripped) cannot be an item id, or None when it can."""
    if not item_id:
        return "the item id is empty; give an id (letters, digits, - or _)"
    if len(item_id) > MAX_ID or _BAD_ID.search(item_id):
        return f"item id {item_id[:MAX_ID]!r} breaks the id rule: {RULE}"
    return None


def check_id(item_id: str) -> str:
    """A usable item id (stripped) or CatalogError saying what is wrong with it."""
    item_id = str(item_id).strip()
    problem = id_problem(item_id)
    if problem:
        raise CatalogError(problem)
    return item_id


def item_of(row_id: str) -> str:
    """The item id of a bundle row id (a row holding an extra shot is named ``<id>\\x1f<n>``)."""
    return row_id.split(ROW_SEP, 1)[0]
