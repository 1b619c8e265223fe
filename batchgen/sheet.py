"""The contact sheet: DIR/index.html, where a person reviews a night.

Static and offline (file:// with no network): the items travel as one inline JSON block (escaped so that no text
can leave it), and a small script renders them a page of cards at a time, with filter, search and a lightbox; its
style and script live beside this module in data/sheet/. Thumbnails are made once into DIR/.batchgen/thumbs/.
The last run's figures, for the page's header, are kept in DIR/.batchgen/last-run.json by the run.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import json
import math
import os
import stat
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from . import decisions, models, provenance, records
from .files import STATE_DIR, clear_stale, read_bounded, state_dir, write_atomically
from .ledger import Loaded, Record
from .names import inside
from .report import read_ledger, status


@cache
def _asset(name: str) -> str:
    """The page's own style and script (data/sheet/), read once."""
    return resources.files("batchgen").joinpath("data", "sheet", name).read_text(encoding="utf-8")


SIDECAR_BYTES = 1024 * 1024  # a sidecar holds one request: a few KB (a 20,000-character prompt at most)
IMAGE_BYTES = 512 * 1024 * 1024  # more than any image the service sends (--max-image-bytes defaults far lower)
THUMB_NAME_MAX = 200  # bytes: a thumbnail's name, leaving room for `.<name>.<pid>.tmp` under 255
THUMB_DIR = f"{STATE_DIR}/thumbs"  # readable by others: see _thumb_folder
THUMB_SIZE = (320, 320)
REPORT = "index.html"
LAST_RUN_LIMIT = 64 * 1024  # bytes: the figures are a few hundred; a larger file is not the one a run wrote
LAST_RUN = "last-run.json"  # under DIR/.batchgen/: the last run's figures, for the page's header
PAGE_SIZE = 200  # cards in the DOM at once: a 10,000-image night stays one light page
# Shown on the page: what a person reading a night needs. Everything else in `figures` is kept but not shown.
RUN_FIGURES = ("paid_creates", "retries", "rate_limited", "in_doubt", "seconds", "exit_code", "finished_timestamp")
# What the image's parameters are called on a card, in the order shown (the seed and the time get their own label).
_PARAMS = ("aspect_ratio", "output_format", "person_generation", "safety_settings", "language")


@lru_cache(maxsize=64)  # a ledger names a few models (a hostile one many: bounded)
def _params_of(model: object) -> tuple[str, ...]:
    """The fields a card shows for a model: imagen4-ultra's few, else every choice, number or text its card has
    but the prompt and the seed (shown apart); references (long URLs, sha256) are left to the sidecar."""
    card = models.builtin().get(model) if isinstance(model, str) else None
    if card is None or card.name == models.DEFAULT_MODEL:
        return _PARAMS
    return tuple(n for n, f in card.fields.items() if n not in ("prompt", "seed") and f.kind in ("enum", "int", "text"))


