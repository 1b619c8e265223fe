"""results.json parsed in pieces: the same document `json.loads` makes of the whole file, without ever holding the
whole text beside the records it becomes (a 100,000-item ledger's text is ~50 MB), and with the few values that
repeat from record to record (states, times, models) held once.

The snapshot writer (store.py) lays the file out at one space per level, so the items object is
`\\n "items": {` … `\\n  }\\n }` and two records meet at `\\n  },\\n  "`. A raw newline is never inside a JSON
string, so such a separator is always structure, never text. The file is read a block at a time, cut at the last
separator of the block, and each run of whole records is parsed as an object of its own; the document around the
items is parsed with an empty object in their place. Every piece must be valid JSON on its own, which it is only
when the cut fell between two records of the items object (a cut anywhere else leaves a brace unbalanced). A
file laid out any other way — edited by hand, a byte-order mark, damaged — is parsed whole, exactly as before:
the pieces are a faster way to the same result, never a different reading.

One difference from `json.loads`, in both ways: a key twice in one object is refused (DuplicateKey), never read
as the later one. An item id written twice, a second "items", a record with two "state"s: json.loads would keep
the later value silently, and a paid item reset to pending by a later record would be created (paid for) again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .files import TooLarge, open_regular

if TYPE_CHECKING:
    from .records import Record  # records imports this module

BLOCK = 1 << 20
_HEAD = 1 << 16  # the fields before the items are a few hundred bytes
_ITEMS = b'\n "items": {'
_BETWEEN = b'\n  },\n  "'  # one record's end and the next one's id
_CLOSE = 4  # len(b'\n  }'): a record's end, kept with its piece
_END = b"\n  }\n }"  # the last record's end and the items object's
_KEY = b'"items"'
_SHARED = ("state", "submitted_at", "finished_at")  # values many records repeat: held once
_SHORT = 24  # ... and short texts of a request


class DuplicateKey(ValueError):
    """A key twice in one object: the document is damaged (which value was meant is not knowable)."""

    def __init__(self, key: str, where: str, line: int | None = None) -> None:
        at = f" (line {line})" if line is not None else ""
        super().__init__(f"the key {json.dumps(key, ensure_ascii=False)} appears twice {where}{at}")
        self.key = key


class _Twice(ValueError):
    """A duplicate key met on the way in pieces: the whole parse then says where."""


def read(path: Path, limit: int, written: object = None) -> Any:
    """`read_stamped`'s document."""
    return read_stamped(path, limit, written)[0]


def read_stamped(path: Path, limit: int, written: object = None) -> tuple[Any, bool]:
    """The JSON document in the file at `path`: what `json.loads` of its text (UTF-8, an optional BOM) gives,
    raising what it raises (ValueError, UnicodeDecodeError, RecursionError; OSError for the file: files.NotRegular
    for a FIFO or a device planted at its name, files.TooLarge past `limit`), and DuplicateKey (a ValueError) for
    a key twice in one object.

    `written`: the `stamp` the writer took of the file it made (its journal's header keeps it). The file opened
    still bearing it is that file, which holds no key twice (the writer's layout cannot), so its pieces are read
    without looking for one: a quarter of the read's time for 100,000 items. Any other file — edited, copied,
    restored, replaced — is read key by key. The flag: whether the file read was the one `written` describes."""
    with open_regular(path, limit) as handle:
        stamped = written is not None and _identity(os.fstat(handle.fileno())) == written
        document = _in_pieces(handle, BLOCK, strict=not stamped)
        if document is None:
            handle.seek(0)
            data = handle.read(limit + 1)
            if len(data) > limit:
                raise TooLarge(None)
            text = data.decode("utf-8-sig")
            del data  # the bytes freed before parsing: a 100,000-item ledger's peak is ~50 MB lower
            document = strict_loads(text)
    return document, stamped


def stamp(path: Path) -> list[int]:
    """What tells the file just written at `path` from any other put there since: inode, size, modification and
    change times (ns). The change time because no tool can set it back: `touch -r`, `cp -p` onto the file, `rsync
    -t --inplace` restore the modification time of a file written in place (the kernel sets the change time at
    every write, and at a chmod or a link: the file is then merely read key by key)."""
    return _identity(os.stat(path))


def _identity(info: os.stat_result) -> list[int]:
    return [info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]


def journal_header(generation: int, written: list[int] | None = None) -> bytes:
    """A journal's first line: the snapshot generation its records follow, and that snapshot's stamp."""
    return json.dumps({"base": generation, "snapshot": written} if written else {"base": generation}).encode() + b"\n"


