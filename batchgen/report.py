"""What the ledger says: `status` for people and scripts, and the metrics file for node_exporter.

The contact sheet (index.html) is `sheet.py`."""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path
from typing import Any

from . import decisions, prices, records
from .errors import ExitCode, UsageError
from .escapes import visible
from .files import STATE_DIR, NotRegular, TooLarge, read_file, write_atomically
from .ledger import RESULTS, STATES, Loaded, exists, load
from .progress import plural
from .records import price_of
from .store import LOCK


def read_ledger(directory: Path) -> Loaded:
    """DIR's ledger, read without the lock; a UsageError if DIR has none."""
    if not exists(directory):
        raise UsageError(f"{directory} has no ledger ({RESULTS}): nothing has run there yet")
    return load(directory)


def status(directory: Path, loaded: Loaded | None = None) -> dict[str, Any]:
    """The ledger of DIR as one document: counts by state, failures, items in doubt, items no longer listed."""
    loaded = loaded or read_ledger(directory)
    retired = set(loaded.not_in_manifest)
    counts = dict.fromkeys(STATES, 0)
    failed, in_doubt, incomplete, missing = [], [], [], []
    for item_id, record in loaded.items.items():
        if item_id in retired:
            continue
        state = record["state"]
        counts[state] += 1
        if state == "failed":
            failed.append({"id": item_id, "attempts": record["attempts"], "error": record["error"]})
        elif state in ("pending", "submitted"):
            incomplete.append({"id": item_id, "state": state, "task_id": record["task_id"]})
        if state == "succeeded":
            gone = [name for name in record["files"] if not (directory / name).is_file()]
            if gone:
                missing.append({"id": item_id, "files": gone})
        if times := records.in_doubt(record):
            in_doubt.append({"id": item_id, "times": times})
    return {
        "directory": str(directory),
        "manifest": loaded.manifest,
        "updated_at": loaded.updated_at,
        "counts": counts,
        "failed": failed,
        "incomplete": incomplete,
        "in_doubt": in_doubt,
        "missing_files": missing,
        "not_in_manifest": sorted(retired & set(loaded.items)),
        "files": sum(len(r["files"]) for i, r in loaded.items.items() if i not in retired),
        "damaged": loaded.damaged,
        **_spend(loaded),
        "review": _review(directory, loaded, retired),
        "running_pid": running_pid(directory),
    }


def _spend(loaded: Loaded) -> dict[str, Any]:
    """Money: the ledger's paid creates (every item's whole life, listed or not), the recorded price and the
    spend so far, and the service's own billing fields from recordInfo (summed; the balance of the latest)."""
    paid = records.paid_total(loaded.items)
    doc: dict[str, Any] = {"paid_creates": paid, "price": loaded.price, "spend": None}
    price = price_of(loaded.price)
    if price is not None:
        doc["spend"] = str(price * paid)
    by_model = prices.paid_by_model(loaded.items.values())
    recorded = prices.recorded(loaded.price)
    doc["by_model"] = {}
    for model, n in sorted(by_model.items()):
        each = recorded.of(model) if recorded is not None else None
        doc["by_model"][model] = {
            "paid_creates": n,
            "price": None if each is None else str(each),
            "spend": None if each is None else str(each * n),
        }
    _, total = prices.costs(by_model, recorded)
    if recorded is not None and recorded.by_model and total is not None:
        doc["spend"] = str(total)
    consumed, costs, latest = 0.0, 0, None
    for record in loaded.items.values():
        cost = records.cost(record)
        if "consumeCredits" in cost:
            consumed += cost["consumeCredits"]
            costs += 1
        if "remainedCredits" in cost:
            when = record["finished_at"] or ""
            if latest is None or when >= latest[0]:
                latest = (when, cost["remainedCredits"])
    doc["service_credits"] = {
        "consumed": consumed if costs else None,
        "remained": latest[1] if latest else None,
        "items": costs,
    }
    return doc


