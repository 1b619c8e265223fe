"""The model card format: a card's file (JSON or YAML) -> a Card, or one CardError naming the file and line.

docs/models.md documents the format. A card file is composed (not constructed) with PyYAML's safe loader, so
every problem has a line; a `.json` card must be strict JSON as well. No I/O: models.py reads the files.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from types import MappingProxyType
from typing import Any

import yaml

from .errors import CardError
from .fields import KINDS, MAX_LIST, MAX_SEED, MAX_TEXT, MIN_INT, FieldError, InputField, shorten, suggest

TOP_FIELDS = ("id", "model", "callBackUrl")  # an item's fields outside `input`
EXPANSION_FIELDS = ("matrix", "count")  # fields that make several items of one (expand.py)
FORMAT = 1
IMAGE_TYPES = ("png", "jpeg", "webp")

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_TOP_KEYS = ("card", "model", "title", "page", "successor", "sunset", "fields", "constraints", "output")
_COMMON_KEYS = ("type", "required", "default", "description")
_KEYS_OF: dict[str, tuple[str, ...]] = {
    "text": ("min_length", "max_length"),
    "enum": ("values", "aliases"),
    "int": ("min", "max"),
    "bool": (),
    "image": ("suffixes", "data_types"),
    "list": ("max_items", "suffixes", "data_types"),
}


@dataclass(frozen=True, slots=True)
class Constraint:
    """A rule between fields: `together` (all or none given), or at most `limit` references among `fields`."""

    kind: str  # "together" | "at_most"
    fields: tuple[str, ...]
    limit: int = 0

    def problem(self, given: Mapping[str, Any]) -> tuple[str, str] | None:
        """(field, message) when the normalised request breaks the rule, else None."""
        present = [name for name in self.fields if name in given]
        if self.kind == "together":
            if present and len(present) < len(self.fields):
                missing = [name for name in self.fields if name not in given]
                return missing[0], f"{' and '.join(self.fields)} go together: give all of them or none"
            return None
        total = sum(len(given[name]) if isinstance(given[name], list) else 1 for name in present)
        if total > self.limit:
            return present[-1], f"at most {self.limit} in all of {', '.join(self.fields)}; got {total}"
        return None


@dataclass(frozen=True, slots=True)
class Card:
    name: str
    fields: Mapping[str, InputField]
    constraints: tuple[Constraint, ...] = ()
    successor: str | None = None
    sunset: date | None = None
    title: str = ""
    page: str = ""
    output_format: str = "png"  # the result's type when the request does not choose it (the bytes decide)
    sizes: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # per aspect_ratio value
    size: tuple[int, int] = (1024, 1024)  # without an aspect_ratio (or one not in sizes)
    source: str = "built-in"  # or the user card's path
    sha256: str = ""

    def problems(self, given: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        """The (field, message) of every rule between fields the normalised request breaks."""
        for constraint in self.constraints:
            if (found := constraint.problem(given)) is not None:
                yield found

    def past_sunset(self, today: date) -> bool:
        return self.sunset is not None and today > self.sunset


class _Where:
    """Lines of a composed YAML/JSON tree, so a problem names the line it is on."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, node: yaml.Node | None, message: str) -> CardError:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        return CardError(f"{self.file}{line}: {message}")