def strict_loads(text: str | bytes) -> Any:
    """`json.loads(text)`, but DuplicateKey for a key twice in one object (where, and the line when it can say)."""
    twice: list[tuple[str, dict[str, Any]]] = []

    def pairs(found: list[tuple[str, Any]]) -> dict[str, Any]:
        made = dict(found)
        if len(made) != len(found) and not twice:
            seen: set[str] = set()
            for key, _ in found:
                if key in seen:
                    twice.append((key, made))
                    break
                seen.add(key)
        return made

    document = json.loads(text, object_pairs_hook=pairs)
    if twice:
        key, where = twice[0]
        raise _located(text, key, where, document)
    return document


def _located(text: str | bytes, key: str, where: dict[str, Any], document: Any) -> DuplicateKey:
    """The first duplicate met, said with the object it is in: the top level, the items, an item's record (of a
    snapshot's items, or a journal line's)."""
    top = document if type(document) is dict else {}
    items = top.get("items")
    if where is top:
        return DuplicateKey(key, "at the top level", _line(text, key, 1))
    if where is items:
        return DuplicateKey(key, 'in "items" (the same item id twice)', _line(text, key, 2))
    records = items if type(items) is dict else {top.get("id"): top.get("record")}
    for item_id, record in records.items():
        try:
            found = type(record) is dict and _holds(record, where)
        except RecursionError:  # nested deeper than a record is: said without its item
            break
        if found:
            inner = "" if record is where else " (in one of its fields)"
            return DuplicateKey(key, f"in item {json.dumps(item_id, ensure_ascii=False)}'s record{inner}")
    return DuplicateKey(key, "in one object")


def _holds(value: Any, where: dict[str, Any]) -> bool:
    if value is where:
        return True
    inner = value.values() if type(value) is dict else value if type(value) is list else ()
    return any(_holds(v, where) for v in inner)


def _line(text: str | bytes, key: str, indent: int) -> int | None:
    """The line of the key's second occurrence at the writer's indent for its level, if it is written so."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    mark = b"\n" + b" " * indent + json.dumps(key, ensure_ascii=False).encode("utf-8", "surrogatepass") + b":"
    first = data.find(mark)
    second = data.find(mark, first + 1) if first >= 0 else -1
    return data.count(b"\n", 0, second) + 2 if second >= 0 else None


def pieces(path: Path, block: int = BLOCK) -> dict[str, Any] | None:
    """The document read in pieces of about `block` bytes, or None when the file is not laid out as the writer
    lays it out (or is not valid JSON, or has a key twice: the whole parse then says why)."""
    with path.open("rb") as handle:
        return _in_pieces(handle, block)


def _in_pieces(handle: BinaryIO, block: int, strict: bool = True) -> dict[str, Any] | None:
    buffer = b""
    while (at := buffer.find(_ITEMS)) < 0 or len(buffer) < at + len(_ITEMS) + 4:
        more = handle.read(block)
        if not more or len(buffer) > _HEAD:
            return None
        buffer += more
    head = buffer[: at + len(_ITEMS) - 1]  # through `"items": `
    rest = buffer[at + len(_ITEMS) :]
    if not head.startswith(b"{") or not rest.startswith(b'\n  "') or head.count(_KEY) != 1:
        return None  # no items, or another "items" before them: the whole parse
    items: dict[str, Any] = {}
    shared: dict[str, str] = {}
    try:
        while (end := rest.find(_END)) < 0:
            cut = rest.rfind(_BETWEEN)
            if cut >= 0:
                _add(items, rest[: cut + _CLOSE], shared, strict)
                rest = rest[cut + _CLOSE + 1 :]  # from the newline before the next record's id
            more = handle.read(block)
            if not more:
                return None
            rest += more
        _add(items, rest[: end + _CLOSE], shared, strict)
        tail = rest[end + len(_END) :] + handle.read()
        if _KEY in tail:
            return None
        keys = [0]  # keys that read "items" however written (`"\\u0069tems"` too), at any depth
        document = json.loads(
            (head + b"{}" + tail).decode("utf-8"), object_pairs_hook=lambda pairs: _pairs(pairs, keys)
        )
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; _Twice: the whole parse says where
        return None
    if not isinstance(document, dict) or document.get("items") != {} or keys[0] != 1:
        return None  # another "items" (escaped) would win over, or be, the one the pieces were cut from
    document["items"] = items
    return document


def _pairs(pairs: list[tuple[str, Any]], keys: list[int]) -> dict[str, Any]:
    """An object as `json.loads` makes it, its "items" keys counted; _Twice for a key twice."""
    keys[0] += sum(1 for key, _ in pairs if key == "items")
    return _unique(pairs)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    made = dict(pairs)
    if len(made) != len(pairs):
        raise _Twice
    return made


def _add(items: dict[str, Any], piece: bytes, shared: dict[str, str], strict: bool = True) -> None:
    """Parse a run of whole records (`"id": {…},\\n  "id": {…}`) into `items`; _Twice for a key twice anywhere
    (`strict`; else only for an id of an earlier piece)."""
    records = json.loads("{" + piece.decode("utf-8") + "}", object_pairs_hook=_unique if strict else None)
    for record in records.values():
        if type(record) is dict:
            for name in _SHARED:
                value = record.get(name)
                if type(value) is str:
                    record[name] = shared.setdefault(value, value)
            request = record.get("request")
            if type(request) is dict:
                _share(request, shared)
                values = request.get("input")
                if type(values) is dict:
                    _share(values, shared)
    before = len(items)
    items.update(records)
    if len(items) != before + len(records):
        raise _Twice  # an id of an earlier piece


def _share(values: dict[str, Any], shared: dict[str, str]) -> None:
    """Short texts (a model, an aspect ratio, a format) held once; a prompt is one record's own."""
    for name, value in values.items():
        if type(value) is str and len(value) <= _SHORT:
            values[name] = shared.setdefault(value, value)


