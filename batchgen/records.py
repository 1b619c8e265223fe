"""The ledger on disk, read: the record schema, results.json with its journals replayed over it, and the rebuild
of a missing or damaged results.json. Nothing here writes but `keep_damaged` (a rename); the open, locked ledger
that changes records is `ledger.Ledger`.

Each snapshot has a generation number, and each journal starts with a header line naming the generation it
follows (`{"base": N}`; 0 for an empty ledger). So a deleted or damaged results.json is rebuilt only when the
material left provably covers the whole history — previous.json and the journals that lead on from it, or, for a
ledger that never had two snapshots, the journals from generation 0 — and refused otherwise: a DIR with journals
is never taken for a fresh start (that would pay for every item again).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

from . import snapshots
from .errors import LedgerError
from .failures import Kind
from .files import STATE_DIR

VERSION = 1
VERSION_REVIEWED = 2  # a ledger with review decisions, rolls or per-model prices (SPEC §4); version 1 is still read
State = Literal["pending", "submitted", "succeeded", "failed"]
STATES: tuple[State, ...] = ("pending", "submitted", "succeeded", "failed")

RESULTS = "results.json"
JOURNAL = "journal.jsonl"
PREVIOUS = "previous.json"  # the snapshot before results.json ...
PREVIOUS_JOURNAL = "previous-journal.jsonl"  # ... and the journal from it to results.json: recovery material


class ErrorRecord(TypedDict):
    kind: Kind  # failures.Kind: one spelling, on disk and in the code
    code: str | None
    message: str


class Record(TypedDict):
    """One item's entry in results.json (SPEC §4). engine, plan and report read records through this schema."""

    state: State
    task_id: str | None
    attempts: int  # submissions of the current request (reset when the request changes or on --retry-failed)
    request: dict[str, Any] | None
    files: list[str]
    sha256: list[str]
    error: ErrorRecord | None
    submitted_at: str | None
    finished_at: str | None
    paid: NotRequired[int]  # createTask answers that carried a task id, over the item's whole life: never reset
    in_doubt: NotRequired[int]  # createTask calls that may have been paid without our knowing the task id
    submitting: NotRequired[bool]  # a createTask call is under way (on disk: the run died inside it)
    doubt_open: NotRequired[bool]  # the last create may have been paid and no task id came since: warn on resubmit
    cost: NotRequired[dict[str, float]]  # the service's billing fields from recordInfo (never a callback)
    sha256_received: NotRequired[list[str]]  # with --metadata: of each file as received (`sha256`: as kept)
    files_before: NotRequired[list[str]]  # fetched again (files gone): the names it had, removed once it has new ones
    rolls: NotRequired[list[dict[str, Any]]]  # every roll: n, task_id, request_sent, seed, files, sha256, decision
    roll: NotRequired[dict[str, Any]]  # a re-roll under way: n, seed, request_sent, keep (rolls.py)
    reroll_failed: NotRequired[ErrorRecord]  # the last re-roll failed for good; the item kept its files
    decision: NotRequired[str]  # the latest review decision on this task's image (decisions.py), copied by a run


# Typed readers. A record read from disk holds every required field (record_problem fills in a missing one) and a
# record made in memory starts whole (new_record), so those are read as `record[name]`; these read the fields a
# record may lack, and the request's input, with their meaning in one place.


def paid(record: Record) -> int:
    """createTask answers that carried a task id, over the item's whole life."""
    return record.get("paid", 0)


def paid_total(items: Mapping[str, Record]) -> int:
    """Every paid create the ledger counts, over every item's life, listed or not: spend so far = this x price.
    The one place it is summed (the run's summary and `status` both read it)."""
    return sum(paid(record) for record in items.values())


def in_doubt(record: Record) -> int:
    """createTask calls that may have been paid without our learning the task id: counted, or under way."""
    return record.get("in_doubt", 0) + record.get("submitting", False)


def doubt_open(record: Record) -> bool:
    """Whether the item's last create may have been paid, with no task id since (the next create warns)."""
    return record.get("doubt_open", False) or record.get("submitting", False)


def cost(record: Record) -> dict[str, float]:
    """The service's billing fields from recordInfo, if it sent any."""
    return record.get("cost") or {}


def request_input(record: Record) -> dict[str, Any]:
    """The request's `input` (prompt, seed, ...), empty when there is no request."""
    return (record["request"] or {}).get("input") or {}