def parse(data: bytes, file: str, source: str) -> Card:
    """A card from its file's bytes; raises CardError naming the file and line of the first problem."""
    where = _Where(file)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise CardError(f"{file}:{line}: not UTF-8 text") from None
    if file.endswith(".json"):  # YAML would take a trailing comma or a comment that JSON does not
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise CardError(f"{file}:{exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno})") from None
        except RecursionError:
            raise CardError(f"{file}: not valid JSON: nested too deeply") from None
    # The cards shipped with batchgen are read at every start: libyaml's parser (when PyYAML has it) reads them in
    # a tenth of the time. A user's card keeps the pure-Python one, whose messages the tests pin.
    fast = source == "built-in" and getattr(yaml, "__with_libyaml__", False)
    try:
        root = yaml.compose(text, Loader=yaml.CSafeLoader if fast else yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f":{mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(exc.problem or exc.context).split())
        raise CardError(f"{file}{at}: not valid JSON or YAML: {problem}") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise CardError(f"{file}: not valid JSON or YAML: {' '.join(str(exc).split())[:200]}") from None
    if root is None:
        raise where.fail(None, "empty: expected a card")
    top = _mapping(root, where, "a card", _TOP_KEYS)
    version = _scalar(top.get("card"), where, root, "card")
    if version != FORMAT:
        raise where.fail(top.get("card", root), f"card: expected {FORMAT} (the card format's version)")
    name = _text(top.get("model"), where, root, "model")
    if not _MODEL_NAME.fullmatch(name):
        raise where.fail(top["model"], f"model: {shorten(name)!r} is not a model name")
    fields_node = top.get("fields")
    if fields_node is None:
        raise where.fail(root, "fields: required")
    fields = {key: _field(key, node, where) for key, node in _pairs(fields_node, where, "fields")}
    if "prompt" not in fields or not fields["prompt"].required:
        raise where.fail(fields_node, "fields: every model has a required `prompt`")
    constraints = tuple(_constraints(top.get("constraints"), fields, where))
    successor = _optional_text(top.get("successor"), where, "successor")
    if successor is not None and not _MODEL_NAME.fullmatch(successor):
        raise where.fail(top["successor"], f"successor: {shorten(successor)!r} is not a model name")
    sunset = _sunset(top.get("sunset"), where)
    output = _output(top.get("output"), where)
    return Card(
        name=name,
        fields=MappingProxyType(fields),
        constraints=constraints,
        successor=successor,
        sunset=sunset,
        title=_optional_text(top.get("title"), where, "title") or "",
        page=_optional_text(top.get("page"), where, "page") or "",
        source=source,
        sha256=hashlib.sha256(data).hexdigest(),
        **output,
    )


def _pairs(node: yaml.Node, where: _Where, what: str) -> Iterator[tuple[str, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise where.fail(node, f"{what}: expected a mapping")
    seen: set[str] = set()
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
            raise where.fail(key_node, f"{what}: a key must be text")
        if key_node.value in seen:
            raise where.fail(key_node, f"{what}.{shorten(key_node.value)}: given twice")
        seen.add(key_node.value)
        yield key_node.value, value_node


def _mapping(node: yaml.Node | None, where: _Where, what: str, keys: tuple[str, ...]) -> dict[str, yaml.Node]:
    if node is None:
        raise where.fail(None, f"empty: expected {what}")
    found: dict[str, yaml.Node] = {}
    for key, value in _pairs(node, where, what):
        if key not in keys:
            near = suggest(key, keys)
            hint = f"did you mean {near!r}?" if near else f"expected one of {', '.join(keys)}"
            raise where.fail(value, f"{what}: unknown key {shorten(key)!r}; {hint}")
        found[key] = value
    return found


_construct = yaml.SafeLoader("")


def _scalar(node: yaml.Node | None, where: _Where, parent: yaml.Node | None, what: str) -> Any:
    if node is None:
        raise where.fail(parent, f"{what}: required")
    if not isinstance(node, yaml.ScalarNode):
        raise where.fail(node, f"{what}: expected a single value")
    try:
        return _construct.construct_object(node)
    except (yaml.YAMLError, ValueError, OverflowError):
        return node.value


def _text(node: yaml.Node | None, where: _Where, parent: yaml.Node | None, what: str) -> str:
    value = _scalar(node, where, parent, what)
    if not isinstance(value, str) or not value.strip():
        raise where.fail(node, f"{what}: expected text")
    if not value.isprintable() or len(value) > 2000:  # shown on terminals and pages: no escapes, no bidi overrides
        raise where.fail(node, f"{what}: expected one line of printable text (at most 2,000 characters)")
    return value


def _optional_text(node: yaml.Node | None, where: _Where, what: str) -> str | None:
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"):
        return None
    return _text(node, where, node, what)


def _int(node: yaml.Node, where: _Where, what: str, low: int, high: int) -> int:
    value = _scalar(node, where, node, what)
    if type(value) is not int or not low <= value <= high:
        raise where.fail(node, f"{what}: expected an integer from {low} to {high}")
    return value


def _texts(node: yaml.Node, where: _Where, what: str) -> tuple[str, ...]:
    if not isinstance(node, yaml.SequenceNode) or not node.value or len(node.value) > 1000:
        raise where.fail(node, f"{what}: expected a list of text values")
    return tuple(_text(item, where, node, what) for item in node.value)


def _field(name: str, node: yaml.Node, where: _Where) -> InputField:
    what = f"fields.{shorten(name)}"
    if not _FIELD_NAME.fullmatch(name) or name in (*TOP_FIELDS, *EXPANSION_FIELDS):
        raise where.fail(node, f"{what}: not a field name (lower-case letters, digits and '_'; not id/model/…)")
    kind_node = _mapping(node, where, what, (*_COMMON_KEYS, *{k for keys in _KEYS_OF.values() for k in keys}))
    kind = _scalar(kind_node.get("type"), where, node, f"{what}.type")
    if kind not in KINDS:
        raise where.fail(kind_node.get("type", node), f"{what}.type: expected one of {', '.join(KINDS)}")
    for key, value in kind_node.items():
        if key not in (*_COMMON_KEYS, *_KEYS_OF[kind]):
            raise where.fail(value, f"{what}: {key!r} does not apply to a field of type {kind}")
    options: dict[str, Any] = {"name": name, "kind": kind}
    if "required" in kind_node:
        options["required"] = _scalar(kind_node["required"], where, node, f"{what}.required") is True
    if "description" in kind_node:
        options["description"] = _text(kind_node["description"], where, node, f"{what}.description")
    if kind == "enum":
        values = _texts(kind_node.get("values", node), where, f"{what}.values")
        alias_nodes = _pairs(kind_node.get("aliases", _EMPTY), where, what)
        aliases = {k: _text(v, where, v, f"{what}.aliases.{k}") for k, v in alias_nodes}
        for alias, target in aliases.items():
            if target not in values:
                raise where.fail(kind_node["aliases"], f"{what}.aliases: {alias!r} names {target!r}, not a value")
        options.update(choices=values, aliases=aliases)
    if kind == "int":
        low, high = kind_node.get("min"), kind_node.get("max")
        options["minimum"] = MIN_INT if low is None else _int(low, where, f"{what}.min", MIN_INT, MAX_SEED)
        options["maximum"] = MAX_SEED if high is None else _int(high, where, f"{what}.max", MIN_INT, MAX_SEED)
    if kind == "text":
        if "min_length" in kind_node:
            options["min_length"] = _int(kind_node["min_length"], where, f"{what}.min_length", 1, MAX_TEXT)
        if "max_length" in kind_node:
            options["max_length"] = _int(kind_node["max_length"], where, f"{what}.max_length", 1, MAX_TEXT)
    if kind == "list" and "max_items" in kind_node:
        options["max_items"] = _int(kind_node["max_items"], where, f"{what}.max_items", 1, MAX_LIST)
    if "suffixes" in kind_node:
        options["suffixes"] = tuple(s.lower() for s in _texts(kind_node["suffixes"], where, f"{what}.suffixes"))
    if "data_types" in kind_node:
        types = _texts(kind_node["data_types"], where, f"{what}.data_types")
        options["data_types"] = tuple(t.lower() for t in types)
    spec = InputField(**options)
    if "default" in kind_node:
        default = _scalar(kind_node["default"], where, node, f"{what}.default")
        try:
            spec.normalise(default)
        except FieldError as exc:
            raise where.fail(kind_node["default"], f"{what}.default: {exc}") from None
        spec = InputField(**options, default=default)
    return spec


_EMPTY = yaml.MappingNode("tag:yaml.org,2002:map", [])


def _constraints(node: yaml.Node | None, fields: Mapping[str, InputField], where: _Where) -> Iterator[Constraint]:
    if node is None:
        return
    if not isinstance(node, yaml.SequenceNode):
        raise where.fail(node, "constraints: expected a list")
    for item in node.value:
        rule = _mapping(item, where, "constraints", ("together", "at_most", "of"))
        key = "together" if "together" in rule else "of"
        if key not in rule or ("together" in rule) == ("at_most" in rule or "of" in rule):
            raise where.fail(item, "constraints: expected {together: [fields]} or {at_most: N, of: [fields]}")
        names = _texts(rule[key], where, f"constraints.{key}")
        for name in names:
            if name not in fields:
                raise where.fail(rule[key], f"constraints.{key}: {name!r} is not a field of this card")
        if key == "together":
            yield Constraint("together", names)
        else:
            limit = _int(rule.get("at_most", item), where, "constraints.at_most", 0, MAX_LIST * len(names))
            yield Constraint("at_most", names, limit)


def _sunset(node: yaml.Node | None, where: _Where) -> date | None:
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"):
        return None
    value = _scalar(node, where, node, "sunset")
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise where.fail(node, "sunset: expected a date, YYYY-MM-DD") from None


def _output(node: yaml.Node | None, where: _Where) -> dict[str, Any]:
    if node is None:
        return {}
    found = _mapping(node, where, "output", ("format", "sizes", "size"))
    made: dict[str, Any] = {}
    if "format" in found:
        made["output_format"] = _scalar(found["format"], where, node, "output.format")
        if made["output_format"] not in IMAGE_TYPES:
            raise where.fail(found["format"], f"output.format: expected one of {', '.join(IMAGE_TYPES)}")
    if "sizes" in found:
        pairs = _pairs(found["sizes"], where, "output.sizes")
        made["sizes"] = MappingProxyType({k: _size(v, where, f"output.sizes.{k}") for k, v in pairs})
    if "size" in found:
        made["size"] = _size(found["size"], where, "output.size")
    return made


def _size(node: yaml.Node, where: _Where, what: str) -> tuple[int, int]:
    if not isinstance(node, yaml.SequenceNode) or len(node.value) != 2:
        raise where.fail(node, f"{what}: expected [width, height]")
    width, height = (_int(n, where, what, 16, 8192) for n in node.value)
    return width, height