# ---------------------------------------------------------------- the layout written (store.py's snapshot)

TEXTS_KEPT = 20_000  # records whose snapshot text is kept for the next snapshot: a small ledger's (~12 MB at most)
_ITEMS_AT = '\n "items": {}'
_INDENTED = json.JSONEncoder(ensure_ascii=False, indent=1)


def layout(document: dict[str, Any], items: dict[str, Record], texts: dict[str, tuple[Record, str]]) -> Iterator[str]:
    """The text `json.JSONEncoder(ensure_ascii=False, indent=1)` makes of `document` with `items` as its "items",
    byte for byte (the pieces reader above reads that layout back), without encoding again a record encoded for
    the last snapshot: `texts` keeps each record's text with the record itself, and a record is never changed in
    place (every transition writes a new one: ledger.py), so the same object has the same text. A run's snapshots
    every few seconds re-encoded every record each time."""
    head, tail = _INDENTED.encode(document).split(_ITEMS_AT)  # a newline is structure only
    yield head + '\n "items": '
    if not items:
        yield "{}"
    keep = len(items) <= TEXTS_KEPT
    if not keep:
        texts.clear()
    separator = "{\n  "
    for item_id, record in items.items():
        known = texts.get(item_id)
        if known is not None and known[0] is record:
            text = known[1]
        else:
            text = _record_text(record)
            if keep:
                texts[item_id] = (record, text)
        yield separator + json.dumps(item_id, ensure_ascii=False) + ": " + text
        separator = ",\n  "
    if items:
        yield "\n }"
    yield tail


def _record_text(record: Record) -> str:
    """A record's text two levels in, as the indenting encoder writes it there."""
    try:
        return _indented(record, "  ")
    except (_Other, RecursionError):  # a float, a tuple, a key not a string...: the encoder's own (slower) way
        # One level down, two levels in: each line after the first indented by two more spaces.
        return _INDENTED.encode(record).replace("\n", "\n  ")


class _Other(Exception):
    """A value `_indented` leaves to the encoder."""


_QUOTED = json.encoder.encode_basestring  # the encoder's own (C) quoting of a string, ensure_ascii=False


def _indented(value: Any, indent: str) -> str:
    """`value` as JSONEncoder(ensure_ascii=False, indent=1) writes it at `indent`, for the types a record holds
    (strings, numbers, None, booleans, lists, objects with string keys): the pure-Python encoder's generators cost
    ~3 times as much."""
    kind = type(value)
    if kind is str:
        return _QUOTED(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if kind is int:
        return int.__repr__(value)
    if kind is float and value - value == 0:  # finite (NaN and the infinities: the encoder's)
        return float.__repr__(value)
    inner = indent + " "
    if kind is dict:
        if not value:
            return "{}"
        if any(type(key) is not str for key in value):
            raise _Other
        fields = [_QUOTED(key) + ": " + _indented(item, inner) for key, item in value.items()]
        return "{\n" + inner + (",\n" + inner).join(fields) + "\n" + indent + "}"
    if kind is list:
        if not value:
            return "[]"
        return "[\n" + inner + (",\n" + inner).join([_indented(item, inner) for item in value]) + "\n" + indent + "]"
    raise _Other
