"""What the ledger says: `status` for people and scripts, the `index.html` contact sheet, the metrics file."""

from __future__ import annotations

import html
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image

from .errors import UsageError
from .files import STATE_DIR, state_dir, write_atomically
from .ledger import RESULTS, STATES, Loaded, Record, exists, load


def _load(directory: Path) -> Loaded:
    if not exists(directory):
        raise UsageError(f"{directory} has no ledger ({RESULTS}): nothing has run there yet")
    return load(directory)


def status(directory: Path, loaded: Loaded | None = None) -> dict[str, Any]:
    """The ledger of DIR as one document: counts by state, failures, items in doubt, items no longer listed."""
    loaded = loaded or _load(directory)
    retired = set(loaded.not_in_manifest)
    counts = dict.fromkeys(STATES, 0)
    failed, in_doubt, incomplete, missing = [], [], [], []
    for item_id, record in loaded.items.items():
        if item_id in retired:
            continue
        state = record.get("state", "pending")
        counts[state] = counts.get(state, 0) + 1
        if state == "failed":
            failed.append({"id": item_id, "attempts": record.get("attempts", 0), "error": record.get("error")})
        elif state in ("pending", "submitted"):
            incomplete.append({"id": item_id, "state": state, "task_id": record.get("task_id")})
        if state == "succeeded":
            gone = [name for name in record.get("files") or () if not (directory / name).is_file()]
            if gone:
                missing.append({"id": item_id, "files": gone})
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
        "missing_files": missing,
        "not_in_manifest": sorted(retired & set(loaded.items)),
        "files": sum(len(r.get("files") or ()) for i, r in loaded.items.items() if i not in retired),
        "damaged": loaded.damaged,
    }


