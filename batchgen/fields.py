"""What one field of a model's request accepts, and how a written value becomes the value sent.

A model card (models.py, batchgen/cards/*.json) is a table of these. Pure data and pure functions: no I/O.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

# The longest text we accept in any field. The service documents no limit; 20,000 characters is far beyond
# any useful prompt and keeps a runaway spreadsheet cell from becoming a paid request.
MAX_TEXT = 20_000

Kind = Literal["text", "enum", "int", "bool", "image", "list"]
KINDS: tuple[Kind, ...] = ("text", "enum", "int", "bool", "image", "list")

_INTEGER = re.compile(r"-?[0-9]+")
_MAX_DIGITS = 40
# A seed table that says only "at least 1" has no upper bound. The service takes the request as JSON into typed
# fields; an integer beyond a signed 64-bit one cannot be one there, so that is the bound we check (and name)
# rather than paying to learn. An integer field of a card without a range has these bounds.
MAX_SEED = 2**63 - 1
MIN_INT = -(2**63)
MAX_LIST = 64  # items of a list field, whatever its card says: a reference list, not a data set

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}
_DATA_URI = re.compile(r"data:([A-Za-z0-9.+/-]+);base64,[A-Za-z0-9+/]+={0,2}", re.ASCII)


class FieldError(ValueError):
    """A value that the field does not accept; the message says why, without the field's name."""


