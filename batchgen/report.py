"""What the ledger says: `status` for people and scripts, the `index.html` contact sheet, the metrics file."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import json
import os
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image

from .errors import UsageError
from .files import STATE_DIR, state_dir, write_atomically
from .ledger import RESULTS, STATES, Loaded, exists, load
from .progress import plural


def _load(directory: Path) -> Loaded:
    if not exists(directory):
        raise UsageError(f"{directory} has no ledger ({RESULTS}): nothing has run there yet")
    return load(directory)


def status(directory: Path, loaded: Loaded | None = None) -> dict[str, Any]:
    """The ledger of DIR as one document: counts by state, failures, items in doubt, items no longer listed."""
    loaded = loaded or _load(directory)
    retired = set(loaded.not_in_manifest)
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
        "damaged": loaded.damaged,
    }


def status_text(doc: dict[str, Any]) -> str:
    counts = doc["counts"]
    total = sum(counts.values())
    lines = [
        f"{doc['directory']}: {plural(total, 'item')} from {doc['manifest'] or '(unknown manifest)'}, "
        f"updated {doc['updated_at'] or 'never'}",
        "  " + ", ".join(f"{counts[s]} {s}" for s in STATES) + f"; {plural(doc['files'], 'image file')}",
    ]
    if doc.get("damaged"):
        lines.append(f"  warning: {doc['damaged']}; the next run rebuilds it from the journal")
    for entry in doc["failed"]:
        error = entry["error"] or {}
        code = f"{error.get('code')}: " if error.get("code") else ""
        lines.append(
            f"  failed  {entry['id']}: {error.get('kind', 'error')}: {code}{error.get('message', '')} "
            f"({_tries(error.get('kind'), entry['attempts'])})"
        )
    for entry in doc["incomplete"][:50]:
        task = f" (task {entry['task_id']})" if entry["task_id"] else ""
        lines.append(f"  {entry['state']:<9} {entry['id']}{task}")
    if len(doc["incomplete"]) > 50:
        lines.append(f"  … and {len(doc['incomplete']) - 50} more pending or submitted")
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
    return "\n".join(lines)


def _tries(kind: str | None, attempts: int) -> str:
    """How far a failed item got: a request the service rejected at createTask never became a task."""
    if kind == "rejected":
        return "rejected when submitted: no task was created; fix the item in the manifest"
    return plural(attempts, "attempt")


# ---------------------------------------------------------------- the contact sheet

THUMB_DIR = f"{STATE_DIR}/thumbs"  # readable by others: see _thumb_folder
THUMB_SIZE = (320, 320)
REPORT = "index.html"
LAST_RUN = "last-run.json"  # under DIR/.batchgen/: the last run's figures, for the page's header
PAGE_SIZE = 200  # cards in the DOM at once: a 10,000-image night stays one light page
# Shown on the page: what a person reading a night needs. Everything else in `figures` is kept but not shown.
RUN_FIGURES = ("paid_creates", "retries", "rate_limited", "in_doubt", "seconds", "exit_code", "finished_timestamp")
# What the image's parameters are called on a card, in the order shown (the seed and the time get their own label).
_PARAMS = ("aspect_ratio", "output_format", "person_generation", "safety_settings", "language")


def write_last_run(directory: Path, figures: Mapping[str, float]) -> Path:
    """Keep the run's figures in DIR/.batchgen/last-run.json for the contact sheet; replaced atomically.

    The run calls it once at the end, with `engine.figures(outcome)` (paid creates, retries, 429s, wall time,
    exit code, ...): the ledger holds items, not runs, so this file is where the page finds them.
    """
    folder = state_dir(directory)
    target = folder / LAST_RUN
    numbers = {k: v for k, v in figures.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    write_atomically(target, json.dumps(numbers, indent=1, sort_keys=True).encode() + b"\n", folder)
    return target


def last_run_figures(directory: Path) -> dict[str, float] | None:
    """The figures `write_last_run` kept for DIR; None when there are none (no run wrote them, or unreadable).

    Only numbers are returned: the file is advisory, and a damaged one must not stop the contact sheet.
    """
    path = directory / STATE_DIR / LAST_RUN
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    numbers = {k: v for k, v in doc.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return numbers or None


def write_report(directory: Path) -> Path:
    """Write DIR/index.html: a static contact sheet that works from file:// with no server and no network.

    The items travel as one inline JSON block; a small inline script filters and searches that data and puts
    one page of cards in the DOM at a time, so 10,000 images cost 200 DOM cards, not 10,000.
    """
    loaded = _load(directory)
    doc = status(directory, loaded)
    thumbs = _thumb_folder(directory)
    names = [
        name
        for record in loaded.items.values()
        if record.get("state") == "succeeded"
        for name in record.get("files") or ()
        if _plain_name(name)
    ]
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        made = pool.map(lambda name: _thumbnail(directory / name, thumbs / f"{name}.jpg"), names)
        has_thumb = {name for name, ok in zip(names, made, strict=True) if ok}
    data = {
        "title": str(doc["manifest"] or directory.name or "batchgen"),
        "updated": doc["updated_at"],
        "run": _run_figures(last_run_figures(directory)),
        "items": _entries(loaded.items, set(doc["not_in_manifest"]), has_thumb),
        "pageSize": PAGE_SIZE,
    }
    target = directory / REPORT
    write_atomically(target, _page(data).encode("utf-8"), state_dir(directory))
    os.chmod(target, 0o644)  # a page to share: readable by others whatever the umask of the job
    return target


def _plain_name(name: object) -> bool:
    """A ledger file name the page may link to: a file in DIR itself (the ledger is data, not trusted paths)."""
    return isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def _thumb_folder(directory: Path) -> Path:
    """DIR/.batchgen/thumbs, 0755, in a .batchgen/ that others may pass through (0711) but not list, whatever the
    umask: a shared contact sheet with unreadable thumbnails shows none, while everything else in .batchgen/
    (journal, lock, partial downloads) stays 0600 and unlisted."""
    folder = state_dir(directory, "thumbs")  # refuses a symlinked .batchgen/ or thumbs/
    os.chmod(folder.parent, 0o711)
    os.chmod(folder, 0o755)
    return folder


def _thumbnail(source: Path, target: Path) -> bool:
    """Make (or reuse) a small JPEG of an image, mode 0644; False when the image cannot be read."""
    try:
        if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
            if target.stat().st_mode & 0o777 != 0o644:
                os.chmod(target, 0o644)  # made by an older batchgen, or under a stricter umask
            return True
        with Image.open(source) as image:
            image.draft("RGB", THUMB_SIZE)  # JPEG: decode at a reduced scale, far faster
            image.thumbnail(THUMB_SIZE)
            small = image.convert("RGB")
        temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.fchmod(fd, 0o644)  # the umask would narrow it
            with os.fdopen(fd, "wb") as handle:
                small.save(handle, "JPEG", quality=82)
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return True
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def _run_figures(figures: dict[str, float] | None) -> dict[str, float] | None:
    if figures is None:
        return None
    return {k: figures[k] for k in RUN_FIGURES if k in figures}


def _entries(items: dict[str, dict[str, Any]], retired: set[str], has_thumb: set[str]) -> list[dict[str, Any]]:
    """One entry per image of a succeeded item, one per item otherwise: the cards of the page, as data."""
    entries: list[dict[str, Any]] = []
    for item_id, record in items.items():
        state = record.get("state", "pending")
        request_input = (record.get("request") or {}).get("input") or {}
        base: dict[str, Any] = {
            "id": item_id,
            "state": "retired" if item_id in retired else state,
            "was": state,
            "prompt": str(request_input.get("prompt", "")),
        }
        if request_input.get("seed") is not None:
            base["seed"] = request_input["seed"]
        took = _seconds(record.get("submitted_at"), record.get("finished_at"))
        if took is not None:
            base["took"] = took
        params = [f"{request_input[k]}" for k in _PARAMS if request_input.get(k) not in (None, "")]
        if params:
            base["params"] = params
        files = [name for name in record.get("files") or () if _plain_name(name)] if state == "succeeded" else []
        reason = _reason(state, record, files)
        if reason:
            base["reason"] = reason
        if not files:
            entries.append(base)
        for n, name in enumerate(files, 1):
            entry = {**base, "file": quote(name)}
            if name in has_thumb:
                entry["thumb"] = quote(f"{THUMB_DIR}/{name}.jpg")
            if len(files) > 1:
                entry["part"] = f"{n}/{len(files)}"
            entries.append(entry)
    return entries


def _reason(state: str, record: dict[str, Any], files: list[str]) -> str:
    if state == "failed":
        error = record.get("error") or {}
        code = f" {error['code']}" if error.get("code") else ""
        attempts = int(record.get("attempts") or 0)
        tried = f" (after {attempts} attempt{'s' if attempts != 1 else ''})" if attempts else ""
        return f"{error.get('kind', 'error')}{code}: {error.get('message', '')}{tried}"
    if state == "submitted":
        return f"not finished yet (task {record['task_id']})" if record.get("task_id") else "not finished yet"
    if state == "pending":
        return "not submitted yet"
    if state == "succeeded" and not files:
        return "succeeded, but the ledger names no image file in this folder"
    return ""


def _seconds(start: object, end: object) -> float | None:
    """Generation time: from the ledger's submitted_at to its finished_at, in seconds (None if unknown)."""
    if not isinstance(start, str) or not isinstance(end, str):
        return None
    try:
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        seconds = (datetime.strptime(end, fmt) - datetime.strptime(start, fmt)).total_seconds()
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def script_json(value: object) -> str:
    """JSON to sit inside <script type="application/json">: nothing in it can end the element or the script.

    `<`, `>` and `&` become \\u escapes (a prompt holding `</script>` or `<!--` stays text), and so do U+2028 and
    U+2029 (line terminators to older JavaScript). Each can only occur inside a JSON string, where the escape
    means the same character, so JSON.parse gives back exactly the original text.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for char, escape in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escape)
    return text


def _page(data: dict[str, Any]) -> str:
    # The script's hash goes in the page's Content-Security-Policy: only this script runs, nothing is fetched
    # from anywhere but the page's own folder, even if some text were ever left unescaped.
    script_hash = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    policy = (
        f"default-src 'none'; img-src 'self' file:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'; "
        "base-uri 'none'; form-action 'none'"
    )
    total = len(data["items"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{policy}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{html.escape(data["title"])} · batchgen contact sheet</title>
<style>{_STYLE}</style></head><body>
<header class="top"><div class="wrap">
<h1>{html.escape(data["title"])}</h1>
<p class="sub" id="sub"></p>
<dl class="figures" id="figures"></dl>
</div></header>
<nav class="bar" aria-label="filter"><div class="wrap">
<div class="chips" id="chips" role="group" aria-label="state"></div>
<input id="q" type="search" placeholder="Search id or prompt" aria-label="search by id or prompt" autocomplete="off">
</div></nav>
<main class="wrap">
<p class="shown" id="shown"></p>
<noscript><p>This contact sheet needs JavaScript to show its {total} cards; results.json holds the same data.</p>
</noscript>
<div class="grid" id="grid"></div>
<nav class="pager" id="pager" aria-label="pages"></nav>
</main>
<div class="lightbox" id="lightbox" role="dialog" aria-modal="true" aria-label="image" hidden>
<button class="lb-close" id="lb-close" type="button" aria-label="close (Escape)">×</button>
<button class="lb-prev" id="lb-prev" type="button" aria-label="previous (←)">‹</button>
<figure class="lb-stage"><a id="lb-link" target="_blank" rel="noopener"><img id="lb-img" alt=""></a>
<div class="lb-none" id="lb-none"></div></figure>
<button class="lb-next" id="lb-next" type="button" aria-label="next (→)">›</button>
<aside class="lb-info" id="lb-info"></aside>
</div>
<script type="application/json" id="sheet-data">{script_json(data)}</script>
<script>{_SCRIPT}</script>
</body></html>
"""


