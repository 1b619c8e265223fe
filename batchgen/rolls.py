"""Re-rolls (`run --reroll`, SPEC §4 "Rolls"): an item whose latest review decision is `rejected` is generated
again as a new roll of the same item.

- The record's `request` stays the manifest's (the next plain run sees no changed item); the roll's request is
  the manifest's with a new seed: the smallest above the item's highest seed so far that no other item of the
  manifest uses (copies of `count: 3, seed: 7` hold 7, 8, 9: copy 1 re-rolls to 10, never into copy 2's
  request), within the card's range; a request without a seed is sent as it is (the service draws again).
- The roll goes through the ordinary submit path: intent journaled before createTask, the task id on disk
  before anything else, so a kill anywhere resumes like any submission and pays for nothing twice.
- The roll is opened in the ledger (`Ledger.start_roll`) before it is submitted; the record stays `succeeded`
  with its files until the new roll's files are verified. Then the earlier roll's files are kept as
  `<stem>~roll<k>.<ext>` (a hard link made before the verified file replaces the name, so no moment lacks
  either), and `rolls` holds every roll: n, task id, request sent, seed, files, sha256, decision.
- A roll that fails for good leaves the item `succeeded` with its files, marked `reroll_failed`.
- A decision is about one task's image (decisions.py): once re-rolled, the item is undecided again, so a second
  `--reroll` with no new rejection creates nothing.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import decisions
from . import records as rec
from .names import inside
from .records import ErrorRecord, Record
from .schema import MAX_SEED

if TYPE_CHECKING:
    from .ledger import Ledger
    from .manifest import Item
    from .models import Registry
    from .plan import Plan


SIDECARS = ("", ".json", ".xmp")  # an image, and what --metadata writes beside it (.xmp: the AI label, SPEC §3)


def _seed_of(request: Mapping[str, Any] | None) -> int | None:
    return rec.seed(rec.input_of(request))


def next_seed(item: Item, record: Record, taken: set[int], ceiling: int = MAX_SEED) -> int | None:
    """The next roll's seed: the smallest above the item's highest so far that no other item uses; None for a
    request without a seed (the service draws a new image from the same request). ValueError when none is left
    up to `ceiling` (the model card's maximum): a seed the model refuses or wraps is never sent."""
    own = _seed_of(item.request)
    if own is None:
        return None
    seeds = [own, *(s for r in rec.rolls(record) if (s := rec.seed(r)) is not None)]
    seed: int = max(seeds) + 1
    while seed in taken:
        seed += 1
    if seed > min(ceiling, MAX_SEED):
        raise ValueError(f"item {item.id!r}: no seed left above {max(seeds)}")
    return seed


def roll_item(item: Item, seed: int | None) -> Item:
    """The item as this roll sends it: the manifest's request with the roll's seed."""
    if seed is None:
        return item
    return dataclasses.replace(item, input={**item.input, "seed": seed})


Chosen = tuple["Item", int | None, list[str] | None]  # the roll's item, its seed, where the current files go
#                                                      (None: a roll opened by an earlier run, resumed)


def choose(
    items: Sequence[Item],
    records: Mapping[str, Record],
    directory: Path,
    *,
    reroll: bool,
    cards: Registry | None = None,
) -> tuple[list[Chosen], list[str]]:
    """The rolls this run submits, in manifest order, and the rejected items that cannot be re-rolled.

    A roll opened by an earlier run that never got a task id is submitted again with its seed (with or without
    --reroll: its intent is on disk); a roll with a task id is resumed by the plan like any submitted item.
    With `reroll`, every succeeded item of the manifest whose current decision is `rejected` gets a new roll,
    unless its current files cannot be kept under their `~roll` names or no seed is left below its model's
    maximum (`cards`): that is found before anything is paid."""
    held = decisions.current(directory, records) if reroll else {}
    if not held and not any("roll" in record for record in records.values()):
        return [], []  # no decision to re-roll and no roll open: the loop below would choose nothing
    taken: set[int] | None = None  # every seed in use, found when a re-roll first needs one (not on every resume)
    chosen: list[Chosen] = []
    refused: list[str] = []
    for item in items:
        record = records.get(item.id)
        if record is None:
            continue
        open_roll = rec.open_roll(record)
        entry = held.get(item.id)
        if open_roll is None and (entry is None or entry.decision != "rejected"):
            continue  # nothing to roll (asked first: most of 100,000 items, and cheaper than the request's check)
        if not item.same_request(record["request"]):
            continue  # new, or changed: the plan submits the manifest's request, and its decision starts afresh
        if open_roll is not None:
            if record["state"] in ("succeeded", "pending"):
                seed = rec.seed(open_roll)
                chosen.append((roll_item(item, seed), seed, None))
            continue
        if entry is not None and entry.decision == "rejected":
            keep = kept_names(records, item.id, directory)
            if keep is None:
                refused.append(item.id)
                continue
            if taken is None:
                taken = _seeds_in_use(items, records)
            try:
                seed = next_seed(item, record, taken, _seed_ceiling(cards, item.model))
            except ValueError:
                refused.append(item.id)
                continue
            if seed is not None:
                taken.add(seed)
            chosen.append((roll_item(item, seed), seed, keep))
    return chosen, refused


def _seed_ceiling(cards: Registry | None, model: str) -> int:
    card = cards.get(model) if cards is not None else None
    seed = card.fields.get("seed") if card is not None else None
    return seed.maximum if seed is not None and seed.maximum is not None else MAX_SEED


def _seeds_in_use(items: Sequence[Item], records: Mapping[str, Record]) -> set[int]:
    """The seeds of the manifest's requests and of every roll the ledger keeps or has open."""
    taken = {s for s in (_seed_of(i.request) for i in items) if s is not None}
    for other in records.values():
        taken |= {s for r in rec.rolls(other) if (s := rec.seed(r)) is not None}
        if (s := rec.seed(rec.open_roll(other))) is not None:
            taken.add(s)
    return taken


def add_to_plan(plan: Plan, chosen: Sequence[Chosen]) -> list[Chosen]:
    """Re-rolls go first among the submissions (first under --limit); they are no longer `done` or `new`. An
    item the plan resumes (its files are gone: fetched again first) is not re-rolled in the same run."""
    resumed = {item.id for item, _ in plan.resume}
    chosen = [c for c in chosen if c[0].id not in resumed]
    ids = {item.id for item, _, _ in chosen}
    plan.done = [i for i in plan.done if i.id not in ids]
    plan.new = [i for i in plan.new if i.id not in ids]
    plan.reroll = [item for item, _, _ in chosen]
    return chosen


def begin(ledger: Ledger, chosen: Sequence[Chosen], limit: int | None) -> None:
    """Open the newly chosen rolls in the ledger (only as many as --limit lets this run submit)."""
    for opened, (item, seed, keep) in enumerate(chosen):
        if limit is not None and opened >= limit:
            break
        if keep is not None:
            ledger.start_roll(item.id, seed, keep)


def kept_names(records: Mapping[str, Record], item_id: str, directory: Path) -> list[str] | None:
    """Where the current roll's files go once the next roll is verified: `<stem>~roll<k>.<ext>`, k the current
    roll's number; None when one cannot be: a name another item's file (of any roll) holds, a name a file
    already has in DIR, one outside DIR, or one too long for the file system (255 bytes)."""
    record = records[item_id]
    earlier = rec.rolls(record)
    k = rec.roll_number(earlier[_good(earlier)], len(earlier)) if earlier else 1
    theirs = set()
    for other, r in records.items():
        if other != item_id:
            theirs.update(r["files"])
            theirs.update(name for roll in rec.rolls(r) for name in rec.roll_files(roll))
    names = []
    for name in record["files"]:
        stem, dot, ext = name.rpartition(".")
        kept = f"{stem}~roll{k}.{ext}" if dot else f"{name}~roll{k}"
        if (
            any(
                f"{kept}{suffix}" in theirs or _taken(directory / f"{kept}{suffix}", directory / f"{name}{suffix}")
                for suffix in SIDECARS
            )
            or not inside(kept)
            or len(os.path.basename(kept).encode()) + max(map(len, SIDECARS)) > 255
        ):
            return None
        names.append(kept)
    return names


def _taken(kept: Path, current: Path) -> bool:
    """Whether a file is at `kept` that is not `current` itself (a link an earlier attempt of a roll made)."""
    try:
        there = kept.lstat()
    except FileNotFoundError:
        return False
    try:
        return not os.path.samestat(there, current.lstat())
    except OSError:
        return True


def keep_earlier(directory: Path, record: Record) -> None:
    """Before a verified roll's file replaces a name: link the earlier roll's file (and its --metadata sidecars,
    which the new roll's would replace) to its `~roll<k>` name."""
    roll = rec.open_roll(record)
    if roll is None:
        return
    for old, kept in zip(record["files"], rec.roll_keep(roll), strict=False):
        if not inside(old) or not inside(kept):
            continue
        for suffix in SIDECARS:
            try:
                os.link(directory / f"{old}{suffix}", directory / f"{kept}{suffix}", follow_symlinks=False)
            except FileExistsError:
                continue  # linked by an earlier attempt of this roll
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise


# ---------------------------------------------------------------- the record's side (Ledger's transitions call these)


def opened(record: Record, seed: int | None, keep: list[str]) -> Record:
    """The record with a new roll open: its current image becomes a roll in `rolls` (roll 1 the original)."""
    earlier = [dict(r) for r in rec.rolls(record)]
    if not earlier:
        request = record["request"] or {}
        earlier.append(
            {
                "n": 1,
                "task_id": record["task_id"],
                "request_sent": request,
                "seed": rec.input_of(request).get("seed"),
                "files": list(record["files"]),
                "sha256": list(record["sha256"]),
                "decision": rec.decision(record),
            }
        )
    else:
        earlier[_good(earlier)]["decision"] = rec.decision(record)
    record["rolls"] = earlier
    record["roll"] = {"n": len(earlier) + 1, "seed": seed, "request_sent": None, "keep": keep}
    record.pop("reroll_failed", None)
    return record


def verified(record: Record, files: list[str], sha256: list[str]) -> None:
    """A roll's files are in place: the roll joins `rolls`, the earlier one's files are its `~roll` names, and
    the new image is undecided."""
    roll = record.pop("roll", None)
    if roll is None:
        return
    earlier = [dict(r) for r in rec.rolls(record)]
    if earlier:
        last = earlier[_good(earlier)]
        last["files"] = [k or n for n, k in zip(last["files"], rec.roll_keep(roll), strict=False)]
    earlier.append(
        {
            "n": roll["n"],
            "task_id": record["task_id"],
            **rec.roll_fields(roll, ("request_sent", "seed")),
            "files": files,
            "sha256": sha256,
            "decision": None,
        }
    )
    record["rolls"] = earlier
    record.pop("decision", None)


def failed_for_good(record: Record, error: ErrorRecord) -> bool:
    """A roll failed for good: the record keeps the earlier roll's image (state `succeeded`, its task id),
    marked `reroll_failed`, and the failed roll is listed in `rolls`. False when no roll was open."""
    roll = record.pop("roll", None)
    if roll is None or not rec.rolls(record):
        return False
    earlier = [dict(r) for r in record["rolls"]]
    kept = earlier[_good(earlier)]
    failed_task = record["task_id"] if record["task_id"] != kept["task_id"] else None
    earlier.append(
        {
            **rec.roll_fields(roll, ("n", "seed", "request_sent")),
            "task_id": failed_task,
            "files": [],
            "sha256": [],
            "decision": None,
            "error": error,
        }
    )
    record.update(
        {
            "state": "succeeded",
            "task_id": kept["task_id"],
            "error": None,
            "reroll_failed": error,
            "rolls": earlier,
        }
    )
    return True


def _good(earlier: list[dict[str, Any]]) -> int:
    """The index of the latest roll that gave the item its image (a failed roll has an `error`)."""
    return max((n for n, r in enumerate(earlier) if "error" not in r), default=len(earlier) - 1)
