"""Matrices, counts and wildcard files: one manifest item -> the items of its cells, with ids that stay put.

    - id: zoo
      prompt: "A {animal} in {place}, {style}"
      matrix: {animal: [fox, owl], place: [snow, "a pine forest"], style: {file: styles.txt}}
      count: 2
      seed: 7

Braces mean something only in an item with a `matrix` (an older prompt with `{…}` in it keeps its request and
id); there `{axis}` in any field is filled from the cell and `{{`/`}}` are literal braces. Every cell x count is
one item: its id is the prefix (the item's id, else one derived from the item without `matrix` and `count`), one
token per axis in the axes' name order (ids.token), and `-2`, `-3` … for copies after the first, so adding a
value adds only its cells, removing one retires only its cells, and reordering values or axes moves nothing.
Copies of an item with `seed: S` get seeds S, S+1, …. Values are validated after substitution, like any item's.

The size of an expansion is known from the axes' lengths before any cell is made, and refused past MAX_ITEMS.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import MappingProxyType
from typing import Any

import yaml

from . import ids, models, schema
from .files import read_bounded
from .problems import NUL, UNENCODABLE, UNENCODABLE_HINT, unencodable
from .readers import (
    MAX_MANIFEST_BYTES,
    YAML_STR,
    RawItem,
    Value,
    describe_node,
    line_of,
)

MAX_ITEMS = 100_000  # items a manifest may expand to: a night's work many times over, and a ledger that loads fast
MAX_AXES = 32
MAX_WILDCARD_BYTES = 64 * 1024 * 1024
COUNT = schema.InputField("count", "int", minimum=1, maximum=MAX_ITEMS)
_AXIS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_LINE_END = re.compile(r"\r\n|\r|\n")
_BRACES = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")

Report = Callable[[int, str, str], None]  # (line, field, message) of one problem of the item
Template = tuple[tuple[str, str | None], ...]  # (literal text, then the axis whose value follows it, or None)
NO_CELL: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Axis:
    name: str
    values: tuple[str, ...]
    tokens: tuple[str, ...]  # the id token of each value
    line: int


@dataclass(frozen=True, slots=True)
class Expanded:
    """One item of an expansion, not validated yet: its id, its fields after substitution, its cell and copy."""

    id: str
    fields: dict[str, Value]
    cell: Mapping[str, str]
    copy: int


def expands(raw: RawItem) -> bool:
    return "matrix" in raw.fields or "count" in raw.fields


class TemplateError(ValueError):
    pass


def parse_template(text: str, axes: Collection[str]) -> Template:
    """`text` as literal pieces and placeholders; raises TemplateError naming the first bad brace."""
    parts: list[tuple[str, str | None]] = []
    literal: list[str] = []
    position = 0
    for match in _BRACES.finditer(text):
        literal.append(text[position : match.start()])
        position = match.end()
        found, name = match.group(), match.group(1)
        if found in ("{{", "}}"):
            literal.append(found[0])
        elif name is not None and _AXIS_NAME.fullmatch(name):
            if name not in axes:
                raise TemplateError(f"{{{name}}} has no axis in the matrix (axes: {', '.join(sorted(axes))})")
            parts.append(("".join(literal), name))
            literal = []
        else:
            raise TemplateError(
                f"{schema.shorten(found)!r} at character {match.start() + 1} is not a placeholder: "
                "write {{ and }} for a literal brace"
            )
    literal.append(text[position:])
    parts.append(("".join(literal), None))
    return tuple(parts)


def fill(template: Template, cell: Mapping[str, str]) -> str:
    return "".join(text + cell[name] if name is not None else text for text, name in template)


def expand(
    raw: RawItem, base: Path, room: int, report: Report, cards: models.Registry | None = None
) -> list[Expanded] | None:
    """The items of `raw` (which has a `matrix` or a `count`), or None after reporting why there are none.

    `room` is how many items the manifest may still grow by; `base` is the folder wildcard files are read from;
    `cards` the model cards that normalise the fields of a derived id's prefix (default: the built-in ones)."""
    fields = dict(raw.fields)
    matrix = fields.pop("matrix", None)
    count_value = fields.pop("count", None)
    given_id = fields.pop("id", None)
    count = 1
    if count_value is not None and count_value.value is not None:
        try:
            count = COUNT.normalise(count_value.as_read("int"))
        except schema.FieldError as exc:
            report(count_value.line, "count", str(exc))
            return None
    matrix_ok, axes, names = True, list[Axis](), set[str]()
    if matrix is not None:
        read = read_matrix(matrix.value, matrix.line, base, report)
        if read is None:
            return None
        matrix_ok, axes, names = read
    templates = _templates(fields, axes, names, report, check_unused=matrix_ok)
    if templates is None or not matrix_ok:
        return None
    size = math.prod(len(axis.values) for axis in axes) * count
    if size > room:  # known from the axes' lengths: nothing is made before this check
        shape = [f"{len(a.values):,} {a.name}" for a in axes] + ([f"count {count:,}"] if count > 1 or not axes else [])
        others = MAX_ITEMS - room
        beside = f", beside the manifest's other {others:,}" if others else ""
        message = f"{' × '.join(shape)} = {size:,} items{beside}; the limit is {MAX_ITEMS:,}"
        report(raw.line, "matrix" if axes else "count", message)
        return None
    chars = _text_size(templates, axes) * count
    if chars > MAX_MANIFEST_BYTES:  # a wildcard value repeated in 100,000 prompts: refused before it is made
        message = f"would expand to {chars:,} characters of text; the limit is {MAX_MANIFEST_BYTES:,}"
        report(raw.line, "matrix", message)
        return None

    if given_id is not None and given_id.value is not None:
        if problem := ids.id_problem(given_id.text, given_id.value):
            report(given_id.line, "id", problem)
            return None
        prefix = given_id.text or ""
    else:
        prefix = _derived_prefix(fields, templates, cards or models.builtin())

    out: list[Expanded] = []
    for cell, tokens in _cells(axes):
        filled = dict(fields)
        for name, template in templates.items():
            text = fill(template, cell)
            filled[name] = Value(text, text, fields[name].line)
        base_id = ids.cell_id(prefix, tokens)
        out.append(Expanded(base_id, filled, cell, 1))
        seed = _seed(filled.get("seed")) if count > 1 else None
        for copy in range(2, count + 1):
            again = filled
            if seed is not None:
                again = {**filled, "seed": Value(seed + copy - 1, str(seed + copy - 1), filled["seed"].line)}
            out.append(Expanded(ids.copy_id(base_id, copy), again, cell, copy))
    return out


