"""Manifest items x ledger records -> what this run does with each item. `run` and `--dry-run` share it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from .errors import UsageError
from .manifest import Item


@dataclass(slots=True)
class Plan:
    """Items by what happens to them now. `submit` and `resume` are the work; the rest is left alone."""

    new: list[Item] = field(default_factory=list)  # never submitted (or pending from an earlier run)
    changed: list[Item] = field(default_factory=list)  # the manifest's request differs from the ledger's
    retry: list[Item] = field(default_factory=list)  # failed for good earlier, and --retry-failed
    resume: list[tuple[Item, str]] = field(default_factory=list)  # submitted earlier: poll this task id
    done: list[Item] = field(default_factory=list)
    failed: list[Item] = field(default_factory=list)  # failed for good earlier; left alone
    in_doubt: list[Item] = field(default_factory=list)  # a createTask call of theirs may have been paid
    not_in_manifest: list[str] = field(default_factory=list)

    @property
    def submit(self) -> list[Item]:
        return [*self.new, *self.changed, *self.retry]

    def summary(self) -> dict[str, int]:
        return {
            "new": len(self.new),
            "changed": len(self.changed),
            "retry": len(self.retry),
            "resume": len(self.resume),
            "done": len(self.done),
            "failed": len(self.failed),
            "in_doubt": len(self.in_doubt),
            "not_in_manifest": len(self.not_in_manifest),
        }


def make_plan(items: Sequence[Item], records: Mapping[str, Mapping[str, Any]], *, retry_failed: bool) -> Plan:
    plan = Plan()
    for item in items:
        record = records.get(item.id)
        if record is None:
            plan.new.append(item)
            continue
        if record.get("in_doubt"):
            plan.in_doubt.append(item)
        request = record.get("request")
        if not item.same_request(request):
            plan.changed.append(item)
            continue
        state = record.get("state")
        if state == "succeeded":
            plan.done.append(item)
        elif state == "submitted" and record.get("task_id"):
            plan.resume.append((item, str(record["task_id"])))
        elif state == "failed":
            (plan.retry if retry_failed else plan.failed).append(item)
        else:
            plan.new.append(item)
    listed = {item.id for item in items}
    plan.not_in_manifest = sorted(set(records) - listed)
    return plan


# ---------------------------------------------------------------- what it would cost, before it is spent

IMAGE_SECONDS = (20, 45)  # Imagen 4 Ultra's published time per image


def parse_price(text: str | None, source: str) -> Decimal | None:
    """A price per image (any currency) from --price or $BATCHGEN_PRICE; None when neither is given."""
    if text is None or not text.strip():
        return None
    try:
        price = Decimal(text.strip())
    except InvalidOperation:
        price = Decimal("NaN")
    if not price.is_finite() or price < 0:
        raise UsageError(f"{source}: expected a price per image such as 0.04; got {text!r}")
    return price


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
