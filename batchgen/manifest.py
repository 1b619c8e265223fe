"""Manifest files (YAML or CSV) -> validated, normalised, immutable `Item` records.

Nothing here touches the network or the ledger. Every problem in a file is collected and raised at once as one
`ManifestError`, each located by file, line (YAML: the item's line; CSV: the row's first line) and field.

Hostile files are bounded by construction: the YAML tree is composed (not constructed) with PyYAML's safe
loader, and only walked two levels deep, so aliases (the "billion laughs") are never expanded; merge keys are
refused; nesting too deep for the composer is reported, not crashed on; text fields are capped at
`schema.MAX_TEXT` characters.
"""

from __future__ import annotations

import csv
import hashlib
import io
import ipaddress
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import yaml

from . import schema
from .errors import ManifestError, Problem

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MAX_MANIFEST_BYTES = 512 * 1024 * 1024  # a 100,000-item manifest is ~20 MB; this is a sanity bound only
MAX_FIELDS_PER_ITEM = 64  # 12 fields exist; more than this is not a manifest item
MAX_PROBLEMS = 1000  # beyond this many, the rest are counted, not listed

_YAML_NULL = "tag:yaml.org,2002:null"
_YAML_STR = "tag:yaml.org,2002:str"


@dataclass(frozen=True, slots=True)
class Item:
    """One validated manifest item: its id, its normalised request, and where it came from."""

    id: str
    model: str
    input: Mapping[str, Any]
    callback_url: str | None
    file: str
    line: int

    @property
    def canonical(self) -> str:
        """The request as canonical JSON: equal requests have equal strings."""
        return canonical_json(self.request)

    def same_request(self, request: Mapping[str, Any] | None) -> bool:
        """Whether a request (as the ledger keeps it) is this item's; cheaper than comparing canonical JSON."""
        return (
            isinstance(request, Mapping) and request.get("model") == self.model and request.get("input") == self.input
        )

    @property
    def request(self) -> dict[str, Any]:
        """The request body as sent to createTask (without callBackUrl), as a fresh dict."""
        return {"model": self.model, "input": dict(self.input)}


def canonical_json(request: Mapping[str, Any]) -> str:
    """Canonical JSON of a request: sorted keys, no spaces."""
    return json.dumps(request, sort_keys=True, separators=(",", ":"))


def derive_id(canonical: str) -> str:
    """The id of an item that has none: the first 12 hex digits of SHA-256 of its canonical request."""
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


@dataclass(slots=True)
class _Value:
    """A field's value as read: `text` is the literal text (None for YAML non-strings), `value` its type."""

    value: Any
    text: str | None
    line: int


@dataclass(slots=True)
class _RawItem:
    line: int
    label: str
    fields: dict[str, _Value]


class _Collector:
    """Gathers problems for one file, up to MAX_PROBLEMS listed."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self.dropped = 0

    def add(self, line: int | None, message: str, item: str | None = None, field: str | None = None) -> None:
        if field is not None and (len(field) > 60 or not field.isprintable()):
            field = repr(schema.shorten(field))  # a key with a newline or a megabyte of text: one short line
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(self.file, line, message, item, field))
        else:
            self.dropped += 1

    def raise_if_any(self) -> None:
        if self.dropped:
            self.problems.append(Problem(self.file, None, f"… and {self.dropped} more problems not listed"))
        if self.problems:
            raise ManifestError(self.problems)


def load(path: str | Path) -> list[Item]:
    """Read, validate and normalise one manifest file. Raises ManifestError naming every problem."""
    path = Path(path)
    name = str(path)
    if why := unencodable(name):  # the ledger records the name, and the journal is UTF-8
        out = _Collector(name.encode("utf-8", "backslashreplace").decode("ascii"))
        out.add(None, f"the file name cannot be encoded as UTF-8 ({why}): rename the file")
        out.raise_if_any()
    out = _Collector(name)
    raw_items = _read(path, out)
    out.raise_if_any()
    items = _validate(raw_items, out)
    out.raise_if_any()
    return items


def _read(path: Path, out: _Collector) -> list[_RawItem] | None:
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".csv"):
        out.add(None, f"unknown manifest type {suffix or '(no extension)'!r}: name it .yaml, .yml or .csv")
        return None
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            out.add(None, f"file is {size:,} bytes; the limit is {MAX_MANIFEST_BYTES:,}")
            return None
        data = path.read_bytes()
    except OSError as exc:
        out.add(None, f"cannot read the file: {exc.strerror or exc}")
        return None
    text = _decode(data, out)
    if text is None:
        return None
    if not text.strip():
        out.add(None, "the file is empty: expected a list of items")
        return None
    if suffix == ".csv":
        return _read_csv(text, out)
    return _read_yaml(text, out)


def unencodable(text: str) -> str | None:
    """Why `text` cannot be written as UTF-8 (the journal's and the ledger's encoding), or None.

    YAML's `"\\ud83d"` escapes make lone surrogates (json.dump writes an emoji as such a pair, and YAML does not
    join pairs); Python keeps undecodable bytes of a file name as surrogates too."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"a lone surrogate, U+{ord(text[exc.start]):04X}, at character {exc.start + 1}"
    return None


