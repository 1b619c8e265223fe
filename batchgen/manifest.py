"""Manifest files (YAML or CSV) -> validated, normalised, immutable `Item` records.

Nothing here touches the network or the ledger. `readers.py` reads a file into raw fields with their lines,
`expand.py` turns an item with a `matrix` or a `count` into the items of its cells, and this module checks every
item against the schema and builds its record. Every problem in a file is collected and raised at once as one
`ManifestError`, each located by file, line (YAML: the item's line; CSV: the row's first line) and field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from . import expand, schema
from .config import check_callback_url
from .ids import ID_PATTERN as ID_PATTERN
from .ids import canonical_json as canonical_json
from .ids import derive_id as derive_id
from .ids import id_problem, identity
from .readers import Collector, RawItem, read, unencodable, unknown_field_message


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

    @property
    def cell(self) -> Mapping[str, str]:
        """The matrix axis values this item was made from: none for a plain item (see CellItem)."""
        return expand.NO_CELL

    @property
    def copy(self) -> int:
        """Which of its item's `count` copies this is, from 1."""
        return 1


@dataclass(frozen=True, slots=True)
class CellItem(Item):
    """An item made by a `matrix` or a `count`. (Two more fields on every item cost 3% of loading 100,000.)"""

    cell: Mapping[str, str]  # a field where Item has a read-only property
    copy: int


@dataclass(frozen=True, slots=True)
class Loaded:
    """A manifest's items, and how many it lists before matrices and counts are expanded."""

    items: list[Item]
    listed: int


def load(path: str | Path) -> list[Item]:
    """Read, validate and normalise one manifest file. Raises ManifestError naming every problem."""
    return load_counted(path).items


def load_counted(path: str | Path) -> Loaded:
    """`load`, with the number of items the file lists (`validate` prints both)."""
    path = Path(path)
    name = str(path)
    if why := unencodable(name):  # the ledger records the name, and the journal is UTF-8
        out = Collector(name.encode("utf-8", "backslashreplace").decode("ascii"))
        out.add(None, f"the file name cannot be encoded as UTF-8 ({why}): rename the file")
        out.raise_if_any()
    out = Collector(name)
    raw_items = read(path, out, lambda defaults: _build(defaults, out, defaults=True))
    out.raise_if_any()
    items = _validate(raw_items or [], path.parent, out)
    out.raise_if_any()
    return Loaded(items, len(raw_items or ()))


# ---------------------------------------------------------------- validation

_KNOWN = frozenset(schema.MANIFEST_FIELDS)


def _validate(raw_items: list[RawItem], base: Path, out: Collector) -> list[Item]:
    items: list[Item] = []
    by_id: dict[str, Item] = {}
    by_request: dict[tuple[Any, ...], Item] = {}
    room: int | None = None  # how many more items expansions may make; counted when the first one is met
    for raw in raw_items:
        fields = raw.fields
        made: list[Item] | tuple[Item]
        if "matrix" in fields or "count" in fields:
            if room is None:  # a manifest listing more than MAX_ITEMS plain items is as valid as it always was
                room = expand.MAX_ITEMS - sum(
                    1 for r in raw_items if "matrix" not in r.fields and "count" not in r.fields
                )
            made = _expanded(raw, base, max(room, 0), out)
            room -= len(made)
            has_id = True
        elif (item := _build(raw, out)) is not None:
            made = (item,)
            has_id = "id" in fields
        else:
            continue
        for item in made:  # this loop runs for every item of a 100,000-item manifest: kept inline
            key = _request_key(item)
            twin = by_request.get(key)
            if twin is not None and not has_id:
                message = f"the same request as the item on line {twin.line} (id {twin.id!r})"
                out.add(raw.line, f"{message}; give one of them an id, or remove it", raw.label)
                continue
            first = by_id.get(item.id)
            if first is not None:
                message = f"id {item.id!r} is already used by the item on line {first.line}"
                out.add(raw.line, message, raw.label, "id")
                continue
            by_request.setdefault(key, item)
            by_id[item.id] = item
            items.append(item)
    return items


