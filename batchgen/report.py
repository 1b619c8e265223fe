"""What the ledger says, for people (`batchgen status DIR`) and for scripts (`--json`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import UsageError
from .ledger import RESULTS, STATE_DIR, STATES, load


def status(directory: Path) -> dict[str, Any]:
    """The ledger of DIR as one document: counts by state, failures, items in doubt, items no longer listed."""
    if not (directory / RESULTS).exists() and not (directory / STATE_DIR).exists():
        raise UsageError(f"{directory} has no ledger ({RESULTS}): nothing has run there yet")
    loaded = load(directory)
    snapshot: dict[str, Any] = {}
    if (directory / RESULTS).exists():
        snapshot = json.loads((directory / RESULTS).read_bytes())
    retired = set(snapshot.get("not_in_manifest") or ())
    counts = dict.fromkeys(STATES, 0)
    failed, in_doubt, incomplete = [], [], []
    for item_id, record in loaded.items.items():
        if item_id in retired:
            continue
        state = record.get("state", "pending")
        counts[state] = counts.get(state, 0) + 1
        if state == "failed":
            failed.append({"id": item_id, "attempts": record.get("attempts", 0), "error": record.get("error")})
        elif state in ("pending", "submitted"):
            incomplete.append({"id": item_id, "state": state, "task_id": record.get("task_id")})
        if record.get("in_doubt") or record.get("submitting"):
            in_doubt.append({"id": item_id, "times": int(record.get("in_doubt", 0)) + bool(record.get("submitting"))})
    return {
        "directory": str(directory),
        "manifest": loaded.manifest,
        "updated_at": loaded.updated_at,
        "counts": counts,
        "failed": failed,
        "incomplete": incomplete,
        "in_doubt": in_doubt,
        "not_in_manifest": sorted(retired & set(loaded.items)),
        "files": sum(len(r.get("files") or ()) for i, r in loaded.items.items() if i not in retired),
    }


def status_text(doc: dict[str, Any]) -> str:
    counts = doc["counts"]
    total = sum(counts.values())
    lines = [f"{doc['directory']}: {total} items from {doc['manifest'] or '(unknown manifest)'}, "
             f"updated {doc['updated_at'] or 'never'}",
             "  " + ", ".join(f"{counts[s]} {s}" for s in STATES) + f"; {doc['files']} image files"]
    for entry in doc["failed"]:
        error = entry["error"] or {}
        code = f"{error.get('code')}: " if error.get("code") else ""
        lines.append(f"  failed  {entry['id']}: {error.get('kind', 'error')}: {code}{error.get('message', '')} "
                     f"({entry['attempts']} attempt{'s' if entry['attempts'] != 1 else ''})")
    for entry in doc["incomplete"][:50]:
        task = f" (task {entry['task_id']})" if entry["task_id"] else ""
        lines.append(f"  {entry['state']:<9} {entry['id']}{task}")
    if len(doc["incomplete"]) > 50:
        lines.append(f"  … and {len(doc['incomplete']) - 50} more pending or submitted")
    for entry in doc["in_doubt"]:
        lines.append(f"  in doubt {entry['id']}: a createTask call was interrupted {entry['times']} time(s); "
                     "the service may have charged for it")
    if doc["not_in_manifest"]:
        lines.append(f"  no longer in the manifest (kept, untouched): {', '.join(doc['not_in_manifest'][:20])}"
                     + (" …" if len(doc["not_in_manifest"]) > 20 else ""))
    return "\n".join(lines)