def write_last_run(directory: Path, figures: Mapping[str, float]) -> Path:
    """Keep the run's figures in DIR/.batchgen/last-run.json for the contact sheet; replaced atomically.

    `runner.final_report` calls it once at the end with `runner.figures(outcome)` (paid creates, retries, 429s,
    wall time, exit code, ...): the ledger holds items, not runs, so this file is where the page finds them.
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
    # Read like every state file (bounded, no link, never waiting on a FIFO planted there), and finite numbers
    # only: a NaN or Infinity in the page's data is not JSON, and JSON.parse would refuse the whole contact sheet.
    data = read_bounded(directory / STATE_DIR / LAST_RUN, LAST_RUN_LIMIT, "the last run's figures", follow=False)
    try:
        doc = json.loads(data) if isinstance(data, bytes) else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    numbers = {
        k: v for k, v in doc.items() if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    return numbers or None


def write_report(directory: Path) -> Path:
    """Write DIR/index.html: a static contact sheet that works from file:// with no server and no network.

    The items travel as one inline JSON block; a small inline script filters and searches that data and puts
    one page of cards in the DOM at a time, so 10,000 images cost 200 DOM cards, not 10,000.
    """
    target = directory / REPORT
    write_atomically(target, page(page_data(directory)).encode("utf-8"), state_dir(directory))
    os.chmod(target, 0o644)  # a page to share: readable by others whatever the umask of the job
    return target


def page_data(directory: Path, *, make_thumbs: bool = True) -> dict[str, Any]:
    """The page's data: the night's figures and one entry per card. Without `make_thumbs` (the review server,
    which writes nothing but decisions) only thumbnails made earlier are used."""
    loaded = read_ledger(directory)
    doc = status(directory, loaded)
    if not make_thumbs:
        thumbs = directory / THUMB_DIR
        return _data(directory, loaded, doc, {n for n in _credited(loaded) if (thumbs / _thumb_name(n)).is_file()})
    thumbs = _thumb_folder(directory)
    clear_stale(thumbs, ".*.tmp")  # a report killed by SIGKILL left its thumbnail being written
    names = _credited(loaded)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        made = pool.map(lambda name: _thumbnail(directory / name, thumbs / _thumb_name(name)), names)
        has_thumb = {name for name, ok in zip(names, made, strict=True) if ok}
    return _data(directory, loaded, doc, has_thumb)


def _data(directory: Path, loaded: Loaded, doc: dict[str, Any], has_thumb: set[str]) -> dict[str, Any]:
    return {
        "title": str(doc["manifest"] or directory.name or "batchgen"),
        "updated": doc["updated_at"],
        "run": _run_figures(last_run_figures(directory)),
        "items": _entries(loaded.items, set(doc["not_in_manifest"]), has_thumb, directory),
        "pageSize": PAGE_SIZE,
    }


def _credited(loaded: Loaded) -> list[str]:
    """The image files the ledger credits to a succeeded item: the only files the page links to."""
    return [
        name
        for record in loaded.items.values()
        if record["state"] == "succeeded"
        for name in record["files"]
        if _plain_name(name)
    ]


def _plain_name(name: object) -> bool:
    """A ledger file name the page may link to: a path inside DIR (`--name` makes subfolders), never `..`, an
    absolute path or a hidden one (the ledger is data, not trusted paths)."""
    return isinstance(name, str) and inside(name)


def _from_sidecar(entry: dict[str, Any], directory: Path, name: str) -> None:
    """The parameters of an image as its sidecar (--metadata) records them, when it has a readable one."""
    if not _regular(directory / f"{name}.json", SIDECAR_BYTES):
        return  # a FIFO or a link to /dev/zero there would hang the report or fill the memory (ATTACKS 3)
    doc = provenance.sidecar_of(directory, name)
    if doc is None:
        return
    entry["sidecar"] = quote(f"{name}.json")
    request = doc.get("request")
    request_input = request.get("input") if isinstance(request, dict) else None
    if not isinstance(request_input, dict):
        request_input = {}
    names = _params_of(request.get("model") if isinstance(request, dict) else None)
    params = [str(request_input[k]) for k in names if request_input.get(k) not in (None, "")]
    params += [f"{k} {doc[k]}" for k in ("model", "task_id") if isinstance(doc.get(k), str)]
    if isinstance(doc.get("manifest"), str) and isinstance(doc.get("line"), int):
        params.append(f"{doc['manifest']}:{doc['line']}")
    entry["params"] = params


def _thumb_name(name: str) -> str:
    """A thumbnail's file name: one flat folder of them, a subfolder's `/` quoted (`zoo%2Ffox.png.jpg`); a name
    too long for one path component (quoted, with `.jpg` and its temp suffix) becomes its head and a hash."""
    flat = f"{quote(name, safe='')}.jpg" if "/" in name else f"{name}.jpg"
    if len(flat.encode()) <= THUMB_NAME_MAX:
        return flat
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"{flat.encode()[:100].decode('utf-8', 'ignore')}~{digest}.jpg"


plain_name, thumb_name = _plain_name, _thumb_name  # for the review server, which serves what the page links


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
    if not _regular(source, IMAGE_BYTES):
        return False  # a FIFO at an image's name would block Image.open for ever
    from PIL import Image  # Pillow when an image is first read: a run without a contact sheet never loads it (2.6 MB)

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


def _regular(path: Path, limit: int) -> bool:
    """Whether `path` is a regular file (not a link, FIFO or device) of at most `limit` bytes."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size <= limit


def _run_figures(figures: dict[str, float] | None) -> dict[str, float] | None:
    if figures is None:
        return None
    return {k: figures[k] for k in RUN_FIGURES if k in figures}


