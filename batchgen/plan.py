"""Manifest items x ledger records -> what this run does with each item. `run` and `--dry-run` share it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