def _review(directory: Path, loaded: Loaded, retired: set[str]) -> dict[str, Any]:
    """The review decisions that hold now (decisions.py), for the items of the manifest: counts and the rejected,
    which `run --reroll` rolls again."""
    listed = {i: r for i, r in loaded.items.items() if i not in retired}
    held = decisions.current(directory, listed)
    tally = decisions.counts(held)
    reviewable = sum(r["state"] == "succeeded" for r in listed.values())
    return {
        **tally,
        "reroll_failed": sorted(i for i, r in listed.items() if records.reroll_failed(r)),
        "undecided": reviewable - len(held),
        "rejected_ids": [i for i, e in held.items() if e.decision == "rejected"],
    }


def running_pid(directory: Path) -> int | None:
    """The pid of the run that holds DIR's lock now, or None. Read from /proc/locks (Linux), never by taking
    the lock, not even shared: a run starting at that instant would find it taken and exit 4."""
    try:
        info = (directory / STATE_DIR / LOCK).lstat()
        with open("/proc/locks", encoding="ascii", errors="replace") as handle:
            lines = handle.read(METRICS_LIMIT).splitlines()
    except OSError:
        return None
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    for line in lines:
        fields = line.split()
        if "->" in fields:  # a waiter, not the holder
            continue
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device and fields[4].isdigit():
            return int(fields[4])
    return None


def _model_cost(model: str, entry: dict[str, Any]) -> str:
    if entry.get("spend") is None:
        return f"{model} {entry['paid_creates']:,}"
    return f"{model} {entry['paid_creates']:,} × {entry['price']} = {entry['spend']}"


def status_text(doc: dict[str, Any]) -> str:
    counts = doc["counts"]
    total = sum(counts.values())
    if doc.get("running_pid"):  # its snapshot is written at the end: the journal knows more than results.json
        when = f"a run is in progress (pid {doc['running_pid']}); last snapshot {doc['updated_at'] or 'not yet'}"
    else:
        when = f"updated {doc['updated_at'] or 'never'}"
    lines = [
        f"{doc['directory']}: {plural(total, 'item')} from {doc['manifest'] or '(manifest not yet recorded)'}, {when}",
        "  " + ", ".join(f"{counts[s]} {s}" for s in STATES) + f"; {plural(doc['files'], 'image file')}",
    ]
    if doc.get("damaged"):
        lines.append(f"  warning: {doc['damaged']}; the next run rebuilds it from the journal")
    money = plural(doc.get("paid_creates", 0), "paid create")
    if doc.get("spend") is not None and price_of(doc["price"]) is not None:
        money += f" × {doc['price']} = {doc['spend']} spent so far"
    elif doc.get("spend") is not None:
        money += f"; {doc['spend']} spent so far"
    if len(doc.get("by_model") or ()) > 1 or (doc.get("spend") is not None and price_of(doc["price"]) is None):
        money += " (" + "; ".join(_model_cost(m, e) for m, e in doc["by_model"].items()) + ")"
    credits = doc.get("service_credits") or {}
    if credits.get("consumed") is not None:
        money += f"; the service charged {credits['consumed']:g} credits for {plural(credits['items'], 'item')}"
    if credits.get("remained") is not None:
        money += f", {credits['remained']:g} credits left"
    lines.append(f"  {money}")
    review = doc.get("review") or {}
    if review.get("approved") or review.get("rejected"):
        line = (
            f"  review: {review['approved']} approved, {review['rejected']} rejected, {review['undecided']} undecided"
        )
        if review["rejected"]:
            line += "; `run --reroll` generates the rejected again"
        lines.append(line)
    for item_id in review.get("reroll_failed", ())[:50]:
        lines.append(f"  reroll failed {item_id}: its re-roll failed for good; it keeps its earlier image")
    for entry in doc["failed"]:
        error = entry["error"]
        kind, message = (error["kind"], error["message"]) if error else (None, "")
        code = f"{records.error_code(error)}: " if error and records.error_code(error) else ""
        lines.append(f"  failed  {entry['id']}: {kind or 'error'}: {code}{message} ({_tries(kind, entry['attempts'])})")
    for entry in doc["incomplete"][:50]:
        task = f" (task {entry['task_id']})" if entry["task_id"] else ""
        lines.append(f"  {entry['state']:<9} {entry['id']}{task}")
    if len(doc["incomplete"]) > 50:
        lines.append(f"  … and {len(doc['incomplete']) - 50} more pending or submitted")
    for entry in doc.get("missing_files", ()):
        lines.append(
            f"  missing {entry['id']}: {', '.join(entry['files'])} gone from the directory; the next run "
            "fetches it again"
        )
    for entry in doc["in_doubt"]:
        lines.append(
            f"  in doubt {entry['id']}: a createTask call was interrupted {plural(entry['times'], 'time')}; "
            "the service may have charged for it"
        )
    if doc["not_in_manifest"]:
        lines.append(
            f"  no longer in the manifest (kept, untouched): {', '.join(doc['not_in_manifest'][:20])}"
            + (" …" if len(doc["not_in_manifest"]) > 20 else "")
        )
    return "\n".join(visible(line) for line in lines)  # ids, failMsg, the manifest's name: outside text