def _expanded(raw: RawItem, base: Path, room: int, out: Collector) -> list[Item]:
    """The items of an item with a `matrix` or a `count`, each validated after substitution."""
    report = lambda line, field, message: out.add(line, message, raw.label, field)  # noqa: E731
    cells = expand.expand(raw, base, room, report)
    made: list[Item] = []
    # Two cells whose requests are equal once normalised (`16:9` and `widescreen_16_9`, seeds `1` and `01`) would
    # pay twice for one image: an error, as two plain items with one request are (so are `seed: "{s}"` with
    # s: [1, 2] and count 2, whose copies meet at seed 2). Copies of one cell may be equal: `count` without a seed
    # asks for several draws of one request on purpose.
    first: dict[tuple[Any, ...], expand.Expanded] = {}
    with out.distinct():  # a bad value shows once, not once per cell that has it
        for cell in cells or ():
            built = _build(RawItem(raw.line, raw.label, cell.fields), out, given_id=cell.id)
            if built is None:
                continue
            twin = first.setdefault(_request_key(built), cell)
            if twin.cell is not cell.cell:  # the copies of one cell share one cell mapping
                message = f"cells {_shown(twin)} and {_shown(cell)} make the same request; remove one value"
                out.add(raw.line, message, raw.label, "matrix")
                continue
            made.append(_with_cell(built, cell))
    return made


def _shown(cell: expand.Expanded) -> str:
    """A cell's values for a message: {axis: 'value', …}, and which copy when it is not the first."""
    values = ", ".join(f"{name}: {schema.shorten(value)!r}" for name, value in cell.cell.items())
    return f"{{{values}}}" + (f" (copy {cell.copy})" if cell.copy > 1 else "")


def _with_cell(item: Item, cell: expand.Expanded) -> Item:
    return CellItem(item.id, item.model, item.input, item.callback_url, item.file, item.line, cell.cell, cell.copy)


def _build(raw: RawItem, out: Collector, *, defaults: bool = False, given_id: str | None = None) -> Item | None:
    """Check one item's fields (or, with `defaults`, the defaults block) and build its record.

    `given_id` is the id of a cell of a matrix (its fields hold no `id`, `matrix` or `count` any more)."""
    before = out.count

    def bad(name: str, message: str) -> None:
        if defaults:
            out.add(raw.fields[name].line if name in raw.fields else raw.line, message, None, f"defaults.{name}")
        else:
            out.add(raw.line, message, raw.label, name)

    def given(name: str) -> Any:
        value = raw.fields.get(name)
        return value if value is not None and value.value is not None else None

    for name in raw.fields:  # (text UTF-8 cannot hold was refused where it was read)
        if name not in _KNOWN:
            bad(name, unknown_field_message(name))

    item_id = given_id
    if defaults:
        if given("id") is not None:
            bad("id", "an id cannot be a default: each item has its own")
        if given("matrix") is not None:
            bad("matrix", "a matrix cannot be a default: give it to the items it expands")
        if (value := given("count")) is not None:
            try:
                expand.COUNT.normalise(value.as_read("int"))
            except schema.FieldError as exc:
                bad("count", str(exc))
    elif (value := given("id")) is not None:
        if value.text is not None and ID_PATTERN.fullmatch(value.text):
            item_id = value.text
        else:
            bad("id", id_problem(value.text, value.value if value.text is None else value.text) or "")

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
        try:  # inline Value.as_read: this loop runs for every field of 100,000 items
            normalised[name] = spec.normalise(
                value.text
                if value.text is not None and (spec.kind != "int" or type(value.value) in (int, str))
                else value.value
            )
        except schema.FieldError as exc:
            bad(name, str(exc))
    if not defaults and given("prompt") is None:
        bad("prompt", "required, and missing")

    if defaults or out.count > before:
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
    """A hashable stand-in for the canonical request (values are str, int or bool: all hashable), its texts taken
    as ids.identity sees them: `café` in NFC and NFD, `fox` and `fox\u200d`, are one request, never two paid."""
    # Runs for each of 100,000 items: plain ASCII text (nearly all of it) is only stripped, inline.
    return item.model, tuple(
        sorted(
            (name, value.strip() if value.isascii() else identity(value)) if type(value) is str else (name, value)
            for name, value in item.input.items()
        )
    )
