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

import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from . import snapshots
from .errors import LedgerError
from .failures import Kind
from .files import STATE_DIR, NotRegular, TooLarge, read_file
from .recordcheck import STATES as STATES
from .recordcheck import State as State
from .recordcheck import document_problem, record_problem, shown

VERSION = 1
VERSION_REVIEWED = 2  # a ledger with review decisions, rolls or per-model prices (SPEC §4); version 1 is still read

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


def submitting(record: Record) -> bool:
    """A createTask call is under way (on disk: the run died inside it)."""
    return record.get("submitting", False)


def cost(record: Record) -> dict[str, float]:
    """The service's billing fields from recordInfo, if it sent any."""
    return record.get("cost") or {}


def request_input(record: Record) -> dict[str, Any]:
    """The request's `input` (prompt, seed, ...), empty when there is no request."""
    return input_of(record["request"])


def input_of(request: Mapping[str, Any] | None) -> dict[str, Any]:
    """A request's `input` (a record's or a manifest item's), empty when there is none."""
    return (request or {}).get("input") or {}


def files_before(record: Record) -> list[str]:
    """The names an item had before it was fetched again (its files were gone); removed once it has new ones."""
    return record.get("files_before", [])


def model(record: Record) -> str | None:
    """The model the record's request names, if it names one."""
    name = (record["request"] or {}).get("model")
    return name if isinstance(name, str) else None


def error_code(error: Mapping[str, Any]) -> str | int | None:
    """An error's code, as recorded: it may be missing in a hand-made ledger (record_problem lets it)."""
    code: str | int | None = error.get("code")
    return code


def decision(record: Record) -> str | None:
    """The latest review decision on the item's current image (`approved`, `rejected`), copied in by a run."""
    return record.get("decision")


def reroll_failed(record: Record) -> ErrorRecord | None:
    """Why the item's last re-roll failed for good (it kept its earlier files), or None."""
    return record.get("reroll_failed")


Roll = dict[str, Any]  # one roll (rolls.py): n, task_id, request_sent, seed, files, sha256, decision[, error]


def rolls(record: Record) -> list[Roll]:
    """Every roll of the item (roll 1 its first image); empty for an item never re-rolled."""
    return record.get("rolls", [])


def open_roll(record: Record) -> Roll | None:
    """The re-roll under way (n, seed, request_sent, keep), or None."""
    return record.get("roll")


def seed(entry: Mapping[str, Any] | None) -> int | None:
    """The seed of a roll or of a request's input, when it is an integer."""
    value = (entry or {}).get("seed")
    return value if type(value) is int else None


def roll_files(roll: Roll) -> list[str]:
    """The files a roll gave (its `~roll<k>` names once a later roll replaced them)."""
    files: list[str] = roll.get("files", [])
    return files


def roll_keep(roll: Roll) -> list[str]:
    """Where an open roll moves the current files once its own are verified (their `~roll<k>` names)."""
    keep: list[str] = roll.get("keep", [])
    return keep


def roll_number(roll: Roll, default: int) -> int:
    """A roll's number (1: the item's first image), `default` for an entry without one."""
    number: int = roll.get("n", default)
    return number


def roll_fields(roll: Roll, names: tuple[str, ...]) -> Roll:
    """A roll's fields of these names, None for one it lacks (an open roll becoming an entry of `rolls`)."""
    return {name: roll.get(name) for name in names}


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
        document = _read_snapshot(snapshot, journal.written)
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


def _read_snapshot(path: Path, written: object = None) -> dict[str, Any]:
    """A snapshot's document; _Damaged if it is not a whole, well-formed ledger; LedgerError if it is newer."""
    try:
        document, stamped = snapshots.read_stamped(path, LEDGER_LIMIT, written)  # in pieces: ~50 MB for 100,000
    except (NotRegular, TooLarge) as exc:
        raise _unreadable(path, exc) from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # snapshots.DuplicateKey: a key written twice
        why = f"damaged: {exc}" if isinstance(exc, snapshots.DuplicateKey) else f"not valid JSON ({exc})"
        raise _Damaged(f"{path} is {why}") from exc
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
    for item_id, record in document["items"].items():  # the writer's own file: its records passed on their way in
        if not isinstance(record, dict):
            raise _Damaged(f"{path}: item {item_id!r} is {shown(record)}, not a record")
        if not stamped and (problem := record_problem(record)):
            raise _Damaged(f"{path}: item {item_id!r} is damaged: {problem}")
    return document


LEDGER_LIMIT = 512 * 1024 * 1024  # bytes: a 100,000-item ledger is ~50 MB; this is a sanity bound only


def _bytes(path: Path) -> bytes:
    """A ledger file's bytes, read like every input: a FIFO or a device planted at its name is refused (report,
    status and run would otherwise wait on it for ever, or read /dev/zero until the memory is gone)."""
    try:
        return read_file(path, LEDGER_LIMIT)[0]
    except (NotRegular, TooLarge) as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: OSError) -> LedgerError:
    return LedgerError(f"cannot read {path}: {exc}; a ledger file is a regular file batchgen wrote")


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
    written: object = None  # that snapshot's stamp as its writer took it (snapshots.stamp), when the header has it


def _read_journal(path: Path, *, strict: bool = False) -> _Journal:
    """A journal's header and entries, and the length of its whole lines. A torn last line is dropped."""
    if not path.exists():
        return _Journal([], 0, None)
    data = _bytes(path)
    entries: list[tuple[str, Record]] = []
    good = 0
    base: int | None = None
    written: object = None
    for number, (text, end) in enumerate(_lines(data), start=1):
        try:
            entry = snapshots.strict_loads(text)  # a key twice (a paid record's "state" again...): damaged
            if number == 1 and isinstance(entry, dict) and "base" in entry and "id" not in entry:
                if not isinstance(entry["base"], int):
                    raise TypeError("not a journal header")
                base, written, good = entry["base"], entry.get("snapshot"), end
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
    return _Journal(entries, good, base, written)


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