def _tries(kind: str | None, attempts: int) -> str:
    """How far a failed item got: a request the service rejected at createTask never became a task."""
    if kind == "rejected":
        return "rejected when submitted: no task was created; fix the item in the manifest"
    if kind == "model_unavailable":
        return "not sent: the service does not offer its model; the next run tries one item of it first"
    return plural(attempts, "attempt")


# ---------------------------------------------------------------- metrics for node_exporter

# Every family the file can hold, with its HELP text: `promtool check metrics` wants HELP and TYPE for each.
METRIC_HELP = {
    "batchgen_items": "Items of the last run's manifest, by state (left out when the run stopped before reading it).",
    "batchgen_last_run_paid_creates": "createTask calls of the last run that may have been charged.",
    "batchgen_last_run_retries": "Tasks of the last run submitted again after a transient failure.",
    "batchgen_last_run_rate_limited": "429 answers the last run received.",
    "batchgen_last_run_status_queries": "recordInfo calls of the last run.",
    "batchgen_last_run_callbacks": "Valid callbacks that woke a poller in the last run.",
    "batchgen_last_run_in_doubt": "createTask calls of the last run whose answer was lost (possibly paid).",
    "batchgen_last_run_lost": "Items of the last run whose task the service no longer knew, a day after creation.",
    "batchgen_last_run_seconds": "Wall time of the last run, in seconds.",
    "batchgen_last_run_paid_creates_by_model": "The last run's paid creates of one model.",
    "batchgen_last_run_price": "The price of one image the last run knew (--price, or the one its ledger recorded).",
    "batchgen_last_run_spend": "The last run's paid creates times the price.",
    "batchgen_last_run_spend_total": "Spend so far: every paid create the ledger counts, times the price.",
    "batchgen_last_run_exit_code": "Exit code of the last run (0 all done, 1 some failed, 5 incomplete, see README).",
    "batchgen_last_run_finished_timestamp": "When the last run ended, in Unix seconds, whatever its exit code.",
    "batchgen_last_success_timestamp": (
        "When the last run that finished its work (exit 0 or 1) ended, in Unix seconds; carried over by runs "
        "that did not."
    ),
}
SUCCESS = "batchgen_last_success_timestamp"
METRICS_MODE = 0o644  # node_exporter reads it as another user, whatever the job's umask


