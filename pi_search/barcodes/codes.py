"""The one spelling of a barcode's text, shared by the catalog column, taught items and the decoder."""

from __future__ import annotations

import re

from ..errors import CatalogError

SEP = ";"            # several codes of one item in the ``barcode`` column
MAX_CODE = 200       # characters kept of one code (QR text can be long; a code is a key, not a document)
_DIGITS = re.compile(r"\d+")


def upce_to_upca(code: str) -> str | None:
    """The UPC-A (12 digits) a UPC-E code (8 digits: number system 0 or 1, six digits, check) stands for."""
    if len(code) != 8 or not code.isdigit() or code[0] not in "01":
        return None
    ns, d, check = code[0], code[1:7], code[7]
    last = d[5]
    if last in "012":
        body = d[0:2] + last + "0000" + d[2:5]
    elif last == "3":
        body = d[0:3] + "00000" + d[3:5]
    elif last == "4":
        body = d[0:4] + "00000" + d[4]
    else:
        body = d[0:5] + "0000" + last
    return ns + body + check


def gtin_ok(digits: str) -> bool:
    """True when the last digit of an EAN/UPC/GTIN number is its right check digit (GS1 mod 10)."""
    body, check = digits[:-1], int(digits[-1])
    total = sum(int(c) * (3 if i % 2 == 0 else 1) for i, c in enumerate(reversed(body)))
    return (10 - total % 10) % 10 == check


def keys(code: str) -> list[str]:
    """The lookup keys of one code as written or read: an EAN-8/UPC-A/EAN-13/GTIN-14 number as 14 digits
    (so UPC-A 012345678905 and EAN-13 0012345678905 are one code; a UPC-E number also as its UPC-A), any
    other text (Code 128, QR) as it is, stripped. Empty list for an empty code."""
    code = code.strip()[:MAX_CODE]
    if not code:
        return []
    if _DIGITS.fullmatch(code) and len(code) in (8, 12, 13, 14):
        out = [code.zfill(14)]
        upca = upce_to_upca(code)
        if upca is not None and gtin_ok(upca):
            out.append(upca.zfill(14))
        return out
    return [code]


def split_codes(value: str | None) -> list[str]:
    """The codes of a ``barcode`` value: several separated by ``;``, blanks dropped, as written."""
    if not value:
        return []
    return [c.strip()[:MAX_CODE] for c in str(value).split(SEP) if c.strip()]


def check_codes(value: str | None) -> str | None:
    """Why a ``barcode`` value cannot be used (an EAN/UPC number with a wrong check digit), or None."""
    for c in split_codes(value):
        if _DIGITS.fullmatch(c) and len(c) in (8, 12, 13, 14) and not gtin_ok(c) and not (
                len(c) == 8 and upce_to_upca(c) and gtin_ok(upce_to_upca(c))):
            return f"barcode {c}: wrong check digit (the last digit); copy the number again from the pack"
    return None


def tidy(value: str) -> str:
    """A ``barcode`` value as stored: its codes joined by ``;`` ("" clears); CatalogError (400) for an EAN/UPC
    number with a wrong check digit."""
    problem = check_codes(value)
    if problem:
        raise CatalogError(problem)
    return SEP.join(split_codes(value))


def with_barcode(extra: dict | None, value: str) -> dict:
    """``extra`` (an item's other columns, kept) with its ``barcode`` set to ``value`` (``tidy``; "" drops
    it)."""
    out = {k: v for k, v in (extra or {}).items() if k != "barcode"}
    value = tidy(value)
    if value:
        out["barcode"] = value
    return out
