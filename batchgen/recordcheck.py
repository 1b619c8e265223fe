"""Whether a document read from disk fits the ledger's record schema (records.Record), and the record states.

results.json and its journals are documents people open and edit; a record is whole or the snapshot is damaged
(records.load then rebuilds it from the journals, or refuses with nothing changed).
"""

from __future__ import annotations

import json
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
    if error is not None and not (
        isinstance(error, dict)
        and isinstance(error.get("kind"), str)
        and isinstance(error.get("message"), str)
        and (error.get("code") is None or type(error["code"]) in (str, int))
    ):
        return f"error is {shown(error)}, not null or {{kind, code, message}}"
    if record.get("decision", "approved") not in ("approved", "rejected"):
        return f"decision is {shown(record['decision'])}, not approved or rejected"
    if "rolls" in record or "roll" in record:
        rolls = record.get("rolls", [])
        if not isinstance(rolls, list) or not all(
            isinstance(r, dict) and _names(r.get("files", [])) for r in [*rolls, record.get("roll", {})]
        ):
            return f"rolls is {shown(rolls)}, not a list of rolls"
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
