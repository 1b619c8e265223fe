"""Manifest items x ledger records -> what this run does with each item. `run` and `--dry-run` share it.

Also what a run would cost before anything is spent: the paid creates, the expected wall time, the price.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UsageError
from .escapes import flat
from .ledger import Record
from .manifest import Item
from .prices import costs
from .records import doubt_open

if TYPE_CHECKING:
    from .config import RunSettings


@dataclass(slots=True)
class Plan:
    """Items by what happens to them now. `submit` and `resume` are the work; the rest is left alone."""

    new: list[Item] = field(default_factory=list)  # never submitted (or pending from an earlier run)
    changed: list[Item] = field(default_factory=list)  # the manifest's request differs from the ledger's
    retry: list[Item] = field(default_factory=list)  # failed for good earlier, and --retry-failed
    reroll: list[Item] = field(default_factory=list)  # rejected in review, and --reroll: a new roll (rolls.py)
    resume: list[tuple[Item, str]] = field(default_factory=list)  # submitted earlier: poll this task id
    done: list[Item] = field(default_factory=list)
    failed: list[Item] = field(default_factory=list)  # failed for good earlier; left alone
    in_doubt: list[Item] = field(default_factory=list)  # submitted again though an earlier create may be paid
    missing: list[Item] = field(default_factory=list)  # succeeded, but a file is gone: fetched again (in resume)
    not_in_manifest: list[str] = field(default_factory=list)

    @property
    def submit(self) -> list[Item]:
        return [*self.reroll, *self.new, *self.changed, *self.retry]

    def summary(self) -> dict[str, int]:
        return {
            "new": len(self.new),
            "changed": len(self.changed),
            "retry": len(self.retry),
            "reroll": len(self.reroll),
            "resume": len(self.resume),
            "done": len(self.done),
            "failed": len(self.failed),
            "in_doubt": len(self.in_doubt),
            "missing": len(self.missing),
            "not_in_manifest": len(self.not_in_manifest),
        }


def make_plan(
    items: Sequence[Item], records: Mapping[str, Record], *, retry_failed: bool, directory: Path | None = None
) -> Plan:
    """What to do with each item. With `directory`, a succeeded item whose files are gone is fetched again.

    The common case first: every file the finished items are credited with is listed in DIR itself (nothing was
    deleted). Then the plan is the one made without looking at DIR, and the files are checked together (their names
    all within DIR's listing) instead of item by item. Otherwise the plan is made again, item by item."""
    if directory is None:
        return _plan(items, records, retry_failed, None, [])
    vouched: list[list[str]] = []
    plan = _plan(items, records, retry_failed, None, vouched)
    present = _Present(directory)
    if present.plain().issuperset(chain.from_iterable(vouched)):  # (no set of the names made: 4 MB at the peak)
        return plan  # (a name with a folder, or "..", is never in the listing: the long way then checks it)
    return _plan(items, records, retry_failed, present, [])


def _plan(
    items: Sequence[Item],
    records: Mapping[str, Record],
    retry_failed: bool,
    present: _Present | None,
    vouched: list[list[str]],
) -> Plan:
    """make_plan's plan; with `present`, a finished item whose files are gone is fetched again. `vouched` gets
    the files of each finished item with a task id whose files were not checked (with no `present`)."""
    plan = Plan()
    for item in items:
        record = records.get(item.id)
        if record is None:
            plan.new.append(item)
            continue
        request = record["request"]
        if not (  # item.same_request, inline: this runs for each of 100,000 items
            type(request) is dict and request.get("model") == item.model and request.get("input") == item.input
        ) and not item.same_request(request):
            plan.changed.append(item)
        else:
            state = record["state"]
            task_id = record["task_id"]
            if state == "succeeded":
                files = record["files"]
                if present is None:
                    if task_id:
                        vouched.append(files)
                    plan.done.append(item)
                # (One file, listed in DIR itself: `has` would say so; asked here, 100,000 calls less.)
                elif (
                    task_id
                    and not (len(files) == 1 and files[0] in present.plain())
                    and not all(map(present.has, files))
                ):
                    plan.missing.append(item)
                    plan.resume.append((item, task_id))
                else:
                    plan.done.append(item)
                continue
            if state == "submitted" and task_id:
                plan.resume.append((item, task_id))
                continue
            if state == "failed":
                again = retry_failed or _unavailable(record)  # a model gone yesterday is probed again today
                (plan.retry if again else plan.failed).append(item)
                if not again:
                    continue
            else:
                plan.new.append(item)
        if doubt_open(record):
            plan.in_doubt.append(item)  # submitted again now, with no task id since the doubtful call
    listed = {item.id for item in items}
    plan.not_in_manifest = sorted([i for i in records if i not in listed])  # no copy of every id
    return plan


def _unavailable(record: Record) -> bool:
    error = record["error"]
    return error is not None and error["kind"] == "model_unavailable"


class _Present:
    """Whether a file the ledger credits is in DIR (a regular file, through a link as `Path.is_file` sees it).

    Each folder is listed once (os.scandir) when first asked: a resume of 99,000 finished items is one listing,
    not 99,000 stats. Only a listed name is taken without a stat; a name the listing lacks (a case-insensitive
    file system, an odd name) is checked on its own, so the answer is always `Path.is_file`'s."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._folders: dict[str, frozenset[str]] = {}

    def plain(self) -> frozenset[str]:
        """The regular files in DIR itself, listed once: a name among them is there (`has`)."""
        listed = self._folders.get("")
        if listed is None:
            listed = self._folders[""] = self._list("")
        return listed

    def has(self, name: str) -> bool:
        if "/" not in name:  # nearly every name: a file in DIR itself
            folder, base, plain = "", name, name not in ("", ".", "..")
        else:
            folder, _, base = name.rpartition("/")
            plain = not {"", ".", ".."} & set(name.split("/"))
        if plain:  # a name inside DIR, its folders named plainly
            listed = self._folders.get(folder)
            if listed is None:
                listed = self._folders[folder] = self._list(folder)
            if base in listed:
                return True
        return (self.directory / name).is_file()

    def _list(self, folder: str) -> frozenset[str]:
        names = []
        try:
            with os.scandir(self.directory / folder if folder else self.directory) as entries:
                for entry in entries:  # a loop, not a call per entry: a folder of 100,000 images
                    try:
                        if entry.is_file():  # follows a link, as Path.is_file does
                            names.append(entry.name)
                    except OSError:
                        pass
        except OSError:
            return frozenset()
        return frozenset(names)


# ---------------------------------------------------------------- what it would cost, before it is spent

IMAGE_SECONDS = (20, 45)  # Imagen 4 Ultra's published time per image
LISTED = 50  # items --dry-run lists by id and prompt; the rest are counted
LINE = 118  # characters of a listed item's line


def describe(plan: Plan, settings: RunSettings) -> list[str]:
    """What `run --dry-run` prints: what would happen to each item, and what it would cost in creates, time and
    (with a price) money. Contacts nothing."""
    s = plan.summary()
    total = sum(s[k] for k in ("new", "changed", "retry", "resume", "done", "failed"))
    submit = plan.submit
    paid = len(submit) if settings.limit is None else min(settings.limit, len(submit))
    capped = f" (--limit {settings.limit} of {len(submit):,})" if paid < len(submit) else ""
    lines = [
        f"{settings.manifest}: {_plural(total, 'item')} -> {settings.out}",
        f"  would submit {paid:,}{capped}: {s['new']:,} new, {s['changed']:,} changed, {s['retry']:,} failed to retry"
        + (f", {s['reroll']:,} rejected to re-roll" if s["reroll"] else ""),
        f"  paid creates: {paid:,} = {'re-rolls + ' if s['reroll'] else ''}new + changed + retried"
        f"{', up to --limit' if capped else ''} "
        "(each createTask is charged; polling and downloads are not)",
    ]
    if paid:
        lines.extend(expected_time(paid, settings.create_rate, settings.concurrency))
    by_model = Counter(item.model for item in submit)
    if settings.price is not None:
        cost = settings.price * paid
        lines.append(f"  estimated cost: {paid:,} × {settings.price} = {cost} (a retried failure is paid again)")
    elif settings.prices is not None and by_model:
        parts, sum_ = costs(by_model, settings.prices)
        all_in = f"; {sum_} in all" if sum_ is not None else "; a model has no --price"
        limit = ", before --limit" if capped else ""
        lines.append(f"  estimated cost: {'; '.join(parts)}{all_in}{limit} (a retried failure is paid again)")
    if len(by_model) > 1 and not (settings.prices is not None and settings.price is None):
        lines.append("  paid creates by model: " + "; ".join(costs(by_model, settings.prices)[0]))
    lines.append(f"  would poll {s['resume']:,} already submitted (by task id, no new charge)")
    if s["missing"]:
        lines.append(f"  of those, {s['missing']:,} succeeded but lost a file: fetched again by task id")
    lines.append(
        f"  already done {s['done']:,}; failed and left alone {s['failed']:,}"
        + (" (use --retry-failed)" if s["failed"] else "")
    )
    if s["in_doubt"]:
        lines.append(f"  in doubt {s['in_doubt']:,} (a createTask call was interrupted; it may have been paid)")
    if s["not_in_manifest"]:
        lines.append(f"  in the ledger but no longer in the manifest: {s['not_in_manifest']:,} (kept, untouched)")
    for item in submit[: min(paid, LISTED)]:
        head = f"    submit {item.id}: "
        lines.append(head + cut(item.input.get("prompt", ""), max(30, LINE - len(head))))
    if paid > LISTED:
        lines.append(f"    … and {paid - LISTED:,} more")
    return lines


def expected_time(creates: int, create_rate: tuple[int, float], concurrency: int) -> list[str]:
    """The wall time of `creates` new tasks, as two lines: the create window paces the submissions (ceil(N/rate)
    windows), the in-flight limit paces them too where it is tighter, and the last image takes 20 to 45 s."""
    per, window = create_rate
    windows = math.ceil(creates / per)
    last_create = (windows - 1) * window
    waves = math.ceil(creates / concurrency)
    low, high = (_duration(max(last_create, (waves - 1) * t) + t) for t in IMAGE_SECONDS)
    span = f"about {low}" if low == high else f"about {low} to {high}"
    fast, slow = IMAGE_SECONDS
    tighter = last_create < (waves - 1) * fast
    return [
        f"  expected time: {span}, at {fast}–{slow} s per image (the service's published time)",
        f"    {creates:,} creates in ⌈{creates:,}/{per}⌉ = {windows:,} window{'' if windows == 1 else 's'} of "
        f"{window:g} s (--create-rate {per}/{window:g})"
        + (f"; at most {concurrency} in flight (--concurrency) is the tighter limit" if tighter else ""),
    ]


def cut(text: str, width: int) -> str:
    """`text` on one line, cut at a word boundary to at most `width` characters (control characters as spaces)."""
    line = flat(text)
    if len(line) <= width:
        return line
    head = line[: width - 1]
    space = head.rfind(" ")
    return (head[:space] if space > width // 2 else head).rstrip(" ,;:.") + "…"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min" + (f" {seconds} s" if seconds else "")
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def price_from(flag: str | None, env: Mapping[str, str]) -> Decimal | None:
    """The price per image: --price, else $BATCHGEN_PRICE, else None (no cost shown)."""
    if flag is not None:
        return parse_price(flag, "--price")
    return parse_price(env.get("BATCHGEN_PRICE"), "BATCHGEN_PRICE")


PRICE = re.compile(r"[0-9]{1,12}(\.[0-9]{0,12})?|\.[0-9]{1,12}")  # ASCII digits only: 0.04, 12, .5


def parse_price(text: str | None, source: str) -> Decimal | None:
    """A price per image (any currency) from --price or $BATCHGEN_PRICE; None when neither is given.

    Only what a person writes for a price: plain digits and one decimal point. No sign (`-0`), exponent
    (`1e999999`, which overflows the cost), `_` separator or non-ASCII digits; `--price ""` is an error, an
    empty BATCHGEN_PRICE is the same as none."""
    if text is None or (source != "--price" and not text.strip()):
        return None
    if not PRICE.fullmatch(text.strip()):
        raise UsageError(f"{source}: expected a price per image such as 0.04 (digits and a point); got {text!r}")
    return Decimal(text.strip())


def item_counts(listed: int, expanded: int) -> str:
    """`validate`'s count: the items a file lists and, when matrices or counts made more, the items after."""
    if listed == expanded:
        return _plural(expanded, "item")
    return f"{_plural(listed, 'item')} listed, {expanded:,} after expansion"


def upper_bound(items: int, price: Decimal | None) -> str:
    """`validate`'s cost: every item paid for once, which nothing already done in a DIR can make more."""
    if price is None:
        return ""
    return f"; at most {items:,} × {price} = {price * items} if every item is paid for once"


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"