_STYLE = """
:root{--bg:#f5f6f8;--card:#fff;--ink:#1d2129;--soft:#5d6470;--line:#e1e4ea;--box:#eceef2;--accent:#2f6fdf;
--ok:#1f8a4c;--bad:#c9352b;--wait:#b7791f;--idle:#6b7280;--gone:#7c5cc4;color-scheme:light dark}
@media (prefers-color-scheme:dark){:root{--bg:#14161a;--card:#1d2026;--ink:#e8eaee;--soft:#9aa1ad;--line:#2c3038;
--box:#262a31;--accent:#6b9cff;--ok:#3fb873;--bad:#f06a5f;--wait:#e0a43c;--idle:#9aa1ad;--gone:#a98bf0}}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);background:var(--bg)}
body.lb-open{overflow:hidden}
.wrap{max-width:1600px;margin:0 auto;padding:0 20px}
.top{background:var(--card);border-bottom:1px solid var(--line);padding:18px 0 14px}
h1{margin:0;font-size:22px;font-weight:650;overflow-wrap:anywhere}
.sub{margin:2px 0 12px;color:var(--soft)}
.figures{display:flex;flex-wrap:wrap;gap:8px;margin:0}
.figures div{background:var(--bg);border:1px solid var(--line);border-radius:8px;padding:6px 12px;min-width:96px}
.figures dt{font-size:12px;color:var(--soft)}
.figures dd{margin:0;font-size:18px;font-weight:600;font-variant-numeric:tabular-nums}
.figures dd small{font-size:12px;font-weight:400;color:var(--soft)}
.figures .exit-ok dd{color:var(--ok)} .figures .exit-warn dd{color:var(--wait)} .figures .exit-bad dd{color:var(--bad)}
.figures p{margin:6px 0 0;color:var(--soft);flex-basis:100%}
.bar{position:sticky;top:0;z-index:5;background:color-mix(in srgb,var(--bg) 88%,transparent);
backdrop-filter:blur(8px);border-bottom:1px solid var(--line)}
.bar .wrap{display:flex;flex-wrap:wrap;gap:8px 16px;align-items:center;padding-top:10px;padding-bottom:10px}
.chips{display:flex;flex-wrap:wrap;gap:6px;flex:1 1 auto}
.chips button{font:inherit;font-size:13px;border:1px solid var(--line);background:var(--card);color:var(--ink);
border-radius:999px;padding:4px 12px;cursor:pointer}
.chips button b{font-weight:600;margin-left:4px;font-variant-numeric:tabular-nums}
.chips button[aria-pressed=true]{background:var(--ink);color:var(--bg);border-color:var(--ink)}
.chips button:disabled{opacity:.45;cursor:default}
#q{font:inherit;flex:0 1 320px;min-width:0;width:100%;padding:6px 12px;border:1px solid var(--line);border-radius:8px;
background:var(--card);color:var(--ink)}
.shown{color:var(--soft);margin:14px 0 10px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:14px}
.card{margin:0;background:var(--card);border:1px solid var(--line);border-radius:10px;overflow:hidden;
display:flex;flex-direction:column}
.thumb{display:block;position:relative;aspect-ratio:1/1;background:var(--box);border:0;padding:0;width:100%;
cursor:zoom-in;color:inherit;font:inherit}
.thumb img{position:absolute;inset:0;width:100%;height:100%;object-fit:contain}
.thumb:focus-visible{outline:3px solid var(--accent);outline-offset:-3px}
.none{position:absolute;inset:0;display:flex;flex-direction:column;justify-content:center;gap:6px;padding:14px;
text-align:left;font-size:12px;color:var(--soft);overflow:hidden}
.none b{font-size:13px;text-transform:capitalize}
.s-failed .none b{color:var(--bad)} .s-submitted .none b{color:var(--wait)} .s-pending .none b{color:var(--idle)}
.s-retired .none b{color:var(--gone)}
.none span{display:-webkit-box;-webkit-line-clamp:6;-webkit-box-orient:vertical;overflow:hidden;overflow-wrap:anywhere}
figcaption{padding:8px 10px 10px;display:flex;flex-direction:column;gap:4px;min-width:0}
.head{display:flex;align-items:center;gap:6px;min-width:0}
.id{font:12px/1.3 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;overflow:hidden;text-overflow:ellipsis;
white-space:nowrap;flex:1 1 auto;min-width:0}
.badge{flex:none;font-size:11px;border-radius:999px;padding:1px 8px;color:#fff;background:var(--idle)}
.badge.s-succeeded{background:var(--ok)} .badge.s-failed{background:var(--bad)}
.badge.s-submitted{background:var(--wait)} .badge.s-retired{background:var(--gone)}
.prompt{margin:0;display:-webkit-box;-webkit-line-clamp:3;-webkit-box-orient:vertical;overflow:hidden;
overflow-wrap:anywhere;white-space:pre-wrap}
.meta{margin:0;display:flex;flex-wrap:wrap;gap:2px 10px;font-size:12px;color:var(--soft)}
.meta span b{font-weight:500;color:var(--ink)}
.pager{display:flex;justify-content:center;align-items:center;gap:12px;margin:22px 0 40px;color:var(--soft)}
.pager button,.lightbox button{font:inherit;cursor:pointer}
.pager button{border:1px solid var(--line);background:var(--card);color:var(--ink);border-radius:8px;padding:6px 14px}
.pager button:disabled{opacity:.4;cursor:default}
.lightbox{position:fixed;inset:0;z-index:20;background:#0e1014;color:#e8eaee;display:grid;
grid-template-columns:64px minmax(0,1fr) 64px minmax(260px,360px);align-items:center}
.lightbox[hidden]{display:none}
.lb-stage{margin:0;height:100vh;display:flex;align-items:center;justify-content:center;padding:24px 0;min-width:0}
.lb-stage a{display:contents}
.lb-stage img{width:100%;height:100%;object-fit:contain}
.lb-none{max-width:480px;padding:24px;border:1px dashed #555;border-radius:10px;color:#c7cbd3;overflow-wrap:anywhere}
.lb-prev,.lb-next{justify-self:center;width:48px;height:48px;border-radius:50%;border:0;background:rgba(255,255,255,.1);
color:#fff;font-size:28px;line-height:1}
.lb-prev:hover:not(:disabled),.lb-next:hover:not(:disabled){background:rgba(255,255,255,.22)}
.lb-prev:disabled,.lb-next:disabled{opacity:.25;cursor:default}
.lb-close{position:absolute;top:10px;right:12px;z-index:1;width:40px;height:40px;border-radius:50%;border:0;
background:rgba(255,255,255,.1);color:#fff;font-size:24px;line-height:1}
.lb-info{align-self:stretch;overflow:auto;background:#191c22;padding:60px 20px 20px;border-left:1px solid #2a2e36}
.lb-info h2{font:600 14px/1.3 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;margin:0 0 6px;
overflow-wrap:anywhere}
.lb-info .prompt{display:block;margin:12px 0;font-size:15px;-webkit-line-clamp:none}
.lb-info dl{display:grid;grid-template-columns:auto 1fr;gap:4px 12px;margin:0;font-size:13px}
.lb-info dt{color:#9aa1ad} .lb-info dd{margin:0;overflow-wrap:anywhere}
.lb-info a{color:#8fb3ff}
.lb-count{color:#9aa1ad;font-size:12px}
@media (max-width:760px){
.wrap{padding:0 12px} h1{font-size:19px}
.figures{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:6px}
.figures div{min-width:0;padding:4px 10px} .figures dd{font-size:16px}
.figures .wide{grid-column:1/-1}
.grid{grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}
#q{flex-basis:100%} .bar{position:static}
.lightbox{grid-template-columns:1fr;grid-template-rows:62vh auto;overflow:auto;align-items:start}
.lb-stage{height:62vh;padding:12px;grid-row:1;grid-column:1}
.lb-prev,.lb-next{position:absolute;top:31vh;transform:translateY(-50%);z-index:1;background:rgba(0,0,0,.6)}
.lb-prev{left:8px} .lb-next{right:8px}
.lb-info{grid-row:2;grid-column:1;padding:16px;border-left:0}
}
"""