UNENCODABLE = "text that cannot be encoded as UTF-8"
UNENCODABLE_HINT = "; write the character itself, or one \\U0001F600-style escape, not a \\ud83d\\ude00 pair"


def _decode(data: bytes, out: _Collector) -> str | None:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        out.add(
            line, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save the manifest as UTF-8"
        )
        return None
    nul = text.find("\0")
    if nul >= 0:
        out.add(text.count("\n", 0, nul) + 1, "contains a NUL character: this is not a text manifest")
        return None
    return text


# ---------------------------------------------------------------- YAML


def _read_yaml(text: str, out: _Collector) -> list[_RawItem] | None:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        out.add(line, f"YAML syntax error: {exc.problem or exc.context}")
        return None
    except yaml.YAMLError as exc:
        out.add(None, f"YAML error: {exc}")
        return None
    except RecursionError:
        out.add(None, "nested too deeply to be a manifest")
        return None
    if root is None:
        out.add(None, "the file is empty: expected a list of items")
        return None

    defaults: dict[str, _Value] = {}
    items_node: yaml.Node | None = root
    if isinstance(root, yaml.MappingNode):
        items_node = None
        for key, value in _pairs(root, out, None):
            if key == "items":
                items_node = value
            elif key == "defaults":
                if isinstance(value, yaml.MappingNode):
                    defaults = _yaml_fields(value, out, None) or {}
                    _build(_RawItem(_line(value), "defaults", defaults), out, defaults=True)
                elif not _is_null(value):
                    out.add(_line(value), "defaults: expected a mapping of field: value")
            else:
                hint = " (a single item must still be inside a list)" if key in schema.ALL_FIELDS else ""
                out.add(
                    _line(key_node_of(root, key)),
                    f"unknown top-level key {schema.shorten(key)!r}: expected 'defaults' and 'items', "
                    f"or a list of items{hint}",
                )
        if items_node is None:
            out.add(_line(root), "no 'items' list")
            return None
    if not isinstance(items_node, yaml.SequenceNode):
        out.add(_line(items_node), "items: expected a list of items")
        return None
    if not items_node.value:
        out.add(_line(items_node), "no items: the list is empty")
        return None
    if out.problems:
        return None  # a broken top level or defaults block would only repeat itself in every item

    raw: list[_RawItem] = []
    for index, node in enumerate(items_node.value, start=1):
        label = f"#{index}"
        if not isinstance(node, yaml.MappingNode):
            out.add(_line(node), "expected a mapping of field: value", label)
            continue
        for key_node, value_node in node.value:  # name the item by its id in every message, when it has one
            if key_node.value == "id" and isinstance(value_node, yaml.ScalarNode) and value_node.value:
                label = repr(schema.shorten(value_node.value))
        fields = _yaml_fields(node, out, label)
        if fields is None:
            continue
        raw.append(_RawItem(_line(node), label, {**defaults, **fields}))
    return raw


def _pairs(node: yaml.MappingNode, out: _Collector, label: str | None) -> Iterator[tuple[str, yaml.Node]]:
    """The (key, value node) pairs of a mapping with string keys; reports other keys and repeats."""
    seen: set[str] = set()
    for key_node, value_node in node.value:
        line = _line(node) if label is not None else _line(key_node)  # an item's problems carry its line
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == "<<":
            out.add(line, "YAML merge keys (<<) are not supported; use 'defaults:'", label, "<<")
            continue
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _YAML_STR:
            out.add(line, f"a field name must be text; got {_describe_node(key_node)}", label)
            continue
        key = key_node.value
        if why := unencodable(key):
            out.add(line, f"{UNENCODABLE} ({why}){UNENCODABLE_HINT}", label, key)
            continue
        if key in seen:
            out.add(line, "given twice", label, key)
            continue
        seen.add(key)
        yield key, value_node