def error_record(kind: Kind, code: str | None, message: str) -> ErrorRecord:
    return {"kind": kind, "code": code, "message": message}


def new_record(request: dict[str, Any] | None) -> Record:
    return {
        "state": "pending",
        "task_id": None,
        "attempts": 0,
        "request": request,
        "files": [],
        "sha256": [],
        "error": None,
        "submitted_at": None,
        "finished_at": None,
    }


def record_problem(record: dict[str, Any]) -> str | None:
    """Why a record read from disk does not fit the Record schema, or None; a missing field is filled in.

    results.json is a document people open and edit. A field of the wrong type (`files: 5`, `attempts: "many"`,
    `request: {"input": "x"}`) would otherwise surface as a traceback in whichever command reads it first, or as
    a request that never equals the manifest's (paid again). So a record is whole or the snapshot is damaged: the
    loader then rebuilds it from the journals, or refuses with nothing changed. Fields this schema does not know
    are left alone; a missing one takes its value in a new record (an older or trimmed ledger)."""
    state = record.get("state")
    if state not in STATES:
        return f"state is {_shown(state)}, not one of {', '.join(STATES)}"
    if not _DEFAULTS.keys() <= record.keys():
        for name, default in _DEFAULTS.items():
            if name not in record:
                record[name] = default.copy() if isinstance(default, list) else default
    task_id = record["task_id"]
    if not (task_id is None or (isinstance(task_id, str) and task_id)):
        return f"task_id is {_shown(task_id)}, not a task id"
    if state == "submitted" and task_id is None:
        return "state is submitted, but it has no task_id"
    for name in ("attempts", "paid", "in_doubt"):
        value = record.get(name, 0)
        if type(value) is not int or value < 0:
            return f"{name} is {_shown(value)}, not a count"
    for name in ("submitting", "doubt_open"):
        if type(record.get(name, False)) is not bool:
            return f"{name} is {_shown(record.get(name))}, not true or false"
    request = record["request"]
    if request is not None:
        if not isinstance(request, dict) or not isinstance(request.get("model", ""), str):
            return f"request is {_shown(request)}, not a request"
        if not isinstance(request.get("input", {}), dict):
            return f"request.input is {_shown(request['input'])}, not a mapping"
    for name in ("files", "sha256", "files_before"):
        value = record.get(name, [])
        # Names that leave DIR are harmless here: the sheet links none and nothing deletes one (download.py).
        if not _names(value):
            return f"{name} is {_shown(value)}, not a list of names"
    error = record["error"]
    if error is not None and not (
        isinstance(error, dict)
        and isinstance(error.get("kind"), str)
        and isinstance(error.get("message"), str)
        and (error.get("code") is None or type(error["code"]) in (str, int))
    ):
        return f"error is {_shown(error)}, not null or {{kind, code, message}}"
    if record.get("decision", "approved") not in ("approved", "rejected"):
        return f"decision is {_shown(record['decision'])}, not approved or rejected"
    if "rolls" in record or "roll" in record:
        rolls = record.get("rolls", [])
        if not isinstance(rolls, list) or not all(
            isinstance(r, dict) and _names(r.get("files", [])) for r in [*rolls, record.get("roll", {})]
        ):
            return f"rolls is {_shown(rolls)}, not a list of rolls"
    for name in ("submitted_at", "finished_at"):
        if not (record[name] is None or isinstance(record[name], str)):
            return f"{name} is {_shown(record[name])}, not a time"
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


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:39] + "…"


def document_problem(document: dict[str, Any]) -> str | None:
    """Why a snapshot's own fields (beside its items) do not fit, or None."""
    retired = document.get("not_in_manifest")
    if retired is not None and not (isinstance(retired, list) and all(isinstance(i, str) for i in retired)):
        return f"not_in_manifest is {_shown(retired)}, not a list of ids"
    for name in ("manifest", "updated_at"):
        if not (document.get(name) is None or isinstance(document[name], str)):
            return f"{name} is {_shown(document[name])}, not text"
    return None


