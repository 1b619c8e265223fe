"""Model cards: what each image model of the Market accepts, as data (batchgen/cards/*.json, user cards).

A card is one JSON (or YAML) file per model — the format is documented in docs/models.md and read by
card_format.py:

    {"card": 1, "model": "flux-2-pro", "successor": null, "sunset": null,
     "fields": {"prompt": {"type": "text", "required": true},
                "width": {"type": "int", "min": 256, "max": 1440}, …},
     "constraints": [{"together": ["width", "height"]}, {"at_most": 4, "of": ["input_image", …]}],
     "output": {"format": "jpeg", "sizes": {…}, "size": [1024, 768]}}

The cards are the one source of field truth: the manifest checks, the simulator, `batchgen models` and the docs
read them. A card's `default` is documentation: it is never added to a request or an id. This module holds the
cards a run knows (the built-in ones, then the user's from --models-dir and the like).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from importlib import resources
from pathlib import Path

from .card_format import EXPANSION_FIELDS as EXPANSION_FIELDS
from .card_format import TOP_FIELDS as TOP_FIELDS
from .card_format import Card as Card
from .card_format import Constraint as Constraint
from .card_format import parse as parse
from .errors import CardError
from .escapes import inert_line
from .fields import MAX_SEED, MIN_INT, InputField, shorten, suggest
from .files import read_bounded

DEFAULT_MODEL = "imagen4-ultra"
MAX_CARD_BYTES = 256 * 1024


class Registry:
    """The cards known to a run: the built-in ones, then a user's (which add models or replace built-ins)."""

    def __init__(self, cards: Mapping[str, Card], overridden: tuple[str, ...] = ()) -> None:
        self.cards = dict(cards)
        self.overridden = overridden
        names: dict[str, None] = {}
        for card in self.cards.values():
            names.update(dict.fromkeys(card.fields))
        self.field_names: tuple[str, ...] = tuple(names)  # every input field of any card, first card first
        self.manifest_fields = (*TOP_FIELDS, *self.field_names, *EXPANSION_FIELDS)

    def get(self, name: str) -> Card | None:
        return self.cards.get(name)

    def nearest(self, name: str) -> str | None:
        """The card whose name is nearest to `name` (a card of the same family first: imagen3 -> imagen4-ultra)."""
        folded = name.strip().lower()
        family = [card for card in self.cards if card[:4].lower() == folded[:4]] if len(folded) >= 4 else []
        if family:
            return difflib.get_close_matches(folded, family, n=1, cutoff=0.0)[0]
        return suggest(name, tuple(self.cards))

    def unknown_model(self, name: str) -> str:
        near = self.nearest(name)
        hint = f"did you mean {near!r}?" if near else f"known models: {', '.join(sorted(self.cards))}"
        return f"unknown model {shorten(name)!r}; {hint} (`batchgen models` lists them)"

    def having(self, name: str) -> list[str]:
        return sorted(card.name for card in self.cards.values() if name in card.fields)

    def missing_field(self, model: str, name: str) -> str:
        others = self.having(name)
        has = f"; models that have it: {', '.join(others)}" if others else ""
        return f"model {model!r} has no field {name!r}{has}"


@functools.cache
def builtin() -> Registry:
    """The cards shipped in batchgen/cards/, read once."""
    cards: dict[str, Card] = {}
    folder = resources.files("batchgen") / "cards"
    for entry in sorted(folder.iterdir(), key=lambda e: (e.name != f"{DEFAULT_MODEL}.json", e.name)):
        if entry.name.endswith(".json"):
            data = entry.read_bytes()
            card = parse(data, f"batchgen/cards/{entry.name}", "built-in")
            cards[card.name] = card
    return Registry(cards)


# ---------------------------------------------------------------- user cards

MAX_USER_CARDS = 1000
CARD_SUFFIXES = (".json", ".yaml", ".yml")


def user_folder(flag: str | None, env: Mapping[str, str]) -> tuple[Path | None, str | None]:
    """Where user cards are read from, and the flag or variable that named it (None: the default place, which
    may be missing). --models-dir, else $BATCHGEN_MODELS_DIR, else $XDG_CONFIG_HOME/batchgen/models, else
    ~/.config/batchgen/models (cron has no HOME: then there is none)."""
    if flag:
        return Path(flag), "--models-dir"
    if env.get("BATCHGEN_MODELS_DIR"):
        return Path(env["BATCHGEN_MODELS_DIR"]), "BATCHGEN_MODELS_DIR"
    config = env.get("XDG_CONFIG_HOME", "")
    if config and Path(config).is_absolute():
        return Path(config) / "batchgen" / "models", None
    home = env.get("HOME", "")
    if home and Path(home).is_absolute():
        return Path(home) / ".config" / "batchgen" / "models", None
    return None, None


