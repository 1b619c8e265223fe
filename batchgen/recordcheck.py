"""Whether a document read from disk fits the ledger's record schema (records.Record), and the record states.

results.json and its journals are documents people open and edit; a record is whole or the snapshot is damaged
(records.load then rebuilds it from the journals, or refuses with nothing changed).
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

State = Literal["pending", "submitted", "succeeded", "failed"]
STATES: tuple[State, ...] = ("pending", "submitted", "succeeded", "failed")


def record_problem(record: dict[str, Any]) -> str | None:
    """Why a record read from disk does not fit the Record schema, or None; a missing field is filled in.

    results.json is a document people open and edit. A field of the wrong type (`files: 5`, `attempts: "many"`,
    `request: {"input": "x"}`) would otherwise surface as a traceback in whichever command reads it first, or as
    a request that never equals the manifest's (paid again). So a record is whole or the snapshot is damaged: the
    loader then rebuilds it from the journals, or refuses with nothing changed. Fields this schema does not know
    are left alone; a missing one takes its value in a new record (an older or trimmed ledger)."""
    state = record.get("state")
    if state not in STATES:
        return f"state is {shown(state)}, not one of {', '.join(STATES)}"
    if not _DEFAULTS.keys() <= record.keys():
        for name, default in _DEFAULTS.items():
            if name not in record:
                record[name] = default.copy() if isinstance(default, list) else default
    task_id = record["task_id"]
    if not (task_id is None or (isinstance(task_id, str) and task_id)):
        return f"task_id is {shown(task_id)}, not a task id"
    if state == "submitted" and task_id is None:
        return "state is submitted, but it has no task_id"
    for name in ("attempts", "paid", "in_doubt"):
        value = record.get(name, 0)
        if type(value) is not int or value < 0:
            return f"{name} is {shown(value)}, not a count"
    for name in ("submitting", "doubt_open"):
        if type(record.get(name, False)) is not bool:
            return f"{name} is {shown(record.get(name))}, not true or false"
    request = record["request"]
    if request is not None:
        if not isinstance(request, dict) or not isinstance(request.get("model", ""), str):
            return f"request is {shown(request)}, not a request"
        if not isinstance(request.get("input", {}), dict):
            return f"request.input is {shown(request['input'])}, not a mapping"
    for name in ("files", "sha256", "files_before"):
        value = record.get(name, [])
        # Names that leave DIR are harmless here: the sheet links none and nothing deletes one (download.py).
        if not _names(value):
            return f"{name} is {shown(value)}, not a list of names"
    error = record["error"]
    if error is not None and not _is_error(error):
        return f"error is {shown(error)}, not null or {{kind, code, message}}"
    if record.get("decision", "approved") not in ("approved", "rejected"):
        return f"decision is {shown(record['decision'])}, not approved or rejected"
    if "rolls" in record or "roll" in record:  # asked first: most of 100,000 records have neither
        rolls = record.get("rolls", [])
        if not isinstance(rolls, list) or not all(_roll_problem(r) is None for r in rolls):
            return f"rolls is {shown(rolls)}, not a list of rolls"
        if "roll" in record and (why := _roll_problem(record["roll"], open_roll=True)):
            return f"roll is {shown(record['roll'])}, not a re-roll under way ({why})"
    if (failed := record.get("reroll_failed")) is not None and not _is_error(failed):
        return f"reroll_failed is {shown(failed)}, not null or {{kind, code, message}}"
    if "cost" in record:
        cost = record["cost"] or {}
        if not isinstance(cost, dict) or not all(_is_number(v) for v in cost.values()):
            return f"cost is {shown(cost)}, not the service's billing figures"
    for name in ("submitted_at", "finished_at"):
        if not (record[name] is None or isinstance(record[name], str)):
            return f"{name} is {shown(record[name])}, not a time"
    return None


def _names(value: Any) -> bool:
    """Whether `value` is a list of strings (a loop, not all() of a generator: 300,000 calls on a resume)."""
    if not isinstance(value, list):
        return False
    for entry in value:  # noqa: SIM110
        if not isinstance(entry, str):
            return False
    return True


def _is_error(error: Any) -> bool:
    return (
        isinstance(error, dict)
        and isinstance(error.get("kind"), str)
        and isinstance(error.get("message"), str)
        and (error.get("code") is None or type(error["code"]) in (str, int))
    )


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _roll_problem(roll: Any, *, open_roll: bool = False) -> str | None:
    """Why one roll (an entry of `rolls`, or the open `roll`) does not fit rolls.py's shape, or None. Each field
    is optional in an entry (an older ledger); the open roll has its number, which the run that finishes it uses."""
    if not isinstance(roll, dict):
        return "not a mapping"
    if open_roll and "n" not in roll:
        return "no n"
    n = roll.get("n", 1)
    if type(n) is not int or n < 1:
        return "n is not a roll number"
    for name in ("files", "sha256", "keep"):
        if not _names(roll.get(name, [])):
            return f"{name} is not a list of names"
    if not (roll.get("task_id") is None or isinstance(roll["task_id"], str)):
        return "task_id is not a task id"
    if not (roll.get("request_sent") is None or isinstance(roll["request_sent"], dict)):
        return "request_sent is not a request"
    if roll.get("decision") not in (None, "approved", "rejected"):
        return "decision is not approved or rejected"
    if roll.get("error") is not None and not _is_error(roll["error"]):
        return "error is not {kind, code, message}"
    return None


_DEFAULTS: dict[str, Any] = {
    "task_id": None,
    "attempts": 0,
    "request": None,
    "files": [],
    "sha256": [],
    "error": None,
    "submitted_at": None,
    "finished_at": None,
}


def shown(value: Any) -> str:
    """A value read from disk, as a short JSON text for a message."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:39] + "…"


def document_problem(document: dict[str, Any]) -> str | None:
    """Why a snapshot's own fields (beside its items) do not fit, or None."""
    retired = document.get("not_in_manifest")
    if retired is not None and not (isinstance(retired, list) and all(isinstance(i, str) for i in retired)):
        return f"not_in_manifest is {shown(retired)}, not a list of ids"
    for name in ("manifest", "updated_at"):
        if not (document.get(name) is None or isinstance(document[name], str)):
            return f"{name} is {shown(document[name])}, not text"
    return None