@dataclass(slots=True)
class Loaded:
    """What a ledger directory holds: records by id, the manifest it was made for, the journal's length."""

    items: dict[str, Record]
    manifest: str | None
    updated_at: str | None
    journal_bytes: int  # the length of the journal's whole lines (a torn tail is beyond it)
    not_in_manifest: frozenset[str] = frozenset()
    damaged: str | None = None  # why results.json could not be used, when the state was recovered without it
    generation: int = 0  # of the snapshot the state was loaded from (0: none)
    replayed: int = 0  # journal records replayed over the snapshot (changes it does not hold yet)
    price: str | None = None  # the price per image the last run with --price recorded (a decimal string)
    cards: dict[str, Any] | None = None  # the model cards runs used: model -> {sha256, source}


def exists(directory: Path) -> bool:
    """Whether DIR has a ledger (or the remains of one) at all."""
    return (directory / RESULTS).exists() or (directory / STATE_DIR).exists()


def load(directory: Path) -> Loaded:
    """Read results.json and replay the journal over it, without taking the lock or writing anything.

    A missing or damaged results.json (not JSON, not a ledger, a record without a valid state) is rebuilt from
    the previous snapshot and the journals since it, when they provably cover the whole history; otherwise
    LedgerError. A DIR whose journals hold records is never read as an empty ledger.
    """
    folder = directory / STATE_DIR
    snapshot = directory / RESULTS
    journal = _read_journal(folder / JOURNAL)
    if not snapshot.exists():
        if (folder / PREVIOUS).exists() or (folder / PREVIOUS_JOURNAL).exists():
            return _recover(directory, journal, f"{snapshot} is missing")
        if journal.base not in (None, 0):
            return _recover(directory, journal, f"{snapshot} is missing")
        # No snapshot was ever made: the journal (from an empty ledger) is the whole state.
        return Loaded(_replay({}, journal.entries), None, None, journal.good, replayed=len(journal.entries))
    try:
        document = _read_snapshot(snapshot)
    except _Damaged as exc:
        return _recover(directory, journal, str(exc))
    retired = frozenset(document.get("not_in_manifest") or ())
    return Loaded(
        _replay(document["items"], journal.entries),
        document.get("manifest"),
        document.get("updated_at"),
        journal.good,
        retired,
        generation=_generation(document),
        replayed=len(journal.entries),
        price=_price(document),
        cards=_cards(document),
    )


def _price(document: dict[str, Any]) -> str | None:
    value = document.get("price")
    return value if isinstance(value, str) else None


def _cards(document: dict[str, Any]) -> dict[str, Any] | None:
    value = document.get("cards")
    return dict(value) if isinstance(value, dict) else None


def price_of(text: str | None) -> Decimal | None:
    """A recorded price per image, or None when there is none (or it is not a finite number)."""
    if text is None:
        return None
    try:
        price = Decimal(text)
    except InvalidOperation:
        return None
    return price if price.is_finite() else None


def _generation(document: dict[str, Any]) -> int:
    value = document.get("generation")
    return value if isinstance(value, int) and value >= 0 else 0


class _Damaged(Exception):
    pass


def _read_snapshot(path: Path) -> dict[str, Any]:
    """A snapshot's document; _Damaged if it is not a whole, well-formed ledger; LedgerError if it is newer."""
    try:
        document = snapshots.read(path)  # in pieces: the ~50 MB text of 100,000 items is never held whole
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _Damaged(f"{path} is not valid JSON ({exc})") from exc
    except OSError as exc:
        raise LedgerError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("items"), dict):
        raise _Damaged(f"{path} is not a batchgen ledger (no 'items' object)")
    version = document.get("version")
    if isinstance(version, int) and version > VERSION_REVIEWED:
        raise LedgerError(
            f"{path} is ledger version {version}; this batchgen reads up to version {VERSION_REVIEWED}. "
            "Use a newer batchgen, or another --out directory; the file was not changed"
        )
    if version not in (VERSION, VERSION_REVIEWED):
        raise _Damaged(f"{path} has no valid version (found {version!r})")
    if problem := document_problem(document):
        raise _Damaged(f"{path} is damaged: {problem}")
    for item_id, record in document["items"].items():
        if not isinstance(record, dict):
            raise _Damaged(f"{path}: item {item_id!r} is {_shown(record)}, not a record")
        if problem := record_problem(record):
            raise _Damaged(f"{path}: item {item_id!r} is damaged: {problem}")
    return document


