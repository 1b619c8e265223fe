"""The ledger's files: DIR's lock, the journal's checked appends and their group commit, the atomic snapshot.

A transition (ledger.py) appends the item's whole new record to `.batchgen/journal.jsonl` through `_write`;
`await durable()` returns once everything appended so far is fsync'd — one fsync, in a thread, shared by every
transition of the moment (group commit), so the event loop never blocks on the disk and a hundred tasks
finishing together cost one fsync, not a hundred.

The snapshot `results.json` is rewritten from memory at most every few seconds and at close (temp file, fsync,
`os.replace`), after which a fresh journal is started (the previous snapshot and journal are kept to rebuild a
damaged results.json). A kill at any instant leaves a complete results.json and at most one torn journal line,
which is dropped. Reading a ledger directory (load, replay, rebuild) is records.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from operator import itemgetter
from pathlib import Path
from typing import Any, Self

from . import records, snapshots
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
    Loaded,
    Record,
    keep_damaged,
    load,
)

LOCK = "lock"
SNAPSHOT_EVERY = 5.0  # seconds between snapshots at the least (more for a large ledger: see _due)


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Store:
    """The open, locked files of one output directory's ledger and its records in memory; `Ledger` (ledger.py)
    adds the transitions. Use `Ledger.open(...)` and `close()` (or `with`)."""

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
        self._texts: dict[str, tuple[Record, str]] = {}  # id -> a record and its text in the last snapshot
        self.manifest_ids: frozenset[str] | None = None
        self._owners: dict[str, str] | None = None  # task id -> its item (ledger.py's claim_task)
        self.recovered: str | None = None  # why results.json was rebuilt from the journals, if it was
        self._written = 0  # journal lines appended ...
        self._synced = 0  # ... and how many of them are known to be on disk
        self._flushing: asyncio.Task[None] | None = None
        self._retired = loaded.not_in_manifest
        self._generation = loaded.generation
        self._broken: StorageError | None = None  # a journal write went wrong: nothing more may be appended
        self.price = loaded.price  # per image, as a decimal string: the latest run's --price
        self.cards: dict[str, Any] = loaded.cards or {}  # model -> the card a run used for it: {sha256, source}
        # The items' states counted, kept as records change (`_put`): a progress tick reads them in O(1). Of every
        # item, and of the manifest's items once `track` has said which they are.
        self._counts = _tally(self.items.values())
        self._listed_counts: dict[str, int] | None = None

    # ------------------------------------------------------------ opening and closing

    @classmethod
    def open(cls, directory: Path, manifest: str, *, adopt: bool = False) -> Self:
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
                _write_all(journal_fd, snapshots.journal_header(loaded.generation), folder)
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

    def __enter__(self) -> Self:
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
        for item_id in [i for i, record in self.items.items() if records.submitting(record)]:  # no 100,000 pairs
            record = self.items[item_id]
            if records.submitting(record):
                changed = record.copy()
                changed.pop("submitting")
                changed["in_doubt"] = records.in_doubt(changed) + 1  # counted, now that it is no longer under way
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
        # The journal's own thread does the fsync alone: each system call there lets go of the GIL, and taking it
        # back from the busy event loop is a handover (futexes, context switches). The duplicate is closed here
        # once the fsync is over (nothing of the file is left to write then: the close cannot block), even if this
        # is cancelled: closed under the thread, its number could be another file's by then.
        job = asyncio.get_running_loop().run_in_executor(_JOURNAL_THREAD, self._fsync, copy)
        job.add_done_callback(functools.partial(_close_after, copy))
        try:
            await asyncio.shield(job)
        except StorageError as exc:
            self._broken = exc
            raise
        self._synced = max(self._synced, upto)

    def _fsync(self, fd: int) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            raise StorageError(f"cannot write the journal in {self._state_dir}: {exc.strerror or exc}") from exc

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
        self._put(item_id, record)
        self._dirty = True

    def _put(self, item_id: str, record: Record) -> None:
        """The one place a record is set in memory: the counts follow its state."""
        old = self.items.get(item_id)
        self.items[item_id] = record
        listed = self._listed_counts is not None and self.manifest_ids is not None and item_id in self.manifest_ids
        if old is not None:
            self._counts[old["state"]] -= 1
            if listed:
                self._listed_counts[old["state"]] -= 1  # type: ignore[index]  # listed: not None
        self._counts[record["state"]] += 1
        if listed:
            self._listed_counts[record["state"]] += 1  # type: ignore[index]

    # ------------------------------------------------------------ snapshots

    def counts(self, ids: Iterable[str] | None = None) -> dict[str, int]:
        """How many items are in each state: of every item (None), or of `ids`. Every item's, and the manifest's
        items' (`ids` is `manifest_ids`), are kept as records change, so reading them costs nothing; other ids
        are counted."""
        if ids is None:
            return dict(self._counts)
        if ids is self.manifest_ids and self._listed_counts is not None:
            return dict(self._listed_counts)
        return _tally(self.items[i] for i in ids if i in self.items)

    def _listing(self, ids: frozenset[str], retired: set[str]) -> None:
        """The manifest's ids are now `ids`, every item in the ledger (`retired`: those not among them): count
        their states once, as every item's less the retired ones'; then `_put` keeps them."""
        self.manifest_ids = ids
        less = _tally(self.items[i] for i in retired)
        self._listed_counts = {state: count - less[state] for state, count in self._counts.items()}

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
            "items": {},  # written by _layout, record by record
        }
        if self.price is not None:
            document["price"] = self.price
        if self.cards:
            document["cards"] = self.cards
        if ids is not None:
            document["not_in_manifest"] = sorted([i for i in self.items if i not in ids])  # no copy of every id
        # Streamed: a 100,000-item ledger written whole as one string took ~350 MB more at its peak.
        data = _chunks(snapshots.layout(document, self.items, self._texts))
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
                _write_all(
                    fresh, snapshots.journal_header(self._generation + 1, snapshots.stamp(results)), self._state_dir
                )
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


def _tally(items: Iterable[Record]) -> dict[str, int]:
    counts: dict[str, int] = dict.fromkeys(STATES, 0)
    counts.update(Counter(map(itemgetter("state"), items)))  # Counter counts in C: 100,000 records in ~10 ms
    return counts


def _chunks(parts: Iterator[str], size: int = 1 << 16) -> Iterator[bytes]:
    """The encoder's many small strings as UTF-8 blocks of about `size` characters, then the final newline. (A
    block of a megabyte held ~150,000 small strings before its join: 8 MB more at a large ledger's peak.)"""
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


# The journal's fsyncs have a thread of their own (one flush is under way at a time: one thread), never the
# default executor's: asyncio runs every DNS lookup there, and a hung lookup must never hold a "submitting" record
# or a task id from the disk. Its thread starts at the first flush and idles between them.
_JOURNAL_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchgen-journal")


def _close_after(fd: int, job: asyncio.Future[None]) -> None:
    """A flush's duplicate descriptor closed once its fsync is over; the outcome read (see _retrieve)."""
    os.close(fd)
    if not job.cancelled():
        job.exception()


def _retrieve(task: asyncio.Task[None]) -> None:
    """Read a finished flush's exception, so that asyncio never reports it as "never retrieved"."""
    if not task.cancelled():
        task.exception()
