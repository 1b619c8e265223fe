"""The one table that says which task failures are worth paying for another submission.

A task that ends in `fail` carries failCode and failMsg. Transient failures (an internal error, "try again
later") are resubmitted, up to --max-attempts submissions in all; content-policy and validation failures never
are, and neither is anything we do not recognise: a resubmission costs money, so the default is "no".

`Kind` is every kind of failure an item can end with, spelled as the ledger keeps it (`error.kind` in
results.json): the four of this table, and the failures batchgen itself decides.
"""

from __future__ import annotations

from typing import Literal

TaskKind = Literal["task_transient", "task_policy", "task_invalid", "task_unknown"]  # this table's verdicts
Kind = Literal[
    "task_transient",  # the service's task failed and may succeed again: resubmitted up to --max-attempts
    "task_policy",  # refused for its content: change the prompt
    "task_invalid",  # refused as invalid: fix the item
    "task_unknown",  # anything else the task failed with: never resubmitted on its own
    "rejected",  # createTask refused the request (400, 413, 422)
    "bad_result",  # a result URL that cannot or must not be fetched, or a result that is not an image
    "no_result",  # the task succeeded without a usable result
    "lost",  # the service no longer knows the task, created over a day ago
    "duplicate_task",  # the service gave this item a task id it had given another
    "bad_task_id",  # the service gave a task id no status query can carry (too long): paid, never answerable
    "refused",  # the service or a gateway refused this one request (401/403) while other items went through
    "model_unavailable",  # the service does not offer the item's model (gone.py); its next run probes it
]

# (kind, what to look for in failCode or failMsg, lower-cased). The first row that matches wins.
TABLE: tuple[tuple[TaskKind, tuple[str, ...]], ...] = (
    ("task_policy", ("content polic", "flagged", "safety", "violat", "prohibited", "nsfw", "sensitive")),
    ("task_invalid", ("invalid", "validation", "not supported", "unsupported", "required", "400", "422")),
    (
        "task_transient",
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


def classify(fail_code: str | None, fail_message: str | None) -> TaskKind:
    """What kind of failure a failCode/failMsg pair is."""
    text = f"{fail_code or ''} {fail_message or ''}".lower()
    for kind, needles in TABLE:
        if any(needle in text for needle in needles):
            return kind
    return "task_unknown"
