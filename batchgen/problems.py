"""Problem collection for a manifest (and the files it names): every problem is gathered, never raised one by one,
located by file, line and field on one printable line, and raised together as one ManifestError. With the
messages for text a manifest cannot hold (not UTF-8-writable, a NUL) and for an unknown field, shared by the
readers (readers.py), the expansion (expand.py) and the validation (manifest.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from . import schema
from .errors import ManifestError, Problem

MAX_PROBLEMS = 1000  # beyond this many, the rest are counted, not listed


class Collector:
    """Gathers problems for one file, up to MAX_PROBLEMS listed. `count` counts every `add`, listed or not."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self.dropped = 0
        self.count = 0
        self._distinct: set[Problem] | None = None

    def add(self, line: int | None, message: str, item: str | None = None, field: str | None = None) -> None:
        self.count += 1
        if field is not None and (len(field) > 60 or not field.isprintable()):
            field = repr(schema.shorten(field))  # a key with a newline or a megabyte of text: one short line
        problem = Problem(self.file, line, message, item, field)
        if self._distinct is not None:
            if problem in self._distinct:
                return
            self._distinct.add(problem)
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)
        else:
            self.dropped += 1

    @contextmanager
    def distinct(self) -> Iterator[None]:
        """List each problem once inside: the cells of a matrix repeat their template's problems."""
        self._distinct = set()
        try:
            yield
        finally:
            self._distinct = None

    def raise_if_any(self) -> None:
        if self.dropped:
            self.problems.append(Problem(self.file, None, f"… and {self.dropped} more problems not listed"))
        if self.problems:
            raise ManifestError(self.problems)


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
NUL = "contains a NUL character (a \\0 escape): text fields cannot hold one"
UNENCODABLE_HINT = "; write the character itself, or one \\U0001F600-style escape, not a \\ud83d\\ude00 pair"


def unknown_field_message(name: str, known: tuple[str, ...] = schema.MANIFEST_FIELDS) -> str:
    hint = schema.suggest(name, known)
    return f"unknown field; did you mean {hint!r}?" if hint else f"unknown field; known fields are {', '.join(known)}"
