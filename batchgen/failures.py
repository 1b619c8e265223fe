"""The one table that says which task failures are worth paying for another submission.

A task that ends in `fail` carries failCode and failMsg. Transient failures (an internal error, "try again
later") are resubmitted, up to --max-attempts submissions in all; content-policy and validation failures never
are, and neither is anything we do not recognise: a resubmission costs money, so the default is "no".
"""

from __future__ import annotations

from typing import Literal

Kind = Literal["transient", "policy", "invalid", "unknown"]

# (kind, what to look for in failCode or failMsg, lower-cased). The first row that matches wins.
TABLE: tuple[tuple[Kind, tuple[str, ...]], ...] = (
    ("policy", ("content polic", "flagged", "safety", "violat", "prohibited", "nsfw", "sensitive")),
    ("invalid", ("invalid", "validation", "not supported", "unsupported", "required", "400", "422")),
    (
        "transient",
        (
            "500",
            "502",
            "503",
            "504",
            "internal error",
            "try again",
            "timeout",
            "timed out",
            "busy",
            "overload",
            "saturat",
            "unavailable",
            "upstream",
        ),
    ),
)


def classify(fail_code: str | None, fail_message: str | None) -> Kind:
    """What kind of failure a failCode/failMsg pair is."""
    text = f"{fail_code or ''} {fail_message or ''}".lower()
    for kind, needles in TABLE:
        if any(needle in text for needle in needles):
            return kind
    return "unknown"