def registry(flag: str | None, env: Mapping[str, str], notes: list[str]) -> Registry:
    """The built-in cards and the user's: a user card adds a model or replaces a built-in one (a line in
    `notes` says so). Raises CardError naming the file and line of a malformed card."""
    folder, named_by = user_folder(flag, env)
    base = builtin()
    if folder is None:
        return base
    if not folder.is_dir():
        if named_by is None and not folder.exists():
            return base
        raise CardError(f"{named_by or 'model cards'}: {folder} is not a directory")
    try:
        entries = sorted(p for p in folder.iterdir() if p.name.endswith(CARD_SUFFIXES) and not p.name.startswith("."))
    except OSError as exc:
        raise CardError(f"{folder}: cannot list the model cards: {exc.strerror or exc}") from None
    if len(entries) > MAX_USER_CARDS:
        raise CardError(f"{folder}: {len(entries):,} card files; the limit is {MAX_USER_CARDS:,}")
    cards = dict(base.cards)
    mine: dict[str, Path] = {}
    overridden: list[str] = []
    for path in entries:
        data = read_bounded(path, MAX_CARD_BYTES, "the card")
        if isinstance(data, str):
            raise CardError(f"{path}: {data}")
        card = parse(data, str(path), str(path))
        if card.name in mine:
            raise CardError(f"{path}: model {card.name!r} is already defined by {mine[card.name]}")
        mine[card.name] = path
        if card.name in base.cards:
            overridden.append(card.name)
            shown = inert_line(path, None)
            notes.append(f"model card {shown} replaces the built-in card of {card.name}")
        cards[card.name] = card
    return Registry(cards, tuple(overridden)) if mine else base


def used(cards: Registry, names: Iterable[str]) -> dict[str, dict[str, str]]:
    """What the ledger records of each card a run used: its sha256 and where it came from."""
    made: dict[str, dict[str, str]] = {}
    for name in sorted(set(names)):
        card = cards.get(name)
        if card is not None:
            made[name] = {"sha256": card.sha256, "source": card.source}
    return made


# ---------------------------------------------------------------- `batchgen models`


def listing(cards: Registry) -> list[str]:
    """One line per card: name, where it comes from, successor and sunset."""
    rows = [("model", "card", "successor", "sunset")]
    for name in sorted(cards.cards):
        card = cards.cards[name]
        source = inert_line(card.source, None)  # a file name is outside text
        if name in cards.overridden:
            source += " (replaces the built-in card)"
        rows.append((name, source, card.successor or "-", card.sunset.isoformat() if card.sunset else "-"))
    return _table(rows)


def field_table(card: Card) -> list[str]:
    """A card as `batchgen models NAME` shows it (and docs/models.md quotes it)."""
    head = [f"{card.name}" + (f" — {card.title}" if card.title else "")]
    if card.page:
        head.append(f"page: {card.page}")
    source = inert_line(card.source, None)
    head.append(f"card: {source}, sha256 {card.sha256[:16]}…")
    head.append(f"successor: {card.successor or '-'}; sunset: {card.sunset.isoformat() if card.sunset else '-'}")
    rows = [("field", "type", "required", "default", "accepts")]
    for spec in card.fields.values():
        default = "-" if spec.default is None else str(spec.default)
        rows.append((spec.name, spec.kind, "yes" if spec.required else "", default, _accepts(spec)))
    lines = [*head, "", *_table(rows)]
    if card.constraints:
        lines += ["", "between fields:"]
        for rule in card.constraints:
            if rule.kind == "together":
                lines.append(f"  {' and '.join(rule.fields)}: all of them or none")
            else:
                lines.append(f"  at most {rule.limit} references in all of {', '.join(rule.fields)}")
    return lines


def _accepts(spec: InputField) -> str:
    if spec.kind == "text":
        return f"{spec.min_length:,} to {spec.max_length:,} characters, not blank"
    if spec.kind == "enum":
        aliases = ", ".join(f"{a}={t}" for a, t in spec.aliases.items())
        return ", ".join(spec.choices) + (f" (aliases {aliases})" if aliases else "")
    if spec.kind == "int":
        if spec.minimum == MIN_INT and spec.maximum == MAX_SEED:
            return "integer (any 64-bit signed)"
        return f"integer {spec.minimum} to {spec.maximum}"
    if spec.kind == "bool":
        return "true/false (yes/no, 1/0, on/off)"
    rule = f"https URL ending in {', '.join(spec.suffixes)}" if spec.suffixes else "https URL"
    if spec.data_types:
        rule += f", or data URI ({', '.join(spec.data_types)})"
    return rule if spec.kind == "image" else f"list of at most {spec.max_items}: {rule}"


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def sunset_warnings(cards: Registry, names: Iterable[str], today: date) -> list[str]:
    """One line for each model in use whose card's sunset date has passed."""
    lines = []
    for name in sorted(set(names)):
        card = cards.get(name)
        if card is not None and card.past_sunset(today):
            then = f"; its successor is {card.successor!r}" if card.successor else ""
            lines.append(f"model {name!r} is past its sunset date ({card.sunset}, in its card){then}")
    return lines