def key_node_of(node: yaml.MappingNode, key: str) -> yaml.Node:
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            return key_node
    return node


def _yaml_fields(node: yaml.MappingNode, out: _Collector, label: str | None) -> dict[str, _Value] | None:
    if len(node.value) > MAX_FIELDS_PER_ITEM:
        out.add(_line(node), f"has {len(node.value)} fields; an item has at most {len(schema.ALL_FIELDS)}", label)
        return None
    fields: dict[str, _Value] = {}
    for key, value in _pairs(node, out, label):
        fields[key] = _yaml_value(value)
    return fields


_constructor = yaml.SafeLoader("")


def _yaml_value(node: yaml.Node) -> _Value:
    """A field value: never constructs containers, so aliases cannot expand."""
    line = _line(node)
    if isinstance(node, yaml.SequenceNode):
        return _Value([], None, line)
    if isinstance(node, yaml.MappingNode):
        return _Value({}, None, line)
    if node.tag == _YAML_NULL:
        return _Value(None, None, line)
    if node.tag == _YAML_STR:
        return _Value(node.value, node.value, line)
    try:
        value = _constructor.construct_object(node)
    except (yaml.YAMLError, ValueError, OverflowError):
        value = node.value
    # Plain scalars keep their text too: `aspect_ratio: 16:9` is a base-60 integer to YAML 1.1.
    return _Value(value, node.value, line)