def _entries(
    items: Mapping[str, Record], retired: set[str], has_thumb: set[str], directory: Path | None = None
) -> list[dict[str, Any]]:
    """One entry per image of a succeeded item, one per item otherwise: the cards of the page, as data. An
    image with a --metadata sidecar shows the parameters the sidecar holds, and links to it."""
    entries: list[dict[str, Any]] = []
    held = decisions.current(directory, items) if directory is not None else {}
    for item_id, record in items.items():
        state = record["state"]
        request_input = records.request_input(record)
        base: dict[str, Any] = {
            "id": item_id,
            "state": "retired" if item_id in retired else state,
            "was": state,
            "prompt": str(request_input.get("prompt", "")),
        }
        model = records.model(record)
        if model is not None:
            base["model"] = model
        if item_id in held:
            base["decision"] = held[item_id].decision
        if rolls := records.rolls(record):  # re-rolled (rolls.py): which roll this image is
            base["roll"] = sum("error" not in r for r in rolls if isinstance(r, dict))
        if request_input.get("seed") is not None:
            base["seed"] = request_input["seed"]
        took = _seconds(record["submitted_at"], record["finished_at"])
        if took is not None:
            base["took"] = took
        names = _params_of(records.model(record))
        params = [f"{request_input[k]}" for k in names if request_input.get(k) not in (None, "")]
        if params:
            base["params"] = params
        files = [name for name in record["files"] if _plain_name(name)] if state == "succeeded" else []
        reason = _reason(state, record, files)
        if reason:
            base["reason"] = reason
        if not files:
            entries.append(base)
        for n, name in enumerate(files, 1):
            entry = {**base, "file": quote(name)}
            if name in has_thumb:
                entry["thumb"] = quote(f"{THUMB_DIR}/{_thumb_name(name)}")
            if len(files) > 1:
                entry["part"] = f"{n}/{len(files)}"
            if directory is not None:
                _from_sidecar(entry, directory, name)
            entries.append(entry)
    return entries


def _reason(state: str, record: Record, files: list[str]) -> str:
    if state == "failed":
        error = record["error"]
        attempts = record["attempts"]
        tried = f" (after {attempts} attempt{'s' if attempts != 1 else ''})" if attempts else ""
        if error is None:
            return f"error: {tried}"
        code = f" {records.error_code(error)}" if records.error_code(error) else ""
        return f"{error['kind']}{code}: {error['message']}{tried}"
    if state == "submitted":
        return f"not finished yet (task {record['task_id']})" if record["task_id"] else "not finished yet"
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


def page(data: dict[str, Any]) -> str:
    """The contact sheet's HTML around `data`; with `data["review"]` (the review server), its script may also
    talk back to the page's own origin, to keep decisions."""
    # The script's hash goes in the page's Content-Security-Policy: only this script runs, nothing is fetched
    # from anywhere but the page's own folder, even if some text were ever left unescaped.
    script_hash = base64.b64encode(hashlib.sha256(_asset("sheet.js").encode()).digest()).decode()
    policy = (
        f"default-src 'none'; img-src 'self' file:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'; "
        "base-uri 'none'; form-action 'none'" + ("; connect-src 'self'" if data.get("review") else "")
    )
    total = len(data["items"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{policy}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{html.escape(data["title"])} · batchgen contact sheet</title>
<style>{_asset("sheet.css")}</style></head><body>
<header class="top"><div class="wrap">
<h1 dir="auto">{html.escape(data["title"])}</h1>
<p class="sub" id="sub"></p>
<dl class="figures" id="figures"></dl>
</div></header>
<nav class="bar" aria-label="filter"><div class="wrap">
<div class="chips" id="chips" role="group" aria-label="state"></div>
<select id="model" aria-label="model" hidden></select>
<div class="chips" id="verdicts" role="group" aria-label="decision" hidden></div>
<input id="q" type="search" placeholder="Search id or prompt" aria-label="search by id or prompt" autocomplete="off">
</div></nav>
<main class="wrap">
<p class="shown" id="shown"></p>
<p class="saved" id="saved" role="status" aria-live="polite"></p>
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
<script>{_asset("sheet.js")}</script>
</body></html>
"""
