"""The ledger: item states in DIR/results.json, an append-only journal, and the directory's lock.

Every change is one transition method (here); the files are store.py's `Store`, which `Ledger` extends. A
transition appends the item's whole new record to `.batchgen/journal.jsonl`; `await durable()` returns once
everything appended so far is fsync'd — one fsync, in a thread, shared by every transition of the moment (group
commit), so the event loop never blocks on the disk and a hundred tasks finishing together cost one fsync, not
a hundred. The engine awaits it where it matters: before a createTask call, when a task id is received, when
an item finishes.

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

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from . import records, rolls
from .records import (
    RESULTS,
    STATES,
    ErrorRecord,
    Loaded,
    Record,
    State,
    error_record,
    exists,
    load,
    new_record,
)
from .store import Store, utc_now

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


class Ledger(Store):
    """The open, locked ledger of one output directory: its records and their transitions (the files: store.py).
    Use `Ledger.open(...)` and `close()` (or `with`)."""

    # ------------------------------------------------------------ reading

    def record(self, item_id: str) -> Record:
        return self.items[item_id]

    def owners(self) -> Iterator[tuple[str, Record]]:
        """Every item's record, for those who must know what other items hold (file names)."""
        return iter(self.items.items())

    def listed(self) -> frozenset[str]:
        """The ids of this run's manifest (`track`): the items a run counts and reports."""
        if self.manifest_ids is None:
            raise RuntimeError("the ledger tracks no manifest yet: call track() first")
        return self.manifest_ids

    def claim_task(self, task_id: str, item_id: str) -> bool:
        """Whether a task id is this item's alone: the first item that held it (in the ledger as the run found it,
        or claimed since) owns it for good, so two items of one task never both succeed."""
        return self._task_owners().setdefault(task_id, item_id) == item_id

    def task_owner(self, task_id: str) -> str | None:
        """The item a task id was created for, if any item holds or held it."""
        return self._task_owners().get(task_id)

    def _task_owners(self) -> dict[str, str]:
        """Task id -> its item: made from the records at its first use (the run's start), then kept by claims."""
        if self._owners is None:
            self._owners = {}
            for item_id, record in self.items.items():
                if record["task_id"]:
                    self._owners.setdefault(str(record["task_id"]), item_id)
        return self._owners

    # ------------------------------------------------------------ transitions

    def track(self, items: Iterable[ManifestItem]) -> None:
        """This run's manifest: its items are counted, and those not yet in the ledger appear as pending.

        New pending records are not journaled: they follow from the manifest, so losing them loses nothing.
        """
        items = list(items)
        listed = frozenset([item.id for item in items])
        if fresh := listed - self.items.keys():
            for item in items:
                if item.id in fresh and item.id not in self.items:
                    self._put(item.id, self._record(item.id, item.request))
            self._dirty = True
        retired = self.items.keys() - listed
        self._listing(listed, retired)
        if retired != self._retired:
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
            record["in_doubt"] = records.in_doubt(record) + 1
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
                "attempts": record["attempts"] + 1,
                "paid": records.paid(record) + 1,
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
                "attempts": record["attempts"] + 1,
                "paid": records.paid(record) + 1,
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
        before = [*records.files_before(record), *record["files"]]
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
        if records.decision(self.items[item_id]) == decision:
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
