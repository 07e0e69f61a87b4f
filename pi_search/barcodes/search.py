"""Putting the items named by the codes in a picture first, before the matches found by its look."""

from __future__ import annotations

from .codes import keys
from .decode import Code


def codes_first(catalog, codes: list[Code], matches: list, k: int) -> tuple[list, list[dict]]:
    """``(matches, codes)``: the catalog items the ``codes`` name (``via`` "barcode", in reading order),
    then the visual ``matches`` of other items, ``k`` in all; and for each code ``{"code", "format",
    "matched", "id"}`` (``id`` None for a code that names no catalog item)."""
    if not codes:
        return list(matches)[:k], []
    per_code = {c.text: keys(c.text) for c in codes}
    found = catalog.code_items(sorted({key for ks in per_code.values() for key in ks}))
    first, named, info = [], set(), []
    for c in codes:
        hit = next((found[key] for key in per_code[c.text] if key in found), None)
        info.append({"code": c.text, "format": c.format, "matched": hit is not None,
                     "id": None if hit is None else hit.id})
        if hit is not None and hit.id not in named:
            named.add(hit.id)
            first.append(hit)
    rest = [m for m in matches if m.id not in named]
    return (first + rest)[:max(k, len(first))], info
