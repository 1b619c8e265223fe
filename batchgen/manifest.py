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

from . import expand, models, references, schema
from .config import check_callback_url
from .fields import RefList
from .ids import ID_PATTERN as ID_PATTERN
from .ids import canonical_json as canonical_json
from .ids import derive_id as derive_id
from .ids import id_problem, identity
from .problems import Collector, unencodable, unknown_field_message
from .readers import RawItem, Value, read


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

    @property
    def references(self) -> Mapping[str, references.Reference]:
        """The local reference files its request names by `sha256:<hex>`: none for most items (see RefItem)."""
        return _NO_REFERENCES

    def wire(self) -> dict[str, Any]:
        """The createTask body: the request, each reference file's `sha256:<hex>` sent as its data URI.
        Raises references.ReferenceChanged when a file was edited since the manifest was read."""
        return references.wire(self.request, self.references) if self.references else self.request


@dataclass(frozen=True, slots=True)
class CellItem(Item):
    """An item made by a `matrix` or a `count`. (Two more fields on every item cost 3% of loading 100,000.)"""

    cell: Mapping[str, str]  # a field where Item has a read-only property
    copy: int


@dataclass(frozen=True, slots=True)
class RefItem(CellItem):
    """An item whose request names local reference files (by sha256); plain or made by a matrix."""

    references: Mapping[str, references.Reference]


_NO_REFERENCES: Mapping[str, references.Reference] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Counted:
    """A manifest's items, and how many it lists before matrices and counts are expanded (records.Loaded is the
    ledger's, a different thing)."""

    items: list[Item]
    listed: int


def load(path: str | Path, *, model: str | None = None, cards: models.Registry | None = None) -> list[Item]:
    """Read, validate and normalise one manifest file. Raises ManifestError naming every problem."""
    return load_counted(path, model=model, cards=cards).items


def load_counted(path: str | Path, *, model: str | None = None, cards: models.Registry | None = None) -> Counted:
    """`load`, with the number of items the file lists (`validate` prints both).

    `model` checks every item as if it named that model (`validate --model`); `cards` are the model cards
    (default: the built-in ones)."""
    path = Path(path)
    name = str(path)
    if why := unencodable(name):  # the ledger records the name, and the journal is UTF-8
        out = Collector(name.encode("utf-8", "backslashreplace").decode("ascii"))
        out.add(None, f"the file name cannot be encoded as UTF-8 ({why}): rename the file")
        out.raise_if_any()
    out = Collector(name)
    check = _Checker(out, cards or models.builtin(), model, references.Files(path.parent))
    raw_items = read(path, out, check.defaults, check.cards.manifest_fields) or []
    out.raise_if_any()
    listed = len(raw_items)
    items = _validate(raw_items, path.parent, check)
    out.raise_if_any()
    return Counted(items, listed)


# ---------------------------------------------------------------- validation


def _validate(raw_items: list[RawItem], base: Path, check: _Checker) -> list[Item]:
    """The items of `raw_items`, which it empties as it goes: each raw item is freed once its item is made, so
    a 100,000-item manifest never holds both whole (~80 MB less at the peak, and a smaller heap for the run)."""
    out = check.out
    items: list[Item] = []
    by_id: dict[str, Item] = {}
    # Each request's first item, asked only by an item without an id (a repeated request is an error there
    # alone): made when the first such item comes, from the items accepted before it, in their order — the
    # mapping an eager one would hold then. A manifest whose every item has an id (nearly every large one, and
    # every matrix) never needs it: 100,000 keys not made.
    by_request: dict[tuple[Any, ...], Item] | None = None
    room: int | None = None  # how many more items expansions may make; counted when the first one is met
    plain = 0  # plain items (no matrix, no count) met so far
    raw_items.reverse()
    while raw_items:
        raw = raw_items.pop()
        fields = raw.fields
        made: list[Item] | tuple[Item]
        if "matrix" in fields or "count" in fields:
            if room is None:  # a manifest listing more than MAX_ITEMS plain items is as valid as it always was
                room = (
                    expand.MAX_ITEMS
                    - plain
                    - sum(1 for r in raw_items if "matrix" not in r.fields and "count" not in r.fields)
                )
            made = _expanded(check.with_model(raw), base, max(room, 0), check)
            room -= len(made)
            has_id = True
        else:
            plain += 1
            item = check.item(check.with_model(raw))
            if item is None:
                continue
            made = (item,)
            has_id = "id" in fields
        if by_request is None and not has_id:
            by_request = {}
            for earlier in items:
                by_request.setdefault(_request_key(earlier), earlier)
        for item in made:  # this loop runs for every item of a 100,000-item manifest: kept inline
            if by_request is not None:
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
            if by_request is not None:
                by_request.setdefault(key, item)
            by_id[item.id] = item
            items.append(item)
    return items