_SCRIPT = r"""
"use strict";
(() => {
  const data = JSON.parse(document.getElementById("sheet-data").textContent);
  const PAGE = data.pageSize;
  const STATES = ["all", "succeeded", "failed", "submitted", "pending", "retired"];
  const LABEL = {all: "All", succeeded: "Succeeded", failed: "Failed", submitted: "Submitted", pending: "Pending",
    retired: "No longer in manifest"};
  const EXIT = {0: "every item succeeded", 1: "some items failed", 2: "manifest or settings error",
    3: "key or quota refused", 4: "another run held the lock", 5: "incomplete: rerun to continue"};
  const $ = (id) => document.getElementById(id);
  const make = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  };
  const num = (n) => Number(n).toLocaleString("en-US");
  const plural = (n, one, many) => num(n) + " " + (n === 1 ? one : many);
  const took = (s) =>  // the ledger's times are whole seconds; a run's wall time is not
    s < 120 ? (Number.isInteger(s) ? s : s.toFixed(1)) + " s"
    : s < 7200 ? (s / 60).toFixed(1) + " min" : (s / 3600).toFixed(1) + " h";
  const items = data.items;
  for (const item of items) item.hay = (item.id + "\n" + item.prompt).toLowerCase();

  let filter = "all", query = "", page = 0, shown = items, current = -1, opener = null;

  // ---- header: the night at a glance
  const ids = new Set(items.map((item) => item.id));
  const images = items.filter((item) => item.file).length;
  $("sub").textContent = plural(ids.size, "item", "items") + " · " + plural(images, "image", "images") +
    (data.updated ? " · ledger updated " + data.updated.replace("T", " ").replace("Z", " UTC") : "");
  const figures = $("figures");
  const figure = (label, value, note, cls) => {
    const box = make("div", cls);
    box.append(make("dt", "", label));
    const dd = make("dd", "", value);
    if (note) dd.append(" ", make("small", "", note));
    box.append(dd);
    figures.append(box);
  };
  const run = data.run;
  if (run) {
    if ("exit_code" in run) {
      const code = run.exit_code;
      const meaning = EXIT[code] || (code > 128 ? "stopped by signal " + (code - 128) : "");
      const tone = code === 0 ? "exit-ok" : code === 1 || code === 5 ? "exit-warn" : "exit-bad";
      figure("Exit code", code, meaning, tone + " wide");
    }
    if ("paid_creates" in run) figure("Paid creates", num(run.paid_creates));
    if ("retries" in run) figure("Retries", num(run.retries));
    if ("rate_limited" in run) figure("429s", num(run.rate_limited));
    if (run.in_doubt) figure("In doubt", num(run.in_doubt), "maybe paid twice", "exit-warn");
    if ("seconds" in run) figure("Wall time", took(run.seconds));
    if ("finished_timestamp" in run) {
      const when = new Date(run.finished_timestamp * 1000).toISOString().slice(0, 16).replace("T", " ");
      figure("Finished", when, "UTC", "wide");
    }
  } else {
    const note = make("p", "", "No figures of the last run are recorded here (a run writes them at its end): " +
      "the counts below come from the ledger alone.");
    note.id = "no-run";
    figures.append(note);
  }

  // ---- filter and search: applied to the data, never to thousands of DOM nodes
  const chips = $("chips");
  const buttons = {};
  for (const state of STATES) {
    const button = make("button", "", LABEL[state]);
    button.type = "button";
    button.dataset.state = state;
    button.append(make("b"));
    button.addEventListener("click", () => { filter = state; page = 0; apply(); });
    chips.append(button);
    buttons[state] = button;
  }
  function apply() {
    const matching = query ? items.filter((item) => item.hay.includes(query)) : items;
    const per = {};
    for (const state of STATES) per[state] = new Set();
    for (const item of matching) { per.all.add(item.id); per[item.state].add(item.id); }
    for (const state of STATES) {
      const button = buttons[state];
      button.lastChild.textContent = num(per[state].size);
      button.setAttribute("aria-pressed", String(state === filter));
      button.hidden = state === "retired" && !items.some((item) => item.state === "retired");
    }
    shown = filter === "all" ? matching : matching.filter((item) => item.state === filter);
    render();
  }
  $("q").addEventListener("input", (event) => { query = event.target.value.trim().toLowerCase(); page = 0; apply(); });

  // ---- one page of cards
  function card(item, index) {
    const box = make("figure", "card s-" + item.state);
    box.dataset.index = String(index);
    box.dataset.id = item.id;
    const thumb = make(item.file ? "a" : "button", "thumb");
    if (item.file) thumb.href = item.file; else thumb.type = "button";
    thumb.setAttribute("aria-label", "open " + item.id);
    if (item.thumb) {
      const img = make("img");
      img.loading = "lazy";
      img.decoding = "async";
      img.src = item.thumb;
      img.alt = item.prompt;
      thumb.append(img);
    } else {
      const none = make("span", "none");
      none.append(make("b", "", item.file ? "no preview" : LABEL[item.state]));
      if (item.reason) none.append(make("span", "", item.reason));
      thumb.append(none);
    }
    thumb.addEventListener("click", (event) => {
      if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
      event.preventDefault();
      opener = thumb;
      show(index);
    });
    const caption = make("figcaption");
    const head = make("div", "head");
    head.append(make("span", "id", item.id + (item.part ? " · " + item.part : "")));
    head.append(make("span", "badge s-" + item.state, item.state === "retired" ? "retired" : item.state));
    head.firstChild.title = item.id;
    caption.append(head);
    const prompt = make("p", "prompt", item.prompt);
    prompt.title = item.prompt;
    caption.append(prompt);
    caption.append(meta(item, "p", "span"));
    box.append(thumb, caption);
    return box;
  }
  function meta(item, tag, part) {
    const line = make(tag, "meta");
    const add = (label, value) => {
      const bit = make(part);
      bit.append(label + " ", make("b", "", value));
      line.append(bit);
    };
    if (item.seed !== undefined) add("seed", item.seed);
    if (item.took !== undefined) add(item.was === "succeeded" ? "generated in" : "took", took(item.took));
    if (item.params) line.append(make(part, "", item.params.join(" · ")));
    return line;
  }
  function render() {
    const pages = Math.max(1, Math.ceil(shown.length / PAGE));
    page = Math.min(Math.max(page, 0), pages - 1);
    const start = page * PAGE;
    const slice = shown.slice(start, start + PAGE);
    const cards = document.createDocumentFragment();
    slice.forEach((item, k) => cards.append(card(item, start + k)));
    $("grid").replaceChildren(cards);
    $("shown").textContent = shown.length
      ? (pages > 1 ? "Showing " + num(start + 1) + "–" + num(start + slice.length) + " of " : "Showing ") +
        plural(shown.length, "card", "cards") + (filter === "all" ? "" : " · " + LABEL[filter].toLowerCase()) +
        (query ? " · matching “" + query + "”" : "")
      : "Nothing matches" + (query ? " “" + query + "”" : "") + ".";
    const pager = $("pager");
    pager.replaceChildren();
    if (pages > 1) {
      const step = (label, to, name) => {
        const button = make("button", "", label);
        button.type = "button";
        button.dataset.go = name;
        button.disabled = to < 0 || to >= pages;
        button.addEventListener("click", () => { page = to; render(); $("shown").scrollIntoView(); });
        return button;
      };
      pager.append(step("‹ Previous", page - 1, "prev"), make("span", "", "Page " + (page + 1) + " of " + pages),
        step("Next ›", page + 1, "next"));
    }
  }

  // ---- the lightbox: the full image, previous/next over what the filter shows, Escape closes
  const box = $("lightbox"), img = $("lb-img"), link = $("lb-link"), none = $("lb-none"), info = $("lb-info");
  function show(index) {
    if (index < 0 || index >= shown.length) return;
    current = index;
    const item = shown[index];
    if (Math.floor(index / PAGE) !== page) { page = Math.floor(index / PAGE); render(); }
    box.hidden = false;
    document.body.classList.add("lb-open");
    if (item.file) {
      img.hidden = false;
      img.src = item.file;
      img.alt = item.prompt;
      link.href = item.file;
      none.hidden = true;
    } else {
      img.hidden = true;
      img.removeAttribute("src");
      link.removeAttribute("href");
      none.hidden = false;
      none.textContent = LABEL[item.state] + (item.reason ? ": " + item.reason : "");
    }
    info.replaceChildren();
    info.append(make("div", "lb-count", num(index + 1) + " / " + num(shown.length)));
    info.append(make("h2", "", item.id + (item.part ? " · image " + item.part : "")));
    info.append(make("span", "badge s-" + item.state, LABEL[item.state]));
    info.append(make("p", "prompt", item.prompt));
    const facts = make("dl");
    const fact = (label, value) => { facts.append(make("dt", "", label), make("dd", "", value)); };
    if (item.seed !== undefined) fact("Seed", item.seed);
    if (item.took !== undefined) fact(item.was === "succeeded" ? "Generation time" : "Time taken", took(item.took));
    if (item.params) fact("Parameters", item.params.join(" · "));
    if (item.state === "retired") fact("Ledger state", item.was);
    if (item.reason) fact("Reason", item.reason);
    if (item.file) {
      const size = make("dd", "", "");
      size.id = "lb-size";
      facts.append(make("dt", "", "Size"), size);
      const open = make("a", "", decodeURIComponent(item.file));
      open.href = item.file;
      open.target = "_blank";
      open.rel = "noopener";
      const dd = make("dd");
      dd.append(open);
      facts.append(make("dt", "", "File"), dd);
    }
    info.append(facts);
    $("lb-prev").disabled = index === 0;
    $("lb-next").disabled = index === shown.length - 1;
    if (!box.contains(document.activeElement)) $("lb-close").focus();
  }
  img.addEventListener("load", () => {
    const size = $("lb-size");
    if (size) size.textContent = img.naturalWidth + " × " + img.naturalHeight;
  });
  function close() {
    if (box.hidden) return;
    box.hidden = true;
    document.body.classList.remove("lb-open");
    img.removeAttribute("src");
    const back = document.querySelector('.card[data-index="' + current + '"] .thumb') || opener;
    current = -1;
    if (back) back.focus();
  }
  $("lb-prev").addEventListener("click", () => show(current - 1));
  $("lb-next").addEventListener("click", () => show(current + 1));
  $("lb-close").addEventListener("click", close);
  box.addEventListener("click", (event) => {
    if (event.target === box || event.target.classList.contains("lb-stage")) close();
  });
  document.addEventListener("keydown", (event) => {
    if (!box.hidden) {
      if (event.key === "Escape") close();
      else if (event.key === "ArrowLeft") show(current - 1);
      else if (event.key === "ArrowRight") show(current + 1);
      else return;
      event.preventDefault();
    } else if (event.key === "/" && document.activeElement !== $("q")) {
      event.preventDefault();
      $("q").focus();
    }
  });

  apply();
})();
"""


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
    "batchgen_last_run_seconds": "Wall time of the last run, in seconds.",
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
    path: Path, *, manifest: str | None, counts: dict[str, int] | None, figures: dict[str, float | int]
) -> None:
    """A Prometheus textfile-collector file, replaced atomically (node_exporter must never read half a file).

    `figures` holds at least `exit_code` and `finished_timestamp`; a run that stopped early (exit 2, 4, 70)
    knows no more, and `counts` is None. The last-success timestamp is this run's end when it finished its
    work (exit 0 or 1), else the one in the previous file, so that a night that keeps failing shows as stale.
    `manifest` None keeps the previous file's label (the flags could not be read).
    """
    previous = _read_previous(path)
    if manifest is None:
        manifest = previous.get("manifest", "")
    label = manifest.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    samples: list[tuple[str, str, float | int]] = []
    if counts is not None:
        samples += [("batchgen_items", f'manifest="{label}",state="{state}"', counts.get(state, 0)) for state in STATES]
    samples += [(f"batchgen_last_run_{name}", f'manifest="{label}"', value) for name, value in figures.items()]
    success = figures["finished_timestamp"] if figures["exit_code"] in (0, 1) else previous.get(SUCCESS)
    if success is not None:
        samples.append((SUCCESS, f'manifest="{label}"', success))
    lines: list[str] = []
    for name in dict.fromkeys(name for name, _, _ in samples):
        lines += [f"# HELP {name} {METRIC_HELP.get(name, name)}", f"# TYPE {name} gauge"]
        lines += [f"{name}{{{labels}}} {exact(value)}" for n, labels, value in samples if n == name]
    data = ("\n".join(lines) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data, path.parent, mode=METRICS_MODE)


def exact(value: float | int) -> str:
    """A sample value written exactly: integers as integers, others with every digit they have (never %g,
    which turns a Unix timestamp into 1.7957e+09, minutes off)."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return str(int(value))
    return repr(float(value))


def _read_previous(path: Path) -> dict[str, Any]:
    """From the previous metrics file: the last-success timestamp and the manifest label, when there are."""
    found: dict[str, Any] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return found
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name == SUCCESS and "} " in rest:
            labels, _, value = rest.rpartition("} ")
            try:
                found[SUCCESS] = float(value.strip())
            except ValueError:
                continue
            if labels.startswith('manifest="') and labels.endswith('"'):
                raw = labels[len('manifest="') : -1]
                found["manifest"] = re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], raw)
    return found
