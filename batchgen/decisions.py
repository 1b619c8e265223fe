"""Review decisions: DIR/.batchgen/decisions.jsonl, the one file `batchgen review` writes (SPEC §4 "Review").

Each decision is one JSON line `{"id", "decision", "at", "task_id"}`, appended and fsync'd before the reviewer is
told it is kept. DIR's lock is never taken: a run may hold it all night, and review must work meanwhile. Writers
of this file (two review pages, say) serialise on a lock of the file itself, held for one append.

Reading is bounded and safe against a hostile folder: a regular file only, never through a symlink, at most
MAX_BYTES (the newest part when it is longer: the latest decisions are at its end), and a torn last line (a kill
inside an append) is dropped. The latest decision per item wins, and a decision counts only for an item the
ledger holds and for the task it judged: a decision about an image that was since generated again (a changed
request, a re-roll) no longer applies, so the new image starts undecided.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from .errors import UsageError
from .files import STATE_DIR, fsync_dir, read_bounded, state_dir
from .records import Record

if TYPE_CHECKING:
    from .ledger import Ledger

DECISIONS = "decisions.jsonl"
MAX_BYTES = 32 * 1024 * 1024  # ~300,000 decisions of ~100 bytes: far above any night's; a sanity bound only
MAX_LINE = 4096  # a decision line is ~150 bytes; an id is at most a few hundred

Decision = Literal["approved", "rejected"]
CHOICES: tuple[Decision, ...] = get_args(Decision)


@dataclass(frozen=True, slots=True)
class Entry:
    """One decision as kept: about which item, what, when (UTC), and the task whose image was judged."""

    item: str
    decision: Decision
    at: str
    task_id: str | None


def path_of(directory: Path) -> Path:
    return directory / STATE_DIR / DECISIONS


def append(directory: Path, item: str, decision: Decision, task_id: str | None) -> Entry:
    """Keep one decision: appended and fsync'd (file and folder) before returning. UsageError for a path that
    is a symlink or not a regular file; OSError (a full disk) is the caller's to report as not kept."""
    if decision not in CHOICES:
        raise ValueError(f"decision {decision!r} is not one of {', '.join(CHOICES)}")
    entry = Entry(item, decision, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), task_id)
    line = json.dumps(
        {"id": item, "decision": decision, "at": entry.at, "task_id": task_id},
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")
    folder = state_dir(directory)
    path = folder / DECISIONS
    created = not os.path.lexists(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(f"{path} is a symbolic link; batchgen keeps decisions only in a regular file") from exc
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{path} is not a regular file; move it away to keep decisions")
        fcntl.flock(fd, fcntl.LOCK_EX)  # another review page appending at this instant: one line after the other
        size = os.fstat(fd).st_size
        # A kill inside an earlier append left a torn line without its newline: end it, so this line stays whole.
        data = (b"\n" if size > 0 and os.pread(fd, 1, size - 1) != b"\n" else b"") + line + b"\n"
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(folder)
    return entry


def read_all(directory: Path) -> dict[str, Entry]:
    """The latest decision per item id, as written (whatever the ledger holds now); {} when there is no file or
    it cannot be read safely (a symlink, a FIFO, a folder): decisions are advisory and never stop a command."""
    data = read_bounded(path_of(directory), MAX_BYTES, "the decisions", follow=False, tail=True)
    if isinstance(data, str):
        return {}
    lines = data.split(b"\n")
    if data and not data.endswith(b"\n"):
        lines = lines[:-1]  # the torn last line of a killed append
    latest: dict[str, Entry] = {}
    for raw in lines:
        entry = _parse(raw)
        if entry is not None:
            latest.pop(entry.item, None)  # keep the order of the latest decisions
            latest[entry.item] = entry
    return latest


def _parse(raw: bytes) -> Entry | None:
    if not raw or len(raw) > MAX_LINE:
        return None
    with contextlib.suppress(ValueError, RecursionError):  # RecursionError: a line nested thousands deep
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            return None
        item, decision, at, task = doc.get("id"), doc.get("decision"), doc.get("at"), doc.get("task_id")
        if (
            isinstance(item, str)
            and item
            and decision in CHOICES
            and isinstance(at, str)
            and (task is None or isinstance(task, str))
        ):
            return Entry(item, decision, at, task)
    return None


def current(directory: Path, items: Mapping[str, Record]) -> dict[str, Entry]:
    """The decisions that hold now: the latest per item the ledger holds, about the task it holds."""
    return {item: entry for item, entry in read_all(directory).items() if item in items and applies(entry, items[item])}


def applies(entry: Entry, record: Record) -> bool:
    """A decision judged one task's image; the item generated again since (a changed request, a re-roll) is
    undecided again. A decision made before the record had a task id never applies to a later one."""
    return record["state"] == "succeeded" and entry.task_id == record["task_id"]


def counts(decided: Mapping[str, Entry]) -> dict[str, int]:
    tally: dict[str, int] = dict.fromkeys(CHOICES, 0)
    for entry in decided.values():
        tally[entry.decision] += 1
    return tally


def copy_into(ledger: Ledger) -> None:
    """A run copies the decision that holds now into each record (through the ledger's own transition)."""
    holding = current(ledger.directory, ledger.items)
    listed = ledger.manifest_ids if ledger.manifest_ids is not None else frozenset(ledger.items)
    # Items no longer listed stay untouched; so does an item with no decision holding and none in its record
    # (`decided` would find nothing to change: asked here, 100,000 calls less on a resume never reviewed).
    changing = [i for i, record in ledger.items.items() if (i in holding or "decision" in record) and i in listed]
    for item in changing:
        entry = holding.get(item)
        ledger.decided(item, entry.decision if entry else None)