def _expanded(raw: RawItem, base: Path, room: int, check: _Checker) -> list[Item]:
    """The items of an item with a `matrix` or a `count`, each validated after substitution."""
    out = check.out
    report = lambda line, field, message: out.add(line, message, raw.label, field)  # noqa: E731
    cells = expand.expand(raw, base, room, report, check.cards)
    made: list[Item] = []
    # Two cells whose requests are equal once normalised (`16:9` and `widescreen_16_9`, seeds `1` and `01`) would
    # pay twice for one image: an error, as two plain items with one request are (so are `seed: "{s}"` with
    # s: [1, 2] and count 2, whose copies meet at seed 2). Copies of one cell may be equal: `count` without a seed
    # asks for several draws of one request on purpose.
    first: dict[tuple[Any, ...], expand.Expanded] = {}
    with out.distinct():  # a bad value shows once, not once per cell that has it
        for cell in cells or ():
            built = check.item(RawItem(raw.line, raw.label, cell.fields), given_id=cell.id)
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
    if item.references:
        return RefItem(
            item.id,
            item.model,
            item.input,
            item.callback_url,
            item.file,
            item.line,
            cell.cell,
            cell.copy,
            item.references,
        )
    return CellItem(item.id, item.model, item.input, item.callback_url, item.file, item.line, cell.cell, cell.copy)


