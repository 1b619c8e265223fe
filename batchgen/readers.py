"""Manifest files (YAML or CSV) -> raw items: each field's value as read, with its line. No meaning yet.

`manifest.py` validates and normalises what this module reads, and `expand.py` turns matrices and counts into
items. Problems go to a `problems.Collector`, never raised one by one: each is located by file, line (YAML: the
item's line; CSV: the row's first line) and field.

Hostile files are bounded by construction: the YAML tree is composed (not constructed) with PyYAML's safe
loader, and only walked two levels deep (a `matrix` three), so aliases (the "billion laughs") are never
expanded; merge keys are refused; nesting too deep for the composer is reported, not crashed on; every string is
checked to be writable as UTF-8 where it is read.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import schema
from .files import read_bounded
from .problems import NUL, UNENCODABLE, UNENCODABLE_HINT, Collector, unencodable, unknown_field_message

MAX_MANIFEST_BYTES = 512 * 1024 * 1024  # a 100,000-item manifest is ~20 MB; this is a sanity bound only
MAX_FIELDS_PER_ITEM = 64  # 14 fields exist; more than this is not a manifest item
MAX_LIST_ITEMS = 64  # a list field's items read (fields.MAX_LIST): more is reported as too many, not read

_YAML_NULL = "tag:yaml.org,2002:null"
YAML_STR = "tag:yaml.org,2002:str"


@dataclass(slots=True)
class Value:
    """A field's value as read: `text` is the literal text (None for YAML non-strings), `value` its type."""

    value: Any
    text: str | None
    line: int

    def as_read(self, kind: schema.Kind) -> Any:
        """What a field checks: the literal text where there is one (`16:9` is a base-60 integer to YAML, `1` an
        int, not a bool, and `1_0` or `+3` are not the plain digits an integer field takes)."""
        if self.text is None or (kind == "int" and type(self.value) not in (int, str)):
            return self.value  # `seed: 1.5` is described as the number it is
        return self.text


@dataclass(slots=True)
class RawItem:
    line: int
    label: str  # the item's id as given (shortened), or "#3" for the third item when it has none
    fields: dict[str, Value]


CheckDefaults = Callable[["RawItem"], object]


def read(
    path: Path, out: Collector, check_defaults: CheckDefaults, known: tuple[str, ...] = schema.MANIFEST_FIELDS
) -> list[RawItem] | None:
    """The file's items, `defaults:` merged in (after `check_defaults` has seen them), or None on a problem.

    `known` are the fields a CSV header may name (those of every model card a run knows)."""
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".csv"):
        out.add(None, f"unknown manifest type {suffix or '(no extension)'!r}: name it .yaml, .yml or .csv")
        return None
    data = read_bounded(path, MAX_MANIFEST_BYTES, "the file")
    if isinstance(data, str):
        out.add(None, data)
        return None
    text = _decode(data, out)
    if text is None:
        return None
    if not text.strip():
        out.add(None, "the file is empty: expected a list of items")
        return None
    if suffix == ".csv":
        return _read_csv(text, out, known)
    return _read_yaml(text, out, check_defaults)


def _decode(data: bytes, out: Collector) -> str | None:
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


_FAST = getattr(yaml, "__with_libyaml__", False)
# What libyaml reads otherwise than the pure-Python parser: it takes a tab inside a line (`prompt: a<TAB>b`), a
# byte-order mark inside the text and a comment right after a block scalar's `|` that the pure parser refuses, and
# places an explicit key's (`? key`) missing value on another line, and does not end a plain scalar in a flow
# collection at `?`. Such text goes to the pure parser.
_HEADER_COMMENT = re.compile(r"[|>][-+0-9]*#")


def _explicit_key(text: str) -> bool:
    """A `?` at a token's start (the text's beginning, after white space), or anywhere in text with a flow
    collection."""
    at = text.find("?")
    if at >= 0 and ("[" in text or "{" in text):
        return True  # in a flow collection the pure parser ends a plain scalar at `?` (`[a.png?s=1]`), libyaml not
    while at >= 0:
        if at == 0 or text[at - 1].isspace() or text[at - 1] in "[{,":
            return True
        at = text.find("?", at + 1)
    return False


def _lenient(text: str) -> bool:
    """Whether libyaml might read `text` otherwise than the pure-Python parser (each test a scan in C)."""
    body = text.removeprefix("\ufeff")
    return (
        "\t" in body
        or "\ufeff" in body
        or _explicit_key(body)
        or ("#" in body and _HEADER_COMMENT.search(body) is not None)
    )


