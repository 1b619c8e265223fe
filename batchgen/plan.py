"""Manifest items x ledger records -> what this run does with each item. `run` and `--dry-run` share it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .ledger import Record
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
    in_doubt: list[Item] = field(default_factory=list)  # submitted again though an earlier create may be paid
    missing: list[Item] = field(default_factory=list)  # succeeded, but a file is gone: fetched again (in resume)
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
            "missing": len(self.missing),
            "not_in_manifest": len(self.not_in_manifest),
        }


def make_plan(
    items: Sequence[Item], records: Mapping[str, Record], *, retry_failed: bool, directory: Path | None = None
) -> Plan:
    """What to do with each item. With `directory`, a succeeded item whose files are gone is fetched again."""
    plan = Plan()
    for item in items:
        record = records.get(item.id)
        if record is None:
            plan.new.append(item)
            continue
        if not item.same_request(record.get("request")):
            plan.changed.append(item)
        else:
            state = record.get("state")
            task_id = record.get("task_id")
            if state == "succeeded":
                if directory is not None and task_id and _missing(directory, record):
                    plan.missing.append(item)
                    plan.resume.append((item, task_id))
                else:
                    plan.done.append(item)
                continue
            if state == "submitted" and task_id:
                plan.resume.append((item, task_id))
                continue
            if state == "failed":
                (plan.retry if retry_failed else plan.failed).append(item)
                if not retry_failed:
                    continue
            else:
                plan.new.append(item)
        if record.get("in_doubt") or record.get("submitting"):
            plan.in_doubt.append(item)  # only those submitted again now: the warning is about this run
    listed = {item.id for item in items}
    plan.not_in_manifest = sorted(set(records) - listed)
    return plan


def _missing(directory: Path, record: Record) -> bool:
    return any(not (directory / name).is_file() for name in record.get("files") or ())