class RefList(list[str]):
    """A list field's value: a list (as JSON writes and the ledger reads it) that can key a dict like a tuple.

    Items are frozen (MappingProxyType) and never mutate their values, so hashing by content is sound."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(self))


@dataclass(frozen=True, slots=True)
class InputField:
    """One `input.*` field of a model's table."""

    name: str
    kind: Kind
    choices: tuple[str, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)
    minimum: int | None = None
    maximum: int | None = None
    required: bool = False
    default: Any = None  # documentation only: never added to a request or an id
    min_length: int = 1  # text: characters after the value is known not to be blank
    max_length: int = MAX_TEXT
    max_items: int = MAX_LIST  # list: how many references
    suffixes: tuple[str, ...] = ()  # image/list: a URL's path must end in one of these (none: any)
    data_types: tuple[str, ...] = ()  # image/list: the media types a data URI may have (none: no data URIs)
    description: str = ""

    def normalise(self, value: Any) -> Any:
        """Return the canonical value, or raise FieldError saying what is wrong."""
        if self.kind == "text":
            if not isinstance(value, str):
                raise FieldError(f"expected text, got {describe(value)}")
            if not value.strip():
                raise FieldError("must not be blank")
            if len(value) > self.max_length:
                raise FieldError(f"too long ({len(value):,} characters; the limit is {self.max_length:,})")
            if len(value) < self.min_length:
                plural = "s" if len(value) != 1 else ""
                raise FieldError(f"too short ({len(value)} character{plural}; at least {self.min_length})")
            return value
        if self.kind == "enum":
            return self._choice(value)
        if self.kind == "int":
            number = self._as_int(value)
            if self.minimum is not None and number < self.minimum:
                raise FieldError(self._range_message(number))
            if self.maximum is not None and number > self.maximum:
                raise FieldError(self._range_message(number))
            return number
        if self.kind == "image":
            return self._reference(value)
        if self.kind == "list":
            return self._references(value)
        # bool
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE:
            return True
        if isinstance(value, str) and value.strip().lower() in _FALSE:
            return False
        raise FieldError(f"expected true or false (or yes/no, 1/0); got {describe(value)}")

    def _choice(self, value: Any) -> str:
        if not isinstance(value, str):
            raise FieldError(f"expected one of {', '.join(self.choices)}; got {describe(value)}")
        text = value.strip()
        if text in self.choices:
            return text
        if text in self.aliases:
            return self.aliases[text]
        lowered = text.lower()
        for accepted in (*self.choices, *self.aliases):
            if accepted.lower() == lowered:
                return self.aliases.get(accepted, accepted)
        raise FieldError(f"expected one of {', '.join(self.choices)}; got {shorten(text)!r}")

    def _as_int(self, value: Any) -> int:
        if isinstance(value, bool):
            raise FieldError(f"expected an integer, got {describe(value)}")
        if isinstance(value, int):
            return value
        # Plain ASCII digits only, as written: str.isdigit() takes '٣' and '³', int() takes ' 3 ', '+3' and '1_0'
        # (and YAML 1.1 reads `1_0` as 10 and `0x10` as 16), none of which a person means as a count or a seed.
        if isinstance(value, str) and _INTEGER.fullmatch(value):
            if len(value.lstrip("-")) > _MAX_DIGITS:  # int() of 5,000 digits raises; any bound is far below
                raise FieldError(f"{self._range_message(None)}, got {shorten(value)}")
            return int(value)
        raise FieldError(f"expected an integer, got {describe(value)}")

    def _range_message(self, number: int | None) -> str:
        got = "" if number is None else f", got {number}"
        huge = self.maximum is None or self.maximum >= MAX_SEED
        if number is None or (huge and self.maximum is not None and number > self.maximum):
            return f"too large: expected an integer from {self.minimum} to {self.maximum}{got}"
        if huge:  # a bound far out of reach is noise in `got 0`
            return f"expected an integer >= {self.minimum}{got}"
        return f"expected an integer from {self.minimum} to {self.maximum}{got}"

    def _references(self, value: Any) -> RefList:
        """A list of references: a YAML list, a CSV cell holding a JSON array, or one reference alone."""
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):
                raise FieldError('expected a JSON array of references, like ["https://…/a.png"]') from None
        items: Sequence[Any] = value if isinstance(value, list) else [value]
        if not items:
            raise FieldError("an empty list: leave the field out instead")
        if len(items) > self.max_items:
            raise FieldError(f"{len(items)} references; at most {self.max_items}")
        made = RefList()
        for position, item in enumerate(items, start=1):
            try:
                made.append(self._reference(item))
            except FieldError as exc:
                raise FieldError(f"item {position}: {exc}") from None
        return made

    def _reference(self, value: Any) -> str:
        """An https URL the card's rule accepts, a data URI of one of the card's types, or (where the card takes
        data URIs) a local file's name, returned as written."""
        if not isinstance(value, str) or not value.strip():
            raise FieldError(f"expected an https:// URL of an image; got {describe(value)}")
        text = value.strip()
        if len(text) > MAX_TEXT and not text.startswith("data:"):
            raise FieldError(f"too long ({len(text):,} characters; the limit is {MAX_TEXT:,})")
        if text.startswith("data:"):
            match = _DATA_URI.fullmatch(text)
            if not self.data_types:
                raise FieldError("a data URI is not accepted here: give an https:// URL")
            if match is None or match.group(1).lower() not in self.data_types:
                raise FieldError(f"expected a base64 data URI of type {', '.join(self.data_types)}")
            return text
        if self.data_types and "://" not in text:
            return text  # a local file: manifest.py checks it (inside the manifest's folder, an image) and hashes it
        try:
            parts = urlsplit(text)
        except ValueError:
            parts = None
        if parts is None or parts.scheme != "https" or not parts.hostname or any(c.isspace() for c in text):
            raise FieldError(f"expected an https:// URL of an image; got {shorten(text)!r}")
        if self.suffixes and not parts.path.lower().endswith(self.suffixes):
            raise FieldError(f"the URL's path must end in {', '.join(self.suffixes)}; got {shorten(text)!r}")
        return text


def suggest(name: str, known: Sequence[str]) -> str | None:
    """The known name nearest to `name`, if any is close (`aspect-ratio` -> `aspect_ratio`)."""
    folded = name.strip().lower().replace("-", "_").replace(" ", "_").removeprefix("input.")
    by_fold = {k.lower(): k for k in known}
    if folded in by_fold:
        return by_fold[folded]
    close = difflib.get_close_matches(folded, list(by_fold), n=1, cutoff=0.7)
    return by_fold[close[0]] if close else None


def describe(value: Any) -> str:
    """A short description of a value for an error message, never its whole contents."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return repr(shorten(value))
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