def _text_size(templates: Mapping[str, Template], axes: list[Axis]) -> int:
    """The characters every cell's filled fields add up to, from the values' lengths (nothing is filled)."""
    cells = math.prod(len(axis.values) for axis in axes)
    by_name = {axis.name: axis for axis in axes}
    total = 0
    for template in templates.values():
        for literal, name in template:
            total += len(literal) * cells
            if name is not None:  # each value of the axis appears in cells / len(axis) cells
                axis = by_name[name]
                total += sum(map(len, axis.values)) * (cells // len(axis.values))
    return total


def _cells(axes: list[Axis]) -> Iterator[tuple[Mapping[str, str], tuple[str, ...]]]:
    if not axes:
        yield NO_CELL, ()
        return
    names = [axis.name for axis in axes]
    for picks in itertools.product(*(range(len(axis.values)) for axis in axes)):
        cell = {name: axis.values[i] for name, axis, i in zip(names, axes, picks, strict=True)}
        yield MappingProxyType(cell), tuple(axis.tokens[i] for axis, i in zip(axes, picks, strict=True))


def _templates(
    fields: dict[str, Value], axes: list[Axis], names: set[str], report: Report, *, check_unused: bool
) -> dict[str, Template] | None:
    """The fields that hold placeholders, parsed; reports bad braces, unknown placeholders and unused axes.

    `names` holds every axis the matrix names, `axes` those that were read without a problem."""
    if not names:
        return {}  # braces are literal text outside a matrix
    templates: dict[str, Template] = {}
    ok = True
    for name, value in fields.items():
        if value.text is None:
            if value.value == {}:  # `seed: {s}` unquoted is a YAML mapping, not a placeholder
                report(value.line, name, f'a YAML mapping: put a placeholder in quotes, e.g. {name}: "{{name}}"')
                ok = False
            continue
        if "{" not in value.text and "}" not in value.text:
            continue
        try:
            templates[name] = parse_template(value.text, names)
        except TemplateError as exc:
            report(value.line, name, str(exc))
            ok = False
    used = {axis for template in templates.values() for _, axis in template if axis is not None}
    for axis in axes:
        if axis.name not in used and check_unused and ok:
            report(axis.line, f"matrix.{axis.name}", f"no field uses {{{axis.name}}}")
            ok = False
    return templates if ok else None


def _derived_prefix(fields: dict[str, Value], templates: Mapping[str, Template], cards: models.Registry) -> str:
    """The id an item without `matrix` and `count` would have: fields with placeholders as written, the rest
    normalised by the item's card (so a count-only item's first copy keeps the id it had before it had a count).
    With a model from an axis (`model: "{m}"`) no one card applies: the fields are taken as written."""
    given = fields.get("model")
    model = schema.MODEL if given is None or given.value is None else (given.text or str(given.value)).strip()
    card = None if "model" in templates else cards.get(model)
    request: dict[str, Any] = {}
    for name, value in fields.items():
        if value.value is None or name in models.TOP_FIELDS or name in models.EXPANSION_FIELDS:
            continue
        spec = card.fields.get(name) if card is not None else None
        if spec is None and card is not None:
            continue  # not this model's field: reported (or skipped, from defaults) when the cells are validated
        if name in templates or spec is None:
            request[name] = value.text if value.text is not None else value.value
            continue
        try:
            request[name] = spec.normalise(value.as_read(spec.kind))
        except schema.FieldError:
            request[name] = value.text  # reported when the cells are validated
    return ids.derive_id(ids.canonical_json({"model": model, "input": request}))


_ANY_INT = schema.InputField("seed", "int")


def _seed(value: Value | None) -> int | None:
    if value is None or value.value is None:
        return None
    try:
        seed: int = _ANY_INT.normalise(value.as_read("int"))  # the cell's card checks its range
    except schema.FieldError:
        return None  # the first copy reports it
    return seed


# ---------------------------------------------------------------- the matrix


def read_matrix(node: Any, line: int, base: Path, report: Report) -> tuple[bool, list[Axis], set[str]] | None:
    """Whether every axis was read, the axes read (sorted by name), and the names of all; None when the matrix is
    not a mapping of axes at all. Reports every problem."""
    if not isinstance(node, yaml.MappingNode) or not node.value:
        report(line, "matrix", "expected a mapping of axis: [values, …] or axis: {file: PATH}")
        return None
    if len(node.value) > MAX_AXES:
        report(line, "matrix", f"{len(node.value)} axes; the limit is {MAX_AXES}")
        return None
    axes: list[Axis] = []
    seen: set[str] = set()
    ok = True
    for key_node, value_node in node.value:
        at = line_of(key_node)
        name = key_node.value if isinstance(key_node, yaml.ScalarNode) and key_node.tag == YAML_STR else None
        if name is None or not _AXIS_NAME.fullmatch(name):
            shown = repr(schema.shorten(name)) if name is not None else describe_node(key_node)
            report(at, "matrix", f"an axis is named by a letter or '_', then letters, digits or '_'; got {shown}")
            ok = False
            continue
        field = f"matrix.{name}"
        if name in seen:
            report(at, field, "given twice")
            ok = False
            continue
        seen.add(name)
        axis = _axis(name, value_node, at, base, functools.partial(report, at, field))
        if axis is None:
            ok = False
        else:
            axes.append(axis)
    return ok, sorted(axes, key=lambda axis: axis.name), seen


def _axis(name: str, node: yaml.Node, line: int, base: Path, bad: Callable[[str], None]) -> Axis | None:
    values: list[str] | None
    if isinstance(node, yaml.SequenceNode):
        values = _listed(node, bad)
    elif isinstance(node, yaml.MappingNode):
        values = _from_file(node, base, bad)
    else:
        bad(f"expected a list of values or {{file: PATH}}; got {describe_node(node)}")
        return None
    if values is None:
        return None
    if not values:
        bad("empty: an axis needs at least one value")
        return None
    by_token: dict[str, str] = {}
    seen: dict[object, str] = {}
    for value in values:
        if len(value) > schema.MAX_TEXT:
            bad(f"a value of {len(value):,} characters; the limit is {schema.MAX_TEXT:,}")
            return None
        key = ids.identity(value)
        twin = seen.get(key)
        if twin == value:
            bad(f"value {schema.shorten(value)!r} given twice")
            return None
        if twin is not None:  # one value to a reader, two paid cells to the service (ATTACKS 7)
            bad(
                f"values {schema.shorten(twin)!r} and {schema.shorten(value)!r} differ only by Unicode "
                "normalisation, a zero-width character or surrounding spaces; keep one"
            )
            return None
        seen[key] = value
        token = ids.token(value)
        other = by_token.setdefault(token, value)
        if other != value:  # a plain value that spells another's slug and hash (ids.py), or a hash collision
            bad(
                f"values {schema.shorten(other)!r} and {schema.shorten(value)!r} would share the id part "
                f"{token!r}; change one"
            )
            return None
    return Axis(name, tuple(values), tuple(by_token), line)


def _listed(node: yaml.SequenceNode, bad: Callable[[str], None]) -> list[str] | None:
    if len(node.value) > MAX_ITEMS:
        bad(f"{len(node.value):,} values; the limit is {MAX_ITEMS:,}")
        return None
    values: list[str] = []
    for child in node.value:
        if not isinstance(child, yaml.ScalarNode) or child.tag == "tag:yaml.org,2002:null":
            bad(f"a value is text or a number; got {describe_node(child)} (on line {line_of(child)})")
            return None
        if why := unencodable(child.value):
            bad(f"{UNENCODABLE} ({why}){UNENCODABLE_HINT}")
            return None
        if "\0" in child.value:  # as in a wildcard file, or in the manifest's own bytes
            bad(f"value {schema.shorten(child.value)!r} {NUL}")
            return None
        values.append(child.value)  # the text as written: `16:9` stays 16:9, `007` stays 007
    return values


def _from_file(node: yaml.MappingNode, base: Path, bad: Callable[[str], None]) -> list[str] | None:
    """One value per line of a wildcard file, relative to the manifest; blank lines and # comments skipped."""
    pairs = node.value
    key, value = pairs[0] if len(pairs) == 1 else (None, None)
    if not (isinstance(key, yaml.ScalarNode) and key.value == "file" and isinstance(value, yaml.ScalarNode)):
        bad("expected a list of values or {file: PATH}")
        return None
    name = value.value
    if not name.strip() or unencodable(name) or "\0" in name:  # open() raises ValueError on a NUL
        bad(f"expected a file name; got {schema.describe(name)}")
        return None
    shown = repr(schema.shorten(name))
    if why := _leaves_folder(base, name):
        bad(f"{shown} {why}; a wildcard file is one in the manifest's folder or below it")
        return None
    data = read_bounded(base / name, MAX_WILDCARD_BYTES, shown, within=base)
    if isinstance(data, str):
        bad(data)
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        at = data.count(b"\n", 0, exc.start) + 1
        bad(f"{shown} line {at}: not UTF-8 text; save it as UTF-8")
        return None
    if "\0" in text:
        bad(f"{shown} contains a NUL character: this is not a text file")
        return None
    # CR-only (classic Mac) and CRLF line ends count too: otherwise the whole file is one value with \r in it.
    values = [kept for line in _LINE_END.split(text) if (kept := line.strip()) and not kept.startswith("#")]
    if not values:
        bad(f"{shown} has no values (blank lines and # lines are skipped)")
        return None
    if len(values) > MAX_ITEMS:
        bad(f"{shown} has {len(values):,} values; the limit is {MAX_ITEMS:,}")
        return None
    return values


def _leaves_folder(base: Path, name: str) -> str | None:
    """Why a wildcard file's name leaves the manifest's folder, or None. Checked before the file is opened, so
    nothing of a file outside (`/etc/passwd`, `../.ssh/id_rsa`, a link to either) reaches a message or a prompt."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or PureWindowsPath(name).drive:
        return "is an absolute path"
    if ".." in path.parts:
        return "leaves the manifest's folder (..)"
    folder = os.path.realpath(base)
    target = os.path.realpath(base / name)
    if os.path.commonpath([folder, target]) != folder:
        return "is a link to a file outside the manifest's folder"
    return None