def _recover(directory: Path, journal: _Journal, why: str) -> Loaded:
    """The state without results.json: the previous snapshot + the journal after it + the current journal.

    Journals with headers must chain: previous-journal follows previous.json's generation (or 0, an empty ledger,
    when there is no previous.json), and the current journal follows the snapshot after that. Anything else
    means history is missing, and rebuilding from it would resubmit (pay for) items already done: refused.
    """
    folder = directory / STATE_DIR
    refuse = (
        f"{why}; batchgen has changed nothing. Restore {RESULTS} from a backup, or move {directory} aside and "
        "start a new ledger elsewhere (items it held would be submitted, and paid for, again)"
    )
    base: dict[str, Any] = {"items": {}}
    if (folder / PREVIOUS).exists():
        try:
            base = _read_snapshot(folder / PREVIOUS)
        except _Damaged as exc:
            raise LedgerError(
                f"{why}, and so is its previous copy ({exc}). batchgen has changed neither. "
                "Restore results.json from a backup, or move it aside to start a new ledger "
                "(the images stay where they are)"
            ) from exc
    earlier = _read_journal(folder / PREVIOUS_JOURNAL, strict=True)
    if not (folder / PREVIOUS).exists() and not (folder / PREVIOUS_JOURNAL).exists() and not journal.entries:
        raise LedgerError(f"{why}, and there is no journal to rebuild it from. {refuse}")
    start = _generation(base)
    if earlier.base is not None and earlier.base != start:
        what = "previous.json is missing" if not (folder / PREVIOUS).exists() else "previous.json is out of step"
        raise LedgerError(f"{why}, and {what}: the journals left do not hold the whole history. {refuse}")
    expected = start + 1 if (folder / PREVIOUS_JOURNAL).exists() else start
    if journal.base is not None and earlier.base is not None and journal.base != expected:
        raise LedgerError(f"{why}, and the journals do not follow on from each other. {refuse}")
    items = _replay(_replay(base["items"], earlier.entries), journal.entries)
    return Loaded(
        items,
        base.get("manifest"),
        base.get("updated_at"),
        journal.good,
        frozenset(base.get("not_in_manifest") or ()),
        damaged=why,
        generation=journal.base if journal.base is not None else expected,
        price=_price(base),
        cards=_cards(base),
    )


@dataclass(slots=True)
class _Journal:
    entries: list[tuple[str, Record]]
    good: int  # the length of its whole lines
    base: int | None  # the snapshot generation it follows (None: a journal from before headers, or none)


def _read_journal(path: Path, *, strict: bool = False) -> _Journal:
    """A journal's header and entries, and the length of its whole lines. A torn last line is dropped."""
    if not path.exists():
        return _Journal([], 0, None)
    data = path.read_bytes()
    entries: list[tuple[str, Record]] = []
    good = 0
    base: int | None = None
    for number, (text, end) in enumerate(_lines(data), start=1):
        try:
            entry = json.loads(text)
            if number == 1 and isinstance(entry, dict) and "base" in entry and "id" not in entry:
                if not isinstance(entry["base"], int):
                    raise TypeError("not a journal header")
                base = entry["base"]
                good = end
                continue
            item_id, record = entry["id"], entry["record"]
            if not isinstance(item_id, str) or not isinstance(record, dict):
                raise TypeError("not an item record")
            if problem := record_problem(record):
                raise TypeError(f"item {item_id!r}: {problem}")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            if end == len(data) and not data.endswith(b"\n") and not strict:
                break  # a torn last line: the write it belonged to never finished
            raise LedgerError(
                f"{path}: line {number} is damaged ({exc}); batchgen has not changed it. Move it "
                "aside to continue from results.json alone (changes since the last snapshot are "
                "then forgotten)"
            ) from exc
        entries.append((item_id, record))  # type: ignore[arg-type]  # checked above: a dict with a valid state
        good = end
    return _Journal(entries, good, base)


def _replay(items: dict[str, Record], journal: list[tuple[str, Record]]) -> dict[str, Record]:
    for item_id, record in journal:
        items[item_id] = record
    return items


def keep_damaged(directory: Path) -> None:
    """Move a damaged results.json aside (never delete it): results.json.damaged-<UTC time>."""
    damaged = directory / RESULTS
    if damaged.exists():
        os.replace(damaged, directory / f"{RESULTS}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")


def _lines(data: bytes) -> Iterator[tuple[bytes, int]]:
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end + 1
        yield data[start:end], end
        start = end


def header(generation: int) -> bytes:
    """A journal's first line: the snapshot generation its records follow."""
    return json.dumps({"base": generation}).encode() + b"\n"
