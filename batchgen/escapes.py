"""Outside text made harmless for a terminal: what the service, a manifest or a file says is data, never control.

A failMsg holding `ESC ]0;title BEL`, `ESC [2J`, a `\\r` or a newline would retitle or clear the operator's
terminal, or forge a log line of its own; U+202E would show the rest of a line reversed. `visible` turns every
such character into an escape a person can read (`\\x1b`, `\\r`, `\\n`, `\\u202e`), so one record stays one line.
`visible_json` does the same for the few such characters JSON itself leaves raw (C1 controls, bidi controls,
U+2028/U+2029), which only ever occur inside JSON strings, so the document stays the same valid JSON.
`inert_line` escapes every non-printable character of a short line (a message naming outside text), and `flat`
turns them into spaces (outside prose shown or matched as words). One function per meaning: no module keeps its
own.
"""

from __future__ import annotations

# Bidirectional controls (Unicode UAX #9): embeddings, overrides, isolates and marks.
BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
LINE_SEPARATORS = (0x2028, 0x2029)
_NAMED = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}


def _escape(code: int) -> str:
    if code in _NAMED:
        return _NAMED[code]
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


_CONTROL = [*range(0x00, 0x20), *range(0x7F, 0xA0)]  # C0, DEL, C1 (0x9B is a one-byte CSI to some terminals)
_VISIBLE = {code: _escape(code) for code in (*_CONTROL, *BIDI, *LINE_SEPARATORS)}
_JSON_RAW = {code: f"\\u{code:04x}" for code in (*range(0x7F, 0xA0), *BIDI, *LINE_SEPARATORS)}


def visible(text: str) -> str:
    """`text` with every control, bidi control and line break shown as an escape: one line, inert."""
    return text.translate(_VISIBLE)


def visible_json(document: str) -> str:
    """A JSON document (from json.dumps) with the controls JSON does not escape escaped as \\uXXXX."""
    return document.translate(_JSON_RAW)


def inert_line(text: object, width: int | None = 300) -> str:
    """Outside text as one short line for a message or a log (the night's end, a remembered service's names, a
    card's file name): every character that is not printable (controls, escape sequences, bidi and other format
    characters) escaped, cut at `width` (None: never cut)."""
    line = "".join(
        ch
        if ch.isprintable() and not 0x202A <= ord(ch) <= 0x202E and not 0x2066 <= ord(ch) <= 0x2069
        else ch.encode("unicode_escape").decode("ascii")
        for ch in str(text)
    )
    return line if width is None or len(line) <= width else line[: width - 1] + "…"


def flat(text: str) -> str:
    """Outside text as prose on one line (a plan's prompt, the service's words about a model): every character
    that is not printable becomes a space, and each run of spaces one. What it said is kept, its layout not."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())
