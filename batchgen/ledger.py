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

Nothing else writes results.json or anything under `.batchgen/` but the downloads' own temporary files.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import LedgerError, LockedError, StorageError, UsageError

if TYPE_CHECKING:
    from .manifest import Item as ManifestItem

VERSION = 1
STATES = ("pending", "submitted", "succeeded", "failed")

RESULTS = "results.json"
STATE_DIR = ".batchgen"
JOURNAL = "journal.jsonl"
PREVIOUS = "previous.json"  # the snapshot before results.json ...
PREVIOUS_JOURNAL = "previous-journal.jsonl"  # ... and the journal from it to results.json: recovery material
LOCK = "lock"
SNAPSHOT_EVERY = 5.0  # seconds between snapshots at the least (more for a large ledger: see _due)


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def error_record(kind: str, code: str | None, message: str) -> dict[str, Any]:
    return {"kind": kind, "code": code, "message": message}


def _open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """Open without following a symlink planted at `path`."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(f"{path} is a symbolic link; batchgen will not write through it") from exc
        raise


def state_dir(directory: Path, sub: str | None = None) -> Path:
    """DIR/.batchgen (or a folder in it), created if missing; never through a symlink."""
    path = directory / STATE_DIR
    for folder in (path, path / sub) if sub else (path,):
        if folder.is_symlink():
            raise UsageError(f"{folder} is a symbolic link; batchgen keeps its files only in a real directory")
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path / sub if sub else path


def write_atomically(path: Path, data: bytes, temp_dir: Path, *, mode: int | None = None) -> None:
    """Write `data` to a new file in temp_dir, fsync it, and rename it over `path` (then fsync the folder).

    `mode`, when given, is set exactly, whatever the umask (a file another user's daemon must read)."""
    temp = temp_dir / f".{path.name}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)
    fd = _open_nofollow(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(slots=True)
class Loaded:
    """What a ledger directory holds: records by id, the manifest it was made for, the journal's length."""

    items: dict[str, dict[str, Any]]
    manifest: str | None
    updated_at: str | None
    journal_bytes: int  # the length of the journal's whole lines (a torn tail is beyond it)
    not_in_manifest: frozenset[str] = frozenset()
    damaged: str | None = None  # why results.json could not be used, when the state was recovered without it


def exists(directory: Path) -> bool:
    """Whether DIR has a ledger (or the remains of one) at all."""
    return (directory / RESULTS).exists() or (directory / STATE_DIR).exists()


def load(directory: Path) -> Loaded:
    """Read results.json and replay the journal over it, without taking the lock or writing anything.

    A damaged results.json (not JSON, not a ledger, a record without a valid state) is recovered from the
    previous snapshot and the two journals since it, when they are all there and whole; otherwise LedgerError.
    """
    folder = directory / STATE_DIR
    snapshot = directory / RESULTS
    journal, good = _read_journal(folder / JOURNAL)
    if not snapshot.exists():
        if (folder / PREVIOUS).exists():
            return _recover(directory, journal, good, f"{snapshot} is missing")
        return Loaded(_replay({}, journal), None, None, good)
    try:
        document = _read_snapshot(snapshot)
    except _Damaged as exc:
        return _recover(directory, journal, good, str(exc))
    retired = frozenset(document.get("not_in_manifest") or ())
    return Loaded(
        _replay(document["items"], journal), document.get("manifest"), document.get("updated_at"), good, retired
    )


class _Damaged(Exception):
    pass


def _read_snapshot(path: Path) -> dict[str, Any]:
    """A snapshot's document; _Damaged if it is not a whole, well-formed ledger; LedgerError if it is newer."""
    try:
        document = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Damaged(f"{path} is not valid JSON ({exc})") from exc
    except OSError as exc:
        raise LedgerError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("items"), dict):
        raise _Damaged(f"{path} is not a batchgen ledger (no 'items' object)")
    version = document.get("version")
    if isinstance(version, int) and version > VERSION:
        raise LedgerError(
            f"{path} is ledger version {version}; this batchgen reads version {VERSION}. "
            "Use a newer batchgen, or another --out directory; the file was not changed"
        )
    if version != VERSION:
        raise _Damaged(f"{path} has no valid version (found {version!r})")
    for item_id, record in document["items"].items():
        if not isinstance(record, dict) or record.get("state") not in STATES:
            raise _Damaged(f"{path}: item {item_id!r} has no valid state")
    return document


def _recover(directory: Path, journal: list[tuple[str, dict[str, Any]]], good: int, why: str) -> Loaded:
    """The state without results.json: the previous snapshot + the journal before it + the current journal."""
    folder = directory / STATE_DIR
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
    elif not (folder / PREVIOUS_JOURNAL).exists() and not journal:
        raise LedgerError(
            f"{why}, and there is no journal to rebuild it from; batchgen has not changed it. "
            "Restore it from a backup, or move it aside to start a new ledger (the images stay)"
        )
    earlier, _ = _read_journal(folder / PREVIOUS_JOURNAL, strict=True)
    items = _replay(_replay(base["items"], earlier), journal)
    return Loaded(
        items,
        base.get("manifest"),
        base.get("updated_at"),
        good,
        frozenset(base.get("not_in_manifest") or ()),
        damaged=why,
    )


def _read_journal(path: Path, *, strict: bool = False) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """A journal's entries, and the length of its whole lines. A torn last line is dropped."""
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    entries: list[tuple[str, dict[str, Any]]] = []
    good = 0
    for number, (text, end) in enumerate(_lines(data), start=1):
        try:
            entry = json.loads(text)
            item_id, record = entry["id"], entry["record"]
            if not isinstance(item_id, str) or not isinstance(record, dict) or record.get("state") not in STATES:
                raise TypeError("not an item record")
        except (ValueError, KeyError, TypeError) as exc:
            if end == len(data) and not data.endswith(b"\n") and not strict:
                break  # a torn last line: the write it belonged to never finished
            raise LedgerError(
                f"{path}: line {number} is damaged ({exc}); batchgen has not changed it. Move it "
                "aside to continue from results.json alone (changes since the last snapshot are "
                "then forgotten)"
            ) from exc
        entries.append((item_id, record))
        good = end
    return entries, good


def _replay(items: dict[str, dict[str, Any]], journal: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    for item_id, record in journal:
        items[item_id] = record
    return items


def _keep_damaged(directory: Path) -> None:
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


class Ledger:
    """The open, locked ledger of one output directory. Use `Ledger.open(...)` and `close()` (or `with`)."""

    def __init__(self, directory: Path, loaded: Loaded, manifest: str, lock_fd: int, journal_fd: int) -> None:
        self.directory = directory
        self.items = loaded.items
        self.manifest = manifest
        self._lock_fd = lock_fd
        self._journal_fd = journal_fd
        self._state_dir = directory / STATE_DIR
        self._dirty = loaded.journal_bytes > 0 or loaded.manifest != manifest
        self._last_snapshot = time.monotonic()
        self._snapshot_cost = 0.0
        self.manifest_ids: frozenset[str] | None = None
        self.recovered: str | None = None  # why results.json was rebuilt from the journals, if it was
        self._written = 0  # journal lines appended ...
        self._synced = 0  # ... and how many of them are known to be on disk
        self._flushing: asyncio.Task[None] | None = None
        self._retired = loaded.not_in_manifest

    # ------------------------------------------------------------ opening and closing

    @classmethod
    def open(cls, directory: Path, manifest: str, *, adopt: bool = False) -> Ledger:
        """Lock DIR (LockedError if another run holds it) and load its ledger.

        A ledger made for another manifest is refused (LedgerError) unless `adopt`. A damaged results.json that
        could be rebuilt is kept beside the new one as results.json.damaged-<time>.
        """
        directory.mkdir(parents=True, exist_ok=True)
        folder = state_dir(directory)
        lock_fd = _open_nofollow(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
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
                _keep_damaged(directory)
            journal_fd = _open_nofollow(folder / JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.ftruncate(journal_fd, loaded.journal_bytes)  # drop a torn last line before appending after it
        except BaseException:
            os.close(lock_fd)
            raise
        ledger = cls(directory, loaded, manifest, lock_fd, journal_fd)
        if loaded.damaged:
            ledger.recovered = loaded.damaged
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

    def _settle_in_doubt(self) -> None:
        """An item found "submitting" was killed inside createTask: it may have been created. Say so."""
        for item_id, record in list(self.items.items()):
            if record.get("submitting"):
                changed = dict(record)
                changed.pop("submitting")
                changed["in_doubt"] = int(changed.get("in_doubt", 0)) + 1
                self._write(item_id, changed)
        if self._written:
            self._fsync(self._journal_fd)
            self._synced = self._written

    async def durable(self) -> None:
        """Return once every journal line appended so far is on disk: one fsync, shared by all who wait."""
        target = self._written
        while self._synced < target:
            if self._flushing is None or self._flushing.done():
                self._flushing = asyncio.get_running_loop().create_task(self._flush())
            await asyncio.shield(self._flushing)

    async def _flush(self) -> None:
        upto = self._written
        copy = os.dup(self._journal_fd)  # a snapshot may swap the journal meanwhile: fsync what was written

        def sync_and_close() -> None:
            try:
                self._fsync(copy)
            finally:
                os.close(copy)

        await asyncio.to_thread(sync_and_close)
        self._synced = max(self._synced, upto)

    def _fsync(self, fd: int) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            raise StorageError(f"cannot write the journal in {self._state_dir}: {exc.strerror or exc}") from exc

    # ------------------------------------------------------------ reading

    def get(self, item_id: str) -> dict[str, Any] | None:
        return self.items.get(item_id)

    def state(self, item_id: str) -> str | None:
        record = self.items.get(item_id)
        return record["state"] if record else None

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
        """Intent, on disk before the createTask call: a kill inside the call is then known to be in doubt."""
        record = self._record(item_id, request)
        record.update(state="pending", request=request, submitting=True)
        self._write(item_id, record)

    def submit_unsent(self, item_id: str, *, in_doubt: bool = False) -> None:
        """The createTask call created nothing (or, with in_doubt, may have: count it)."""
        record = dict(self.items[item_id])
        record.pop("submitting", None)
        if in_doubt:
            record["in_doubt"] = int(record.get("in_doubt", 0)) + 1
        self._write(item_id, record)

    def submitted(self, item_id: str, task_id: str) -> None:
        """The service returned a task id: durably on disk before anything else happens to it."""
        record = dict(self.items[item_id])
        record.pop("submitting", None)
        record.update(
            state="submitted",
            task_id=task_id,
            attempts=int(record.get("attempts", 0)) + 1,
            submitted_at=utc_now(),
            finished_at=None,
            error=None,
        )
        self._write(item_id, record)

    def requeue(self, item_id: str, error: dict[str, Any]) -> None:
        """The task failed transiently: back to pending, to be submitted again (its error kept for the record)."""
        record = dict(self.items[item_id])
        record.update(state="pending", task_id=None, error=error)
        self._write(item_id, record)

    def succeeded(self, item_id: str, files: list[str], sha256: list[str]) -> None:
        record = dict(self.items[item_id])
        record.update(state="succeeded", files=files, sha256=sha256, error=None, finished_at=utc_now())
        self._write(item_id, record)

    def failed(self, item_id: str, error: dict[str, Any], request: dict[str, Any] | None = None) -> None:
        record = self._record(item_id, request) if request is not None else dict(self.items[item_id])
        record.pop("submitting", None)
        record.update(state="failed", error=error, finished_at=utc_now())
        if request is not None:
            record["request"] = request
        self._write(item_id, record)

    def _record(self, item_id: str, request: dict[str, Any] | None) -> dict[str, Any]:
        existing = self.items.get(item_id)
        if existing is not None:
            return dict(existing)
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

    def _write(self, item_id: str, record: dict[str, Any]) -> None:
        """Append the item's new record to the journal (durable once `durable()` says so)."""
        line = json.dumps({"id": item_id, "record": record}, ensure_ascii=False, separators=(",", ":"))
        try:
            os.write(self._journal_fd, line.encode("utf-8") + b"\n")
            self._written += 1
        except OSError as exc:
            raise StorageError(f"cannot write the journal in {self._state_dir}: {exc.strerror or exc}") from exc
        self.items[item_id] = record
        self._dirty = True

    # ------------------------------------------------------------ snapshots

    def counts(self, ids: Iterable[str] | None = None) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        records = self.items.values() if ids is None else (self.items[i] for i in ids if i in self.items)
        for record in records:
            counts[record["state"]] = counts.get(record["state"], 0) + 1
        return counts

    def maybe_snapshot(self) -> None:
        """Rewrite results.json if it is due: every few seconds, and less often for a ledger that is slow to write."""
        if self._dirty and time.monotonic() - self._last_snapshot >= max(SNAPSHOT_EVERY, 20 * self._snapshot_cost):
            self.snapshot()

    def snapshot(self) -> None:
        """Write results.json from memory, atomically, then empty the journal it now contains."""
        if not self._dirty:
            return
        started = time.monotonic()
        ids = self.manifest_ids
        document = {
            "version": VERSION,
            "manifest": self.manifest,
            "updated_at": utc_now(),
            "counts": self.counts(ids),
            "items": self.items,
        }
        if ids is not None:
            document["not_in_manifest"] = sorted(set(self.items) - ids)
        data = json.dumps(document, ensure_ascii=False, indent=1).encode("utf-8") + b"\n"
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
            fresh = _open_nofollow(self._state_dir / JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise StorageError(
                f"cannot write {results}: {exc.strerror or exc}; the previous ledger and the "
                "journal are intact, so the next run continues from them"
            ) from exc
        os.close(self._journal_fd)
        self._journal_fd = fresh
        fsync_dir(self._state_dir)
        self._synced = self._written  # everything written is in the fsync'd snapshot now
        self._dirty = False
        self._last_snapshot = time.monotonic()
        self._snapshot_cost = self._last_snapshot - started