def _describe_node(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        return schema.describe(_yaml_value(node).value)
    return "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _YAML_NULL


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


# ---------------------------------------------------------------- CSV

MAX_CSV_CELL = 8 * 1024 * 1024  # larger than any field we accept, so a long cell is reported as too long


def _read_csv(text: str, out: _Collector) -> list[_RawItem] | None:
    if csv.field_size_limit() < MAX_CSV_CELL:
        csv.field_size_limit(MAX_CSV_CELL)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    raw: list[_RawItem] = []
    header: list[str] | None = None
    index = 0
    start = 1
    try:
        for row in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = _csv_header(row, line, out)
                if header is None:
                    return None
                continue
            index += 1
            label = f"#{index}"
            if len(row) > len(header) and any(cell.strip() for cell in row[len(header) :]):
                out.add(line, f"row has {len(row)} cells but the header names {len(header)}", label)
                continue
            fields = {
                name: _Value(cell, cell, line)
                for name, cell in zip(header, row, strict=False)
                if name and cell.strip() != ""
            }
            id_value = fields.get("id")
            if id_value is not None:
                label = repr(schema.shorten(id_value.text or ""))
            raw.append(_RawItem(line, label, fields))
    except csv.Error as exc:
        out.add(reader.line_num or start, f"CSV error: {exc}")
        return None
    if header is None:
        out.add(None, "the file is empty: expected a header row and items")
        return None
    if not raw and not out.problems:
        out.add(1, "no items: the file has a header row only")
    return raw


def _csv_header(row: list[str], line: int, out: _Collector) -> list[str] | None:
    names = [cell.strip() for cell in row]
    while names and not names[-1]:
        names.pop()
    seen: set[str] = set()
    ok = True
    for position, name in enumerate(names, start=1):
        if not name:
            out.add(line, f"header cell {position} is empty: every column needs a field name")
            ok = False
        elif name in seen:
            out.add(line, "column named twice in the header", field=name)
            ok = False
        elif name not in schema.ALL_FIELDS:
            out.add(line, _unknown_field_message(name), field=name)
            ok = False
        seen.add(name)
    if "prompt" not in seen and ok:
        out.add(line, "the header has no 'prompt' column", field="prompt")
        ok = False
    return names if ok else None


# ---------------------------------------------------------------- validation


def _unknown_field_message(name: str) -> str:
    hint = schema.suggest(name)
    return (
        f"unknown field; did you mean {hint!r}?"
        if hint
        else f"unknown field; known fields are {', '.join(schema.ALL_FIELDS)}"
    )


def _validate(raw_items: list[_RawItem] | None, out: _Collector) -> list[Item]:
    items: list[Item] = []
    by_id: dict[str, Item] = {}
    by_request: dict[str, Item] = {}
    for raw in raw_items or ():
        item = _build(raw, out)
        if item is None:
            continue
        key = _request_key(item)
        twin = by_request.get(key)
        if twin is not None and "id" not in raw.fields:
            out.add(
                raw.line,
                f"the same request as the item on line {twin.line} (id {twin.id!r}); "
                "give one of them an id, or remove it",
                raw.label,
            )
            continue
        first = by_id.get(item.id)
        if first is not None:
            out.add(raw.line, f"id {item.id!r} is already used by the item on line {first.line}", raw.label, "id")
            continue
        by_request.setdefault(key, item)
        by_id[item.id] = item
        items.append(item)
    return items


def _build(raw: _RawItem, out: _Collector, *, defaults: bool = False) -> Item | None:
    """Check one item's fields (or, with `defaults`, the defaults block) and build its record."""
    before = len(out.problems) + out.dropped

    def bad(name: str, message: str) -> None:
        if defaults:
            out.add(raw.fields[name].line if name in raw.fields else raw.line, message, None, f"defaults.{name}")
        else:
            out.add(raw.line, message, raw.label, name)

    def given(name: str) -> _Value | None:
        value = raw.fields.get(name)
        return value if value is not None and value.value is not None else None

    unwritable = False
    for name, value in raw.fields.items():
        if name not in schema.ALL_FIELDS:
            bad(name, _unknown_field_message(name))
        elif value.text is not None and (why := unencodable(value.text)):
            bad(name, f"{UNENCODABLE} ({why}){UNENCODABLE_HINT}")
            unwritable = True
    if unwritable:
        return None  # the checks below would only repeat it ("not a valid id", "not one of …")

    item_id: str | None = None
    if (value := given("id")) is not None:
        if defaults:
            bad("id", "an id cannot be a default: each item has its own")
        elif value.text is None or not ID_PATTERN.fullmatch(value.text):
            shown = value.value if value.text is None else value.text
            bad(
                "id",
                "expected letters, digits, '.', '_' or '-' (at most 100, starting with a letter or "
                f"digit); got {schema.describe(shown)}",
            )
        else:
            item_id = value.text

    if (value := given("model")) is not None and (value.text or "").strip() != schema.MODEL:
        bad("model", f"only {schema.MODEL!r} is supported; got {schema.describe(value.text or value.value)}")

    callback: str | None = None
    if (value := given("callBackUrl")) is not None:
        callback = (value.text or "").strip()
        if message := check_callback_url(callback):
            bad("callBackUrl", message)

    normalised: dict[str, Any] = {}
    for name, value in raw.fields.items():  # the fields given, not every known one: 100,000 items add up
        spec = schema.INPUT_FIELDS.get(name)
        if spec is None or value.value is None:
            continue
        # The literal text where there is one: `16:9` is a base-60 integer to YAML, and `1` an int, not a bool.
        as_read = value.text if spec.kind != "int" and value.text is not None else value.value
        try:
            normalised[name] = spec.normalise(as_read)
        except schema.FieldError as exc:
            bad(name, str(exc))
    if not defaults and given("prompt") is None:
        bad("prompt", "required, and missing")

    if defaults or len(out.problems) + out.dropped > before:
        return None
    return Item(
        id=item_id or derive_id(canonical_json({"model": schema.MODEL, "input": normalised})),
        model=schema.MODEL,
        input=MappingProxyType(normalised),
        callback_url=callback,
        file=out.file,
        line=raw.line,
    )


def _request_key(item: Item) -> tuple[Any, ...]:
    """A hashable stand-in for the canonical request (values are str, int or bool: all hashable)."""
    return item.model, tuple(sorted(item.input.items()))


def check_callback_url(url: str) -> str | None:
    """Why a callback URL is unacceptable, or None: https, or plain http to a loopback address only."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return f"not a valid URL: {schema.describe(url)}"
    if parts.scheme == "https" and host:
        return None
    if parts.scheme == "http" and host and is_loopback(host):
        return None
    if parts.scheme == "http" and host:
        return "must be https:// (plain http:// is allowed only to a loopback address)"
    return f"expected an https:// URL; got {schema.describe(url)}"


def is_loopback(host: str) -> bool:
    """Whether a host name or address is this machine's loopback."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
