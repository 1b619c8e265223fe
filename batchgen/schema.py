"""The imagen4-ultra request schema, from the service's field table (shared/seeds).

One source for the manifest checks and for the simulator's own validation, so the two can never disagree
about what the service accepts. Pure data and pure functions: no I/O.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Literal

MODEL = "imagen4-ultra"

# The longest text we accept in any field. The service documents no limit; 20,000 characters is far beyond
# any useful prompt and keeps a runaway spreadsheet cell from becoming a paid request.
MAX_TEXT = 20_000

Kind = Literal["text", "enum", "int", "bool"]

_INTEGER = re.compile(r"-?[0-9]+")
_MAX_DIGITS = 40
# The seed table says only "at least 1". The service takes the request as JSON into typed fields; a seed beyond a
# signed 64-bit integer cannot be one there, so that is the bound we check (and name) rather than paying to learn.
MAX_SEED = 2**63 - 1

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


class FieldError(ValueError):
    """A value that the field does not accept; the message says why, without the field's name."""


@dataclass(frozen=True, slots=True)
class InputField:
    """One `input.*` field of the seed's table."""

    name: str
    kind: Kind
    choices: tuple[str, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)
    minimum: int | None = None
    maximum: int | None = None

    def normalise(self, value: Any) -> Any:
        """Return the canonical value, or raise FieldError saying what is wrong."""
        if self.kind == "text":
            if not isinstance(value, str):
                raise FieldError(f"expected text, got {describe(value)}")
            if not value.strip():
                raise FieldError("must not be blank")
            if len(value) > MAX_TEXT:
                raise FieldError(f"too long ({len(value):,} characters; the limit is {MAX_TEXT:,})")
            return value
        if self.kind == "enum":
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
        if self.kind == "int":
            number = self._as_int(value)
            if self.minimum is not None and number < self.minimum:
                raise FieldError(self._range_message(number))
            if self.maximum is not None and number > self.maximum:
                raise FieldError(self._range_message(number))
            return number
        # bool
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE:
            return True
        if isinstance(value, str) and value.strip().lower() in _FALSE:
            return False
        raise FieldError(f"expected true or false (or yes/no, 1/0); got {describe(value)}")

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


ASPECT_RATIOS = ("square_1_1", "social_story_9_16", "widescreen_16_9", "traditional_3_4", "classic_4_3")

INPUT_FIELDS: dict[str, InputField] = {
    f.name: f
    for f in (
        InputField("prompt", "text"),
        InputField(
            "aspect_ratio",
            "enum",
            ASPECT_RATIOS,
            {
                "1:1": "square_1_1",
                "9:16": "social_story_9_16",
                "16:9": "widescreen_16_9",
                "3:4": "traditional_3_4",
                "4:3": "classic_4_3",
            },
        ),
        InputField("person_generation", "enum", ("dont_allow", "allow_adult", "allow_all")),
        InputField(
            "safety_settings",
            "enum",
            ("block_low_and_above", "block_medium_and_above", "block_only_high", "block_none"),
        ),
        InputField("seed", "int", minimum=1, maximum=MAX_SEED),
        InputField("enhance_prompt", "bool"),
        InputField("language", "enum", ("auto", "en", "zh", "zh-CN", "hi", "ja", "ko", "pt", "es")),
        InputField("output_format", "enum", ("png", "jpeg"), {"jpg": "jpeg", "image/jpeg": "jpeg", "image/png": "png"}),
        InputField("compression_quality", "int", minimum=1, maximum=100),
    )
}

# Fields of an item outside `input`.
TOP_FIELDS = ("id", "model", "callBackUrl")
ALL_FIELDS = (*TOP_FIELDS, *INPUT_FIELDS)
# Fields a manifest item may have besides the request's: they make several items of one (expand.py).
EXPANSION_FIELDS = ("matrix", "count")
MANIFEST_FIELDS = (*ALL_FIELDS, *EXPANSION_FIELDS)

# Output size in pixels per aspect ratio: Imagen 4 Ultra's 2K outputs (the largest is 2816x1536).
IMAGE_SIZES: dict[str, tuple[int, int]] = {
    "square_1_1": (2048, 2048),
    "social_story_9_16": (1536, 2816),
    "widescreen_16_9": (2816, 1536),
    "traditional_3_4": (1792, 2368),
    "classic_4_3": (2368, 1792),
}

# File extension per output format, as written to the output directory.
EXTENSIONS = {"png": "png", "jpeg": "jpg"}


def suggest(name: str, known: tuple[str, ...] = ALL_FIELDS) -> str | None:
    """The known field name nearest to `name`, if any is close (`aspect-ratio` -> `aspect_ratio`)."""
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