def status_text(doc: dict[str, Any]) -> str:
    counts = doc["counts"]
    total = sum(counts.values())
    lines = [
        f"{doc['directory']}: {total} items from {doc['manifest'] or '(unknown manifest)'}, "
        f"updated {doc['updated_at'] or 'never'}",
        "  " + ", ".join(f"{counts[s]} {s}" for s in STATES) + f"; {doc['files']} image files",
    ]
    if doc.get("damaged"):
        lines.append(f"  warning: {doc['damaged']}; the next run rebuilds it from the journal")
    for entry in doc["failed"]:
        error = entry["error"] or {}
        code = f"{error.get('code')}: " if error.get("code") else ""
        lines.append(
            f"  failed  {entry['id']}: {error.get('kind', 'error')}: {code}{error.get('message', '')} "
            f"({entry['attempts']} attempt{'s' if entry['attempts'] != 1 else ''})"
        )
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
            f"  in doubt {entry['id']}: a createTask call was interrupted {entry['times']} time(s); "
            "the service may have charged for it"
        )
    if doc["not_in_manifest"]:
        lines.append(
            f"  no longer in the manifest (kept, untouched): {', '.join(doc['not_in_manifest'][:20])}"
            + (" …" if len(doc["not_in_manifest"]) > 20 else "")
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- the contact sheet

THUMB_DIR = "thumbs"  # under DIR/.batchgen/
THUMB_SIZE = (320, 320)
REPORT = "index.html"


def write_report(directory: Path) -> Path:
    """Write DIR/index.html: a static contact sheet that works from file:// with no server and no network."""
    loaded = _load(directory)
    doc = status(directory, loaded)
    items = loaded.items
    retired = set(doc["not_in_manifest"])
    thumbs = state_dir(directory, THUMB_DIR)
    shown = [
        (item_id, record)
        for item_id, record in items.items()
        if item_id not in retired and record.get("state") == "succeeded" and record.get("files")
    ]
    names = [name for _, record in shown for name in record["files"]]
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        made = pool.map(lambda name: _thumbnail(directory / name, thumbs / f"{name}.jpg"), names)
        sizes = dict(zip(names, made, strict=True))
    page = _page(doc, shown, items, sizes)
    target = directory / REPORT
    write_atomically(target, page.encode("utf-8"), state_dir(directory))
    return target


def _thumbnail(source: Path, target: Path) -> tuple[int, int] | None:
    """Make (or reuse) a small JPEG of an image; its size, or None when the image cannot be read."""
    try:
        if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
            with Image.open(target) as existing:
                return existing.size
        with Image.open(source) as image:
            image.draft("RGB", THUMB_SIZE)  # JPEG: decode at a reduced scale, far faster
            image.thumbnail(THUMB_SIZE)
            small = image.convert("RGB")
        temp = target.with_suffix(".tmp")
        small.save(temp, "JPEG", quality=80)
        os.replace(temp, target)
        return small.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _prompt(record: Record | None) -> str:
    request = (record.get("request") if record is not None else None) or {}
    return str(request.get("input", {}).get("prompt", ""))


def _page(
    doc: dict[str, Any],
    shown: list[tuple[str, Record]],
    items: dict[str, Record],
    sizes: dict[str, tuple[int, int] | None],
) -> str:
    e = html.escape
    counts = doc["counts"]
    cards = []
    for item_id, record in shown:
        request_input = (record.get("request") or {}).get("input") or {}
        params = " · ".join(
            e(str(request_input[k]))
            for k in ("aspect_ratio", "output_format", "seed", "person_generation", "safety_settings", "language")
            if k in request_input
        )
        took = _duration(record.get("submitted_at"), record.get("finished_at"))
        for name in record["files"]:
            thumb_path = f"{STATE_DIR}/{THUMB_DIR}/{name}.jpg"
            size = sizes.get(name)
            dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
            cards.append(
                f'<figure><a href="{quote(name)}"><img src="{quote(thumb_path)}" loading="lazy" decoding="async"'
                f'{dims} alt="{e(request_input.get("prompt", item_id))}"></a>'
                f"<figcaption><b>{e(item_id)}</b><p>{e(request_input.get('prompt', ''))}</p>"
                f"<small>{params}{' · ' + e(took) if took else ''}</small></figcaption></figure>"
            )
    problems = []
    for entry in doc["failed"]:
        error = entry["error"] or {}
        prompt = _prompt(items.get(entry["id"]))
        problems.append(
            f"<tr><td>{e(entry['id'])}</td><td>failed</td><td>{e(str(error.get('kind', '')))} "
            f"{e(str(error.get('code') or ''))}: {e(str(error.get('message', '')))}</td>"
            f"<td>{e(prompt)}</td></tr>"
        )
    for entry in doc["incomplete"]:
        prompt = _prompt(items.get(entry["id"]))
        reason = f"task {entry['task_id']} not finished yet" if entry["task_id"] else "not submitted yet"
        problems.append(
            f"<tr><td>{e(entry['id'])}</td><td>{e(entry['state'])}</td><td>{e(reason)}</td><td>{e(prompt)}</td></tr>"
        )
    table = (
        (
            "<h2>Not done</h2><table><tr><th>id</th><th>state</th><th>reason</th><th>prompt</th></tr>"
            + "".join(problems)
            + "</table>"
        )
        if problems
        else ""
    )
    summary = " · ".join(f"{counts[s]} {s}" for s in STATES)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>batchgen: {e(str(doc["manifest"] or ""))}</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#222;background:#fafafa}}
header p{{color:#555}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:1rem;align-items:start}}
figure{{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;overflow:hidden}}
figure img{{display:block;width:100%;height:auto;background:#eee}}
figcaption{{padding:.5rem .6rem}} figcaption p{{margin:.25rem 0;white-space:pre-wrap;overflow-wrap:anywhere}}
small{{color:#666}} table{{border-collapse:collapse;width:100%;background:#fff}}
td,th{{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top;overflow-wrap:anywhere}}
</style></head><body>
<header><h1>{e(str(doc["manifest"] or "batchgen"))}</h1>
<p>{summary} · {doc["files"]} images · updated {e(str(doc["updated_at"] or "never"))}</p></header>
{table}
<h2>Images</h2>
<div class="grid">
{chr(10).join(cards)}
</div>
</body></html>
"""


def _duration(start: str | None, end: str | None) -> str:
    if not start or not end:
        return ""
    try:
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        seconds = (datetime.strptime(end, fmt) - datetime.strptime(start, fmt)).total_seconds()
    except ValueError:
        return ""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


# ---------------------------------------------------------------- metrics for node_exporter


def write_metrics(path: Path, *, manifest: str, counts: dict[str, int], figures: dict[str, float]) -> None:
    """A Prometheus textfile-collector file, replaced atomically (node_exporter must never read half a file)."""
    label = manifest.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    lines = ["# HELP batchgen_items Items of the last run's manifest, by state.", "# TYPE batchgen_items gauge"]
    lines += [f'batchgen_items{{manifest="{label}",state="{state}"}} {counts.get(state, 0)}' for state in STATES]
    for name, value in figures.items():
        lines += [f"# TYPE batchgen_last_run_{name} gauge", f'batchgen_last_run_{name}{{manifest="{label}"}} {value:g}']
    data = ("\n".join(lines) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data, path.parent)