def compose(text: str) -> yaml.Node | None:
    """The manifest's node tree: libyaml's parser when PyYAML has it (a tenth of the pure-Python parser's CPU; its
    nodes carry the same line numbers), the pure-Python one otherwise and for any text libyaml does not take,
    so that an error is always the pure-Python parser's, with the message and line the tests pin."""
    if _FAST and not _lenient(text):
        try:
            return yaml.compose(text, Loader=yaml.CSafeLoader)
        except (yaml.YAMLError, ValueError, RecursionError):  # UnicodeError is a ValueError
            pass
    return yaml.compose(text, Loader=yaml.SafeLoader)


def _read_yaml(text: str, out: Collector, check_defaults: CheckDefaults) -> list[RawItem] | None:
    try:
        root = compose(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        out.add(line, f"YAML syntax error: {_one_line(exc.problem or exc.context)}")
        return None
    except yaml.reader.ReaderError as exc:  # a control character YAML does not allow, such as DEL
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - text.rfind("\n", 0, exc.position)
        out.add(line, f"YAML does not allow the character U+{exc.character:04X} (column {column})")
        return None
    except yaml.YAMLError as exc:
        out.add(None, f"YAML error: {_one_line(exc)}")
        return None
    except RecursionError:
        out.add(None, "nested too deeply to be a manifest")
        return None
    if root is None:
        out.add(None, "the file is empty: expected a list of items")
        return None

    defaults: dict[str, Value] = {}
    items_node: yaml.Node | None = root
    if isinstance(root, yaml.MappingNode):
        items_node = None
        for key, value in _pairs(root, out, None):
            if key == "items":
                items_node = value
            elif key == "defaults":
                if isinstance(value, yaml.MappingNode):
                    defaults = _yaml_fields(value, out, None) or {}
                    check_defaults(RawItem(line_of(value), "defaults", defaults))
                elif not _is_null(value):
                    out.add(line_of(value), "defaults: expected a mapping of field: value")
            else:
                hint = " (a single item must still be inside a list)" if key in schema.MANIFEST_FIELDS else ""
                out.add(
                    line_of(key_node_of(root, key)),
                    f"unknown top-level key {schema.shorten(key)!r}: expected 'defaults' and 'items', "
                    f"or a list of items{hint}",
                )
        if items_node is None:
            out.add(line_of(root), "no 'items' list")
            return None
    if not isinstance(items_node, yaml.SequenceNode):
        out.add(line_of(items_node) if items_node is not None else None, "items: expected a list of items")
        return None
    if not items_node.value:
        out.add(line_of(items_node), "no items: the list is empty")
        return None
    if out.problems:
        return None  # a broken top level or defaults block would only repeat itself in every item

    raw: list[RawItem] = []
    for index, node in enumerate(items_node.value, start=1):
        label = f"#{index}"
        if not isinstance(node, yaml.MappingNode):
            out.add(line_of(node), "expected a mapping of field: value", label)
            continue
        for key_node, value_node in node.value:  # name the item by its id in every message, when it has one
            if key_node.value == "id" and isinstance(value_node, yaml.ScalarNode) and value_node.value:
                label = schema.shorten(value_node.value)
        fields = _yaml_fields(node, out, label)
        if fields is None:
            continue
        raw.append(RawItem(line_of(node), label, {**defaults, **fields}))
    return raw


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def _pairs(node: yaml.MappingNode, out: Collector, label: str | None) -> Iterator[tuple[str, yaml.Node]]:
    """The (key, value node) pairs of a mapping with string keys; reports other keys and repeats."""
    seen: set[str] = set()
    for key_node, value_node in node.value:
        line = line_of(node) if label is not None else line_of(key_node)  # an item's problems carry its line
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == "<<":
            out.add(line, "YAML merge keys (<<) are not supported; use 'defaults:'", label, "<<")
            continue
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != YAML_STR:
            out.add(line, f"a field name must be text; got {describe_node(key_node)}", label)
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


def _yaml_fields(node: yaml.MappingNode, out: Collector, label: str | None) -> dict[str, Value] | None:
    if len(node.value) > MAX_FIELDS_PER_ITEM:
        most = len(schema.MANIFEST_FIELDS)
        out.add(line_of(node), f"has {len(node.value)} fields; an item has at most {most}", label)
        return None
    fields: dict[str, Value] = {}
    writable = True
    for key, node_value in _pairs(node, out, label):
        # A matrix is a mapping of lists: kept as its node, for expand.py to walk (and bound) itself.
        value = Value(node_value, None, line_of(node_value)) if key == "matrix" else yaml_value(node_value)
        # Only YAML's escapes make text that UTF-8 cannot hold (CSV and wildcard files are decoded strictly).
        message = None
        if value.text is not None and "\0" in value.text:  # YAML's "\0" escape: refused as in the file itself
            message = NUL
        elif value.text is not None and not value.text.isascii() and (why := unencodable(value.text)):
            message = f"{UNENCODABLE} ({why}){UNENCODABLE_HINT}"
        if message is not None:
            if label is None:
                out.add(value.line, message, None, f"defaults.{key}")
            else:
                out.add(line_of(node), message, label, key)
            writable = False
        fields[key] = value
    return fields if writable else None  # the other checks would only repeat it ("not one of …")


_constructor = yaml.SafeLoader("")


def yaml_value(node: yaml.Node) -> Value:
    """A field value: never constructs containers, so aliases cannot expand."""
    line = line_of(node)
    if isinstance(node, yaml.SequenceNode):  # a list field (reference images): its scalars, one level only
        items = [n.value if isinstance(n, yaml.ScalarNode) else {} for n in node.value[: MAX_LIST_ITEMS + 1]]
        return Value(items, None, line)
    if isinstance(node, yaml.MappingNode):
        return Value({}, None, line)
    if node.tag == _YAML_NULL:
        return Value(None, None, line)
    if node.tag == YAML_STR:
        return Value(node.value, node.value, line)
    try:
        value = _constructor.construct_object(node)
    except (yaml.YAMLError, ValueError, OverflowError):
        value = node.value
    # Plain scalars keep their text too: `aspect_ratio: 16:9` is a base-60 integer to YAML 1.1.
    return Value(value, node.value, line)


def describe_node(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        return schema.describe(yaml_value(node).value)
    return "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _YAML_NULL


def line_of(node: yaml.Node) -> int:
    return node.start_mark.line + 1


# ---------------------------------------------------------------- CSV

MAX_CSV_CELL = 8 * 1024 * 1024  # larger than any field we accept, so a long cell is reported as too long


def _read_csv(text: str, out: Collector, known: tuple[str, ...]) -> list[RawItem] | None:
    if csv.field_size_limit() < MAX_CSV_CELL:
        csv.field_size_limit(MAX_CSV_CELL)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    raw: list[RawItem] = []
    header: list[str] | None = None
    index = 0
    start = 1
    try:
        for row in reader:
            line, start = start, reader.line_num + 1
            if not (row and row[0].strip()) and not any(cell.strip() for cell in row):  # (row[0]: most rows)
                continue
            if header is None:
                header = _csv_header(row, line, out, known)
                if header is None:
                    return None
                continue
            index += 1
            label = f"#{index}"
            if len(row) > len(header) and any(cell.strip() for cell in row[len(header) :]):
                out.add(line, f"row has {len(row)} cells but the header names {len(header)}", label)
                continue
            fields = {
                name: Value(cell, cell, line)
                for name, cell in zip(header, row, strict=False)
                if name and cell.strip() != ""
            }
            id_value = fields.get("id")
            if id_value is not None:
                text = id_value.text or ""
                label = schema.shorten(text)
            raw.append(RawItem(line, label, fields))
    except csv.Error as exc:
        out.add(reader.line_num or start, f"CSV error: {exc}")
        return None
    if header is None:
        out.add(None, "the file is empty: expected a header row and items")
        return None
    if not raw and not out.problems:
        out.add(1, "no items: the file has a header row only")
    return raw


def _csv_header(row: list[str], line: int, out: Collector, known: tuple[str, ...]) -> list[str] | None:
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
        elif name == "matrix":
            out.add(line, "a matrix needs YAML (a CSV row gets `count` only)", field=name)
            ok = False
        elif name not in known:
            out.add(line, unknown_field_message(name, known), field=name)
            ok = False
        seen.add(name)
    if "prompt" not in seen and ok:
        out.add(line, "the header has no 'prompt' column", field="prompt")
        ok = False
    return names if ok else None