class _Checker:
    """Checks items against their model's card; remembers the `defaults` block, whose fields an item's model
    may lack (skipped for that item) where the item's own may not (an error)."""

    def __init__(self, out: Collector, cards: models.Registry, model: str | None, files: references.Files) -> None:
        self.out = out
        self.files = files  # local reference images, each read once
        self.cards = cards
        self.model = model  # `validate --model NAME`: every item as if it named NAME
        self.known = frozenset(cards.manifest_fields)
        self.from_defaults: dict[str, Value] = {}

    def with_model(self, raw: RawItem) -> RawItem:
        if self.model is None:
            return raw
        return RawItem(raw.line, raw.label, {**raw.fields, "model": Value(self.model, self.model, raw.line)})

    def defaults(self, raw: RawItem) -> None:
        self.from_defaults = raw.fields
        self.item(self.with_model(raw), defaults=True)

    def item(self, raw: RawItem, *, defaults: bool = False, given_id: str | None = None) -> Item | None:
        """Check one item's fields (or, with `defaults`, the defaults block) and build its record.

        `given_id` is the id of a cell of a matrix (its fields hold no `id`, `matrix` or `count` any more)."""
        out = self.out
        before = out.count

        def bad(name: str, message: str) -> None:
            if defaults:
                out.add(raw.fields[name].line if name in raw.fields else raw.line, message, None, f"defaults.{name}")
            else:
                out.add(raw.line, message, raw.label, name)

        def given(name: str) -> Any:
            value = raw.fields.get(name)
            return value if value is not None and value.value is not None else None

        if not self.known.issuperset(raw.fields):  # (text UTF-8 cannot hold was refused where it was read)
            for name in raw.fields:
                if name not in self.known:
                    bad(name, unknown_field_message(name, self.cards.manifest_fields))

        item_id = given_id
        if defaults:
            _check_defaults_only(given, bad)
        elif (value := given("id")) is not None:
            if value.text is not None and ID_PATTERN.fullmatch(value.text):
                item_id = value.text
            else:
                bad("id", id_problem(value.text, value.value if value.text is None else value.text) or "")

        model, named = schema.MODEL, True
        if (value := given("model")) is not None:
            model = (value.text or "").strip()
            if value.text is None or not model:
                bad("model", f"expected a model name; got {schema.describe(value.value)}")
                named = False
        card = self.cards.get(model)
        if card is None:  # an unknown model has no fields to check
            if named:
                bad("model", self.cards.unknown_model(model))
            return None

        callback: str | None = None
        if (value := given("callBackUrl")) is not None:
            callback = (value.text or "").strip()
            if message := check_callback_url(callback):
                bad("callBackUrl", message)

        refs: dict[str, references.Reference] = {}
        normalised = self._input(raw, card, bad, refs, defaults=defaults)
        if not defaults and given("prompt") is None:
            bad("prompt", "required, and missing")
        if out.count == before and card.constraints:  # (most cards have no rule between fields)
            for name, message in card.problems(normalised):
                bad(name, message)

        if defaults or out.count > before:
            return None
        made = Item(  # id, model, input, callback_url, file, line (by position: 100,000 calls)
            item_id or derive_id(canonical_json({"model": model, "input": normalised})),
            model,
            MappingProxyType(normalised),
            callback,
            out.file,
            raw.line,
        )
        if refs:
            fields = (made.id, model, made.input, callback, out.file, raw.line)
            return RefItem(*fields, expand.NO_CELL, 1, MappingProxyType(refs))
        return made

    def _input(
        self, raw: RawItem, card: models.Card, bad: Any, refs: dict[str, references.Reference], *, defaults: bool
    ) -> dict[str, Any]:
        """The `input` fields given, normalised by the card (not every known one: 100,000 items add up)."""
        normalised: dict[str, Any] = {}
        specs = card.fields
        for name, value in raw.fields.items():
            spec = specs.get(name)
            if spec is None:
                # the defaults block is for every model; an item's own field must be its model's
                if (
                    value.value is not None
                    and name in self.known
                    and name not in _OUTSIDE_INPUT
                    and not defaults
                    and self.from_defaults.get(name) is not value
                ):
                    bad(name, self.cards.missing_field(card.name, name))
                continue
            if value.value is None:
                continue
            try:  # inline Value.as_read: this loop runs for every field of 100,000 items
                normalised[name] = spec.normalise(
                    value.text
                    if value.text is not None and (spec.kind != "int" or type(value.value) in (int, str))
                    else value.value
                )
            except schema.FieldError as exc:
                bad(name, str(exc))
                continue
            if spec.data_types and spec.kind in ("image", "list"):
                normalised[name] = self._local(name, normalised[name], spec, refs, bad)
        return normalised

    def _local(
        self, name: str, value: Any, spec: schema.InputField, refs: dict[str, references.Reference], bad: Any
    ) -> Any:
        """A reference field's value with each local file as `sha256:<hex>` (and the file in `refs`)."""
        values: list[str] = value if isinstance(value, list) else [value]
        if not any(references.is_local(text) for text in values):
            return value
        made = RefList()
        for position, text in enumerate(values, start=1):
            if not references.is_local(text):
                made.append(text)
                continue
            found = self.files.check(text)
            where = f"item {position}: " if spec.kind == "list" else ""
            if isinstance(found, str):
                bad(name, f"{where}{schema.shorten(text)!r}: {found}")
                return value
            digest, reference = found
            if reference.media_type not in spec.data_types:
                bad(
                    name,
                    f"{where}{schema.shorten(text)!r} is {reference.media_type}; this field takes "
                    f"{', '.join(spec.data_types)}",
                )
                return value
            made.append(digest)
            refs[digest] = reference
        return made if spec.kind == "list" else made[0]


_OUTSIDE_INPUT = frozenset((*models.TOP_FIELDS, *models.EXPANSION_FIELDS))


def _check_defaults_only(given: Any, bad: Any) -> None:
    """What a defaults block may not hold: an id or a matrix; and a count must be one."""
    if given("id") is not None:
        bad("id", "an id cannot be a default: each item has its own")
    if given("matrix") is not None:
        bad("matrix", "a matrix cannot be a default: give it to the items it expands")
    if (value := given("count")) is not None:
        try:
            expand.COUNT.normalise(value.as_read("int"))
        except schema.FieldError as exc:
            bad("count", str(exc))


def _request_key(item: Item) -> tuple[Any, ...]:
    """A hashable stand-in for the canonical request (values are str, int or bool: all hashable), its texts taken
    as ids.identity sees them: `café` in NFC and NFD, `fox` and `fox\u200d`, are one request, never two paid."""
    # Runs for each of 100,000 items: plain ASCII text (nearly all of it) is only stripped, inline.
    pairs = [
        (name, value.strip() if value.isascii() else identity(value)) if type(value) is str else (name, value)
        for name, value in item.input.items()
    ]
    pairs.sort()
    return item.model, tuple(pairs)
