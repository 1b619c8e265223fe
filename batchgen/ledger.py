"""The ledger: item states in DIR/results.json, an append-only journal, and the directory's lock.

Every change is one transition method. A transition appends the item's whole new record to
`.batchgen/journal.jsonl`; `await durable()` returns once everything appended so far is fsync'd — one fsync, in
a thread, shared by every transition of the moment (group commit), so the event loop never blocks on the disk
and a hundred tasks finishing together cost one fsync, not a hundred. The engine awaits it where it matters:
before a createTask call, when a task id is received, when an item finishes.

The snapshot `results.json` is rewritten from memory at most every few seconds and at close (temp file, fsync,
`os.replace`), after which a fresh journal is started (the previous snapshot and journal are kept to rebuild a
damaged results.json). So a transition costs O(1) however many items there are, and loading is: the snapshot,
then the journal replayed over it (last record of an item wins, so replaying twice is harmless). A kill at any
instant leaves a complete results.json and at most one torn journal line, which is dropped.

Reading a ledger directory (the record schema, load, the rebuild of a lost results.json, journal generations)
lives in `records.py`; its names are available from here too.

Nothing else writes results.json or anything under `.batchgen/` but the downloads' own temporary files.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import rolls
from .errors import LedgerError, LockedError, StorageError
from .files import STATE_DIR, check_output_dir, fsync_dir, open_nofollow, write_atomically
from .records import (
    JOURNAL,
    PREVIOUS,
    PREVIOUS_JOURNAL,
    RESULTS,
    STATES,
    VERSION,
    VERSION_REVIEWED,
    ErrorRecord,
    Loaded,
    Record,
    State,
    error_record,
    exists,
    header,
    keep_damaged,
    load,
    new_record,
)

if TYPE_CHECKING:
    from .manifest import Item as ManifestItem

__all__ = [  # the records names users of the ledger read from here
    "RESULTS",
    "STATES",
    "ErrorRecord",
    "Ledger",
    "Loaded",
    "Record",
    "State",
    "error_record",
    "exists",
    "load",
]

LOCK = "lock"
SNAPSHOT_EVERY = 5.0  # seconds between snapshots at the least (more for a large ledger: see _due)


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Ledger:
    """The open, locked ledger of one output directory. Use `Ledger.open(...)` and `close()` (or `with`)."""

    def __init__(self, directory: Path, loaded: Loaded, manifest: str, lock_fd: int, journal_fd: int) -> None:
        self.directory = directory
        self.items = loaded.items
        self.manifest = manifest
        self._lock_fd = lock_fd
        self._journal_fd = journal_fd
        self._state_dir = directory / STATE_DIR
        self._dirty = loaded.replayed > 0 or loaded.manifest != manifest
        self._last_snapshot = time.monotonic()
        self._snapshot_cost = 0.0
        self.manifest_ids: frozenset[str] | None = None
        self.recovered: str | None = None  # why results.json was rebuilt from the journals, if it was
        self._written = 0  # journal lines appended ...
        self._synced = 0  # ... and how many of them are known to be on disk
        self._flushing: asyncio.Task[None] | None = None
        self._retired = loaded.not_in_manifest
        self._generation = loaded.generation
        self._broken: StorageError | None = None  # a journal write went wrong: nothing more may be appended
        self.price = loaded.price  # per image, as a decimal string: the latest run's --price
        self.cards: dict[str, Any] = loaded.cards or {}  # model -> the card a run used for it: {sha256, source}

    # ------------------------------------------------------------ opening and closing

    @classmethod
    def open(cls, directory: Path, manifest: str, *, adopt: bool = False) -> Ledger:
        """Lock DIR (LockedError if another run holds it) and load its ledger.

        A ledger made for another manifest is refused (LedgerError) unless `adopt`. A damaged results.json that
        could be rebuilt is kept beside the new one as results.json.damaged-<time>.
        """
        folder = check_output_dir(directory)
        lock_fd = open_nofollow(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(lock_fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(lock_fd)
            raise LockedError(
                f"{directory} is in use by another batchgen run (pid {holder}); this run did nothing"
            ) from None
        try:
            os.ftruncate(lock_fd, 0)
            os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
            loaded = load(directory)
            if loaded.manifest not in (None, manifest) and not adopt:
                raise LedgerError(
                    f"{directory / RESULTS} was made for the manifest {loaded.manifest!r}, not "
                    f"{manifest!r}; nothing was changed. Use another --out directory, or pass "
                    "--adopt-ledger to continue this ledger with the new manifest"
                )
            if loaded.damaged:
                keep_damaged(directory)
            journal_fd = open_nofollow(folder / JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.ftruncate(journal_fd, loaded.journal_bytes)  # drop a torn last line before appending after it
            if loaded.journal_bytes == 0:
                _write_all(journal_fd, header(loaded.generation), folder)
        except OSError as exc:  # a full or failing disk while opening: exit 5 with the reason, not a traceback
            os.close(lock_fd)
            raise StorageError(f"cannot open the ledger in {folder}: {exc.strerror or exc}") from exc
        except BaseException:
            os.close(lock_fd)
            raise
        ledger = cls(directory, loaded, manifest, lock_fd, journal_fd)
        if loaded.damaged:
            ledger.recovered = loaded.damaged
            # Twice: the first snapshot replaces the lost one, the second makes previous.json and the journals
            # chain again from it (see _recover), so a second loss can be rebuilt as surely as this one.
            for _ in range(2):
                ledger._dirty = True
                ledger.snapshot()
        ledger._settle_in_doubt()
        return ledger

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Write the snapshot if anything changed, and release the lock."""
        if self._journal_fd < 0:
            return
        try:
            self.snapshot()
        finally:
            os.close(self._journal_fd)
            self._journal_fd = -1
            os.close(self._lock_fd)

    def lock_descriptor(self) -> int:
        """A duplicate of the lock's descriptor: DIR stays locked after `close()` until it is closed too (the
        end-of-run actions run while DIR is still this run's)."""
        return os.dup(self._lock_fd)

    def _settle_in_doubt(self) -> None:
        """An item found "submitting" was killed inside createTask: it may have been created. Say so."""
        for item_id, record in list(self.items.items()):
            if record.get("submitting"):
                changed = record.copy()
                changed.pop("submitting")
                changed["in_doubt"] = changed.get("in_doubt", 0) + 1
                changed["doubt_open"] = True
                self._write(item_id, changed)
        if self._written:
            self._fsync(self._journal_fd)
            self._synced = self._written

    async def durable(self) -> None:
        """Return once every journal line appended so far is on disk: one fsync, shared by all who wait.

        After a failed fsync the journal is broken for good (a second fsync may succeed with the dirty pages
        already dropped, Linux's "fsyncgate"): every later `durable()` raises, never a false "on disk"."""
        target = self._written
        while self._synced < target:
            if self._broken is not None:
                raise self._broken
            if self._flushing is None or self._flushing.done():
                self._flushing = asyncio.get_running_loop().create_task(self._flush())
                self._flushing.add_done_callback(_retrieve)  # its waiters may all have been cancelled
            await asyncio.shield(self._flushing)

    async def _flush(self) -> None:
        upto = self._written
        copy = os.dup(self._journal_fd)  # a snapshot may swap the journal meanwhile: fsync what was written

        def sync_and_close() -> None:
            try:
                self._fsync(copy)
            finally:
                os.close(copy)

        try:
            await asyncio.to_thread(sync_and_close)
        except StorageError as exc:
            self._broken = exc
            raise
        self._synced = max(self._synced, upto)

    def _fsync(self, fd: int) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            raise StorageError(f"cannot write the journal in {self._state_dir}: {exc.strerror or exc}") from exc

    # ------------------------------------------------------------ reading

    def record(self, item_id: str) -> Record:
        return self.items[item_id]

    def owners(self) -> Iterator[tuple[str, Record]]:
        """Every item's record, for those who must know what other items hold (file names, task ids)."""
        return iter(self.items.items())

    # ------------------------------------------------------------ transitions

    def track(self, items: Iterable[ManifestItem]) -> None:
        """This run's manifest: its items are counted, and those not yet in the ledger appear as pending.

        New pending records are not journaled: they follow from the manifest, so losing them loses nothing.
        """
        ids = set()
        for item in items:
            ids.add(item.id)
            if item.id not in self.items:
                self.items[item.id] = self._record(item.id, item.request)
                self._dirty = True
        self.manifest_ids = frozenset(ids)
        if set(self.items) - self.manifest_ids != self._retired:
            self._dirty = True  # the manifest dropped (or brought back) items: the snapshot must say so

    def start_submit(self, item_id: str, request: dict[str, Any]) -> None:
        """Intent, on disk before the createTask call: a kill inside the call is then known to be in doubt.

        `attempts` counts submissions of one request: it starts again when the request changed or the item had
        failed for good (only --retry-failed submits a failed item again). `paid` is never reset.
        """
        record = self._record(item_id, request)
        if "roll" in record:  # a re-roll (rolls.py): the request sent is the roll's; `request` stays the manifest's
            record["roll"] = {**record["roll"], "request_sent": request}
            request = record["request"] or request
        if record["state"] == "failed" or record["request"] != request:
            record["attempts"] = 0
        record.update({"state": "pending", "request": request, "submitting": True})
        self._write(item_id, record)

    def start_roll(self, item_id: str, seed: int | None, keep: list[str]) -> None:
        """Open a new roll of a succeeded item (rolls.py): the current image becomes a roll in `rolls`, and the
        item stays `succeeded` with its files until the new roll's are verified. `keep`: where each current file
        is kept then (`<stem>~roll<k>.<ext>`, or "" for none)."""
        self._write(item_id, rolls.opened(self._copy(item_id), seed, keep))

    def submit_unsent(self, item_id: str, *, in_doubt: bool = False) -> None:
        """The createTask call created nothing (or, with in_doubt, may have: count it)."""
        record = self._copy(item_id)
        record.pop("submitting", None)
        if in_doubt:
            record["in_doubt"] = record.get("in_doubt", 0) + 1
            record["doubt_open"] = True
        self._write(item_id, record)

    def submitted(self, item_id: str, task_id: str) -> None:
        """The service returned a task id: durably on disk before anything else happens to it."""
        record = self._copy(item_id)
        record.pop("submitting", None)
        record.pop("doubt_open", None)  # a task id came: the doubt is about an earlier call, already told
        record.update(
            {
                "state": "submitted",
                "task_id": task_id,
                "attempts": record.get("attempts", 0) + 1,
                "paid": record.get("paid", 0) + 1,
                "submitted_at": utc_now(),
                "finished_at": None,
                "error": None,
            }
        )
        self._write(item_id, record)

    def paid_without_task(self, item_id: str, error: ErrorRecord) -> None:
        """createTask answered with a task id we cannot use (another item's): paid, and failed for good."""
        record = self._copy(item_id)
        record.pop("submitting", None)
        record.update(
            {
                "state": "failed",
                "attempts": record.get("attempts", 0) + 1,
                "paid": record.get("paid", 0) + 1,
                "error": error,
                "finished_at": utc_now(),
            }
        )
        self._write(item_id, record)

    def requeue(self, item_id: str, error: ErrorRecord) -> None:
        """The task failed transiently: back to pending, to be submitted again (its error kept for the record)."""
        record = self._copy(item_id)
        record.update({"state": "pending", "task_id": None, "error": error})
        self._write(item_id, record)

    def refetch(self, item_id: str) -> None:
        """A succeeded item's files are gone from DIR: back to submitted, to fetch them again by its task id."""
        record = self._copy(item_id)
        # Its names stay known until the new files are in, then their leftovers (sidecars) go: even under a new --name
        before = [*record.get("files_before", []), *record["files"]]
        record.update({"state": "submitted", "files": [], "sha256": [], "finished_at": None, "files_before": before})
        self._write(item_id, record)

    def succeeded(
        self,
        item_id: str,
        files: list[str],
        sha256: list[str],
        *,
        cost: dict[str, float] | None = None,
        received: list[str] | None = None,
    ) -> None:
        """`sha256` of the files as kept; `received`, with --metadata, of the files as the service sent them
        (they differ when provenance text was written into a PNG)."""
        record = self._copy(item_id)
        rolls.verified(record, files, sha256)  # a re-roll: the earlier roll is kept in `rolls`
        record.update({"state": "succeeded", "files": files, "sha256": sha256, "error": None, "finished_at": utc_now()})
        record.pop("sha256_received", None)
        record.pop("files_before", None)
        if cost:
            record["cost"] = cost
        if received is not None:
            record["sha256_received"] = received
        self._write(item_id, record)

    def decided(self, item_id: str, decision: str | None) -> None:
        """The latest review decision on the item's image (decisions.py), or None when none holds: journaled only
        when it changed, so a run over an unreviewed night writes nothing."""
        if self.items[item_id].get("decision") == decision:
            return
        record = self._copy(item_id)
        record.pop("decision", None)
        if decision is not None:
            record["decision"] = decision
        self._write(item_id, record)

    def set_price(self, price: str) -> None:
        """The run's price per image (--price), kept in the snapshot: `status` reports spend from it later."""
        if price != self.price:
            self.price = price
            self._dirty = True

    def set_cards(self, used: dict[str, dict[str, str]]) -> None:
        """Record the card (sha256 and source) of each model this run uses; cards of other models stay."""
        for name, card in used.items():
            if self.cards.get(name) != card:
                self.cards[name] = card
                self._dirty = True

    def failed(self, item_id: str, error: ErrorRecord, request: dict[str, Any] | None = None) -> None:
        record = self._record(item_id, request) if request is not None else self._copy(item_id)
        record.pop("submitting", None)
        if rolls.failed_for_good(record, error):  # a re-roll: the item keeps its image, marked reroll_failed
            self._write(item_id, record)
            return
        record.update({"state": "failed", "error": error, "finished_at": utc_now()})
        if request is not None:
            record["request"] = request
        self._write(item_id, record)

    def _copy(self, item_id: str) -> Record:
        return self.items[item_id].copy()

    def _record(self, item_id: str, request: dict[str, Any] | None) -> Record:
        existing = self.items.get(item_id)
        if existing is not None:
            return existing.copy()
        return new_record(request)

    def _write(self, item_id: str, record: Record) -> None:
        """Append the item's new record to the journal (durable once `durable()` says so).

        A write that fails, or writes only part of the line (a nearly full disk may do that without an error),
        stops all further journaling: the part written is cut off again where possible, and otherwise it is the
        journal's torn last line, which loading drops. Nothing is appended after it.
        """
        if self._broken is not None:
            raise self._broken
        line = json.dumps({"id": item_id, "record": record}, ensure_ascii=False, separators=(",", ":"))
        try:
            _write_all(self._journal_fd, line.encode("utf-8") + b"\n", self._state_dir)
        except StorageError as exc:
            self._broken = exc
            raise
        self._written += 1
        self.items[item_id] = record
        self._dirty = True

    # ------------------------------------------------------------ snapshots

    def counts(self, ids: Iterable[str] | None = None) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(STATES, 0)
        records = self.items.values() if ids is None else (self.items[i] for i in ids if i in self.items)
        for record in records:
            counts[record["state"]] = counts.get(record["state"], 0) + 1
        return counts

    def maybe_snapshot(self) -> None:
        """Rewrite results.json if it is due: every few seconds, and less often for a ledger that is slow to write."""
        if self._dirty and time.monotonic() - self._last_snapshot >= max(SNAPSHOT_EVERY, 20 * self._snapshot_cost):
            self.snapshot()

    def _version(self) -> int:
        """SPEC §4: a ledger with rolls, decisions or per-model prices is version 2; any other stays version 1 (an
        older batchgen reads it as before)."""
        per_model = self.price is not None and "=" in self.price  # prices.Prices' text: `0.05,flux-2-pro=0.03`
        if per_model or any("decision" in r or "rolls" in r for r in self.items.values()):
            return VERSION_REVIEWED
        return VERSION

    def snapshot(self) -> None:
        """Write results.json from memory, atomically, then empty the journal it now contains."""
        if not self._dirty:
            return
        if self._broken is not None:
            raise self._broken  # the journal may hold a part line: keep it as the torn tail, write nothing more
        started = time.monotonic()
        ids = self.manifest_ids
        document: dict[str, Any] = {
            "version": self._version(),
            "generation": self._generation + 1,
            "manifest": self.manifest,
            "updated_at": utc_now(),
            "counts": self.counts(ids),
            "items": self.items,
        }
        if self.price is not None:
            document["price"] = self.price
        if self.cards:
            document["cards"] = self.cards
        if ids is not None:
            document["not_in_manifest"] = sorted(set(self.items) - ids)
        data = _chunks(json.JSONEncoder(ensure_ascii=False, indent=1).iterencode(document))  # streamed: a
        # 100,000-item ledger written whole as one string took ~350 MB more at its peak
        results = self.directory / RESULTS
        try:
            # Keep the snapshot being replaced and the journal that leads from it to the new one: if results.json
            # is ever damaged, the two rebuild it with certainty (see load).
            if results.exists():
                link = self._state_dir / f".{PREVIOUS}.tmp"
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(link)
                os.link(results, link)
                os.replace(link, self._state_dir / PREVIOUS)
            write_atomically(results, data, self._state_dir)
            os.replace(self._state_dir / JOURNAL, self._state_dir / PREVIOUS_JOURNAL)
            fresh = open_nofollow(self._state_dir / JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o600)
            try:
                _write_all(fresh, header(self._generation + 1), self._state_dir)
            except BaseException:
                os.close(fresh)
                raise
        except OSError as exc:
            raise StorageError(
                f"cannot write {results}: {exc.strerror or exc}; the previous ledger and the "
                "journal are intact, so the next run continues from them"
            ) from exc
        os.close(self._journal_fd)
        self._journal_fd = fresh
        self._generation += 1
        fsync_dir(self._state_dir)
        self._synced = self._written  # everything written is in the fsync'd snapshot now
        self._dirty = False
        self._last_snapshot = time.monotonic()
        self._snapshot_cost = self._last_snapshot - started


def _chunks(parts: Iterator[str], size: int = 1 << 20) -> Iterator[bytes]:
    """The encoder's many small strings as UTF-8 blocks of about `size` characters, then the final newline."""
    block: list[str] = []
    length = 0
    for part in parts:
        block.append(part)
        length += len(part)
        if length >= size:
            yield "".join(block).encode("utf-8")
            block, length = [], 0
    yield ("".join(block) + "\n").encode("utf-8")


def _write_all(fd: int, data: bytes, folder: Path) -> None:
    """Append `data` whole, or raise StorageError; a part written is cut off again where the disk allows."""
    size = os.lseek(fd, 0, os.SEEK_END)
    try:
        written = os.write(fd, data)
    except OSError as exc:
        raise StorageError(f"cannot write the journal in {folder}: {exc.strerror or exc}") from exc
    if written != len(data):
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise StorageError(
            f"cannot write the journal in {folder}: the disk took {written} of {len(data)} bytes (full?); "
            "the ledger is intact: free some space and rerun to continue"
        )


def _retrieve(task: asyncio.Task[None]) -> None:
    """Read a finished flush's exception, so that asyncio never reports it as "never retrieved"."""
    if not task.cancelled():
        task.exception()
