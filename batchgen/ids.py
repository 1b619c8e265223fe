"""Item ids: the grammar, ids derived from a request, and the ids of a matrix's cells and copies.

An id names an item in the ledger for ever, so every rule here is about stability: the same item gets the same
id on every run, and an edit that does not touch an item does not move its id.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MAX_ID = 100

# A value made of letters, digits and single spaces is its own token (spaces as '_'); anything else is a slug and
# a hash of the exact value. The two kinds can meet: `a b 648fa9b3` is written `a_b_648fa9b3`, which is also the
# slug and hash of `a_b` (a plain value can end in any 8 hex digits; a hash collision is only one way to meet).
# Changing the construction would move the ids of existing plain values ending in 8 hex digits (`shot 20240101`),
# and an id that moves is paid for again; so expand.py refuses two values of one axis with one token instead.
# Tokens hold no '-', which joins them, so cells of one item with distinct tokens cannot share an id.
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9]+(?: [A-Za-z0-9]+)*")
_ALNUM_RUN = re.compile(r"[A-Za-z0-9]+")
MAX_PLAIN_TOKEN = 32
_SLUG = 24
_HASH = 8  # 32 bits per value; two values of one axis that meet are a validation error, never a shared id
_LONG_HASH = 16  # 64 bits for the whole id when it must be shortened


def canonical_json(request: Mapping[str, Any]) -> str:
    """Canonical JSON of a request: sorted keys, no spaces."""
    return json.dumps(request, sort_keys=True, separators=(",", ":"))


def derive_id(canonical: str) -> str:
    """The id of an item that has none: the first 12 hex digits of SHA-256 of its canonical request."""
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def id_problem(text: str | None, shown: Any) -> str | None:
    """Why a given id is not an id, or None."""
    if text is not None and ID_PATTERN.fullmatch(text):
        return None
    from .schema import describe

    return (
        "expected letters, digits, '.', '_' or '-' (at most 100, starting with a letter or digit); "
        f"got {describe(shown)}"
    )


def token(value: str) -> str:
    """The part of a cell's id that stands for one axis value: the value when it is plain, else slug + hash."""
    if len(value) <= MAX_PLAIN_TOKEN and _PLAIN_VALUE.fullmatch(value):
        return value.replace(" ", "_")
    slug = "_".join(_ALNUM_RUN.findall(value))[:_SLUG]
    return f"{slug}_{hashlib.sha256(value.encode('utf-8')).hexdigest()[:_HASH]}"


def fit(text: str) -> str:
    """`text` if it is short enough for an id, else its head and a hash of all of it (never a bare truncation)."""
    if len(text) <= MAX_ID:
        return text
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:_LONG_HASH]
    return f"{text[: MAX_ID - _LONG_HASH - 1].rstrip('-')}-{digest}"


def cell_id(prefix: str, tokens: Sequence[str]) -> str:
    """A cell's id: the prefix, then one token per axis in the axes' name order."""
    return fit("-".join((prefix, *tokens))) if tokens else prefix


def copy_id(base: str, copy: int) -> str:
    """Copy 1 keeps the cell's id; copies 2, 3, … add -2, -3, … (so adding `count` never pays for copy 1 again)."""
    return base if copy == 1 else fit(f"{base}-{copy}")


# Zero-width space, non-joiner, joiner, word joiner, BOM: invisible, so `fox` and `fox\u200d` look like one value.
_INVISIBLE = dict.fromkeys((0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF))


def identity(value: object) -> object:
    """What makes two values one request (ATTACKS 7): text in NFC, without zero-width characters, stripped. Used
    only to find duplicates: what is sent, and every id, stays exactly as written (an id that moved is paid for
    again)."""
    if not isinstance(value, str):
        return value
    if value.isascii():
        return value.strip()
    return unicodedata.normalize("NFC", value.translate(_INVISIBLE)).strip()