def write_metrics(
    path: Path,
    *,
    manifest: str | None,
    counts: dict[str, int] | None,
    figures: dict[str, float | int],
    warn: list[str] | None = None,
    by_model: dict[str, int] | None = None,
) -> None:
    """A Prometheus textfile-collector file, replaced atomically (node_exporter must never read half a file).

    `figures` holds at least `exit_code` and `finished_timestamp`; a run that stopped early (exit 2, 4, 70)
    knows no more, and `counts` is None. The last-success timestamp is this run's end when it finished its
    work (exit 0 or 1), else the one in the previous file, so that a night that keeps failing shows as stale.
    `manifest` None keeps the previous file's label (the flags could not be read).
    """
    previous = _read_previous(path, warn)
    if manifest is None:
        manifest = previous.get("manifest", "")
    label = manifest.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    samples: list[tuple[str, str, float | int]] = []
    if counts is not None:
        samples += [("batchgen_items", f'manifest="{label}",state="{state}"', counts.get(state, 0)) for state in STATES]
    samples += [(f"batchgen_last_run_{name}", f'manifest="{label}"', value) for name, value in figures.items()]
    for model, paid in sorted((by_model or {}).items()):  # model names are card names: no quote, no backslash
        samples.append(("batchgen_last_run_paid_creates_by_model", f'manifest="{label}",model="{model}"', paid))
    success = (
        figures["finished_timestamp"]
        if figures["exit_code"] in (ExitCode.OK, ExitCode.FAILED)
        else previous.get(SUCCESS)
    )
    if success is not None:
        samples.append((SUCCESS, f'manifest="{label}"', success))
    lines: list[str] = []
    for name in dict.fromkeys(name for name, _, _ in samples):
        lines += [f"# HELP {name} {METRIC_HELP.get(name, name)}", f"# TYPE {name} gauge"]
        lines += [f"{name}{{{labels}}} {exact(value)}" for n, labels, value in samples if n == name]
    data = ("\n".join(lines) + "\n").encode()
    if problem := metrics_problem(path):
        raise UsageError(f"--metrics-file {path}: {problem}")
    write_atomically(path, data, path.parent, mode=METRICS_MODE)


def exact(value: float | int) -> str:
    """A sample value written exactly: integers as integers, others with every digit they have (never %g,
    which turns a Unix timestamp into 1.7957e+09, minutes off)."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return str(int(value))
    return repr(float(value))


CLOCK_SLACK = 3600.0  # seconds a carried-over success may lie ahead of now (a clock set back meanwhile)
METRICS_LIMIT = 1024 * 1024  # bytes: a metrics file is a few KiB; a larger one is not ours, its carry-over ignored


def metrics_problem(path: Path) -> str | None:
    """Why --metrics-file cannot be written, or None. Only the file is created, never a missing folder (a typo
    would otherwise make a tree somewhere, as root under cron); what is there must be a regular file (a
    FIFO would hang the end of the run, /dev/full would be replaced)."""
    parent = path.parent
    if not parent.is_dir():
        return f"its folder {parent} does not exist (batchgen creates only the file)"
    if path.is_symlink() or (path.exists() and not path.is_file()):
        return "it exists and is not a regular file; name a file (node_exporter reads *.prom files)"
    return None


def _read_previous(path: Path, warn: list[str] | None = None) -> dict[str, Any]:
    """From the previous metrics file: the last-success timestamp and the manifest label, when there are.

    Read only from a regular file, at most METRICS_LIMIT bytes: anything else has no carry-over (a warning)."""
    found: dict[str, Any] = {}
    try:
        data, _ = read_file(path, METRICS_LIMIT, follow=False)  # a planted link is not our file
    except FileNotFoundError:
        return found
    except (NotRegular, TooLarge):
        _note(warn, f"--metrics-file {path}: not a regular file of at most 1 MiB; no last success carried over")
        return found
    except OSError as exc:
        _note(warn, f"--metrics-file {path}: cannot read the previous file ({exc.strerror or exc}); no carry-over")
        return found
    text = data.decode("utf-8", errors="replace")
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name == SUCCESS and "} " in rest:
            labels, _, value = rest.rpartition("} ")
            try:
                when = float(value.strip())
            except ValueError:
                continue
            # A timestamp that is no time yet passed (+Inf, NaN, next year: a hand-edited or planted file) would
            # keep a night that fails from ever showing as stale: it is not carried over.
            if not (math.isfinite(when) and 0 < when <= time.time() + CLOCK_SLACK):
                continue
            found[SUCCESS] = when
            if labels.startswith('manifest="') and labels.endswith('"'):
                raw = labels[len('manifest="') : -1]
                found["manifest"] = re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], raw)
    return found


def _note(warn: list[str] | None, message: str) -> None:
    if warn is not None:
        warn.append(message)
