"""`batchgen review DIR`: the contact sheet served on loopback, with approve / reject controls (SPEC §3).

The page is sheet.py's, with its data marked for review; each decision goes to decisions.py, which appends and
fsyncs it before the 200 leaves, so a kill of this process (SIGTERM, SIGKILL) never loses a decision the page
showed as kept. Nothing else is written: not the ledger, not index.html, not a thumbnail.

Who may talk to it, checked on every request before anything else:
- the Host header must name this server (a DNS-rebinding page's host is refused);
- the per-session token (secrets.token_urlsafe, printed in the URL) must come with every request: in the query
  string for what a browser fetches by itself (the page, its images), in the `X-Batchgen-Token` header for a
  decision (a POST of JSON: another origin cannot send that header or that type without a preflight, which is
  refused);
- a decision from another origin (`Origin`, `Sec-Fetch-Site`) is refused, even with the token;
- only files the ledger credits to an item (its images, their sidecars and thumbnails) are served, opened
  without following a symlink and resolved inside DIR.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from . import decisions, sheet
from .config import is_loopback
from .errors import BatchgenError, UsageError
from .files import STATE_DIR, read_file
from .ledger import Loaded
from .records import JOURNAL, RESULTS
from .report import read_ledger

TOKEN_HEADER = "X-Batchgen-Token"
MAX_BODY = 4096  # a decision is ~100 bytes of JSON
MAX_FILE = 256 * 1024 * 1024  # an image the service sent is at most tens of MB; a sanity bound only
_FILE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class Review:
    """One review session: DIR, its token, the Host values that name this server, and the ledger as last read."""

    directory: Path
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    hosts: frozenset[str] = frozenset()
    _loaded: Loaded | None = None
    _stamp: tuple[int, ...] = ()
    _credited: frozenset[str] = frozenset()

    def ledger(self) -> Loaded:
        """DIR's ledger, read again only when results.json or its journal changed (a run may be going on)."""
        stamp: list[int] = []
        for path in (self.directory / RESULTS, self.directory / STATE_DIR / JOURNAL):
            try:
                info = path.stat()
                stamp += [info.st_ino, info.st_size, info.st_mtime_ns]
            except OSError:
                stamp += [0, 0, 0]
        if self._loaded is None or tuple(stamp) != self._stamp:
            self._loaded, self._stamp = read_ledger(self.directory), tuple(stamp)
            self._credited = _credited(self._loaded)
        return self._loaded

    def credited(self, name: str) -> bool:
        """Whether `name` (a path inside DIR) is a file the ledger credits: an image of a succeeded item, its
        sidecar, or its thumbnail."""
        self.ledger()
        return name in self._credited


def _credited(loaded: Loaded) -> frozenset[str]:
    names: set[str] = set()
    for record in loaded.items.values():
        if record["state"] == "succeeded":
            for image in record["files"]:
                if sheet.plain_name(image):
                    names |= {image, f"{image}.json", f"{sheet.THUMB_DIR}/{sheet.thumb_name(image)}"}
    return frozenset(names)


def make_app(review: Review) -> web.Application:
    app = web.Application(middlewares=[_guard(review)], client_max_size=MAX_BODY)
    app.router.add_get("/", _page(review))
    app.router.add_post("/decide", _decide(review))
    app.router.add_get("/{name:.+}", _file(review))
    return app


def _refuse(status: int, why: str) -> web.Response:
    return web.Response(status=status, text=why + "\n", headers=_HEADERS)


_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def _guard(review: Review) -> Any:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host", "")
        if host.lower() not in review.hosts:
            return _refuse(421, "this review server answers only to its own address (Host header refused)")
        if request.path == "/favicon.ico" and request.method == "GET":
            return web.Response(status=204, headers=_HEADERS)  # the browser asks by itself, without the token
        if request.method == "POST":
            sent = request.headers.get(TOKEN_HEADER, "")
            origin = request.headers.get("Origin")
            if origin is not None and origin.lower() != f"http://{host.lower()}":
                return _refuse(403, "a decision from another origin is refused")
            if request.headers.get("Sec-Fetch-Site", "same-origin") != "same-origin":
                return _refuse(403, "a decision from another site is refused")
            if request.content_type != "application/json":
                return _refuse(415, "a decision is sent as application/json")
        elif request.method in ("GET", "HEAD"):
            sent = request.query.get("token", "")
        else:
            return _refuse(405, "only GET and POST /decide")
        if not secrets.compare_digest(sent.encode(), review.token.encode()):
            return _refuse(403, "missing or wrong token: open the URL `batchgen review` printed")
        try:
            response = await handler(request)
        except BatchgenError as exc:  # the ledger became unreadable meanwhile: say so, never a traceback
            return _refuse(503, str(exc))
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    return guard


def _page(review: Review) -> Handler:
    async def page(request: web.Request) -> web.StreamResponse:
        data = await asyncio.to_thread(sheet.page_data, review.directory, make_thumbs=False)
        suffix = "?token=" + quote(review.token, safe="")
        for entry in data["items"]:
            if "file" in entry:
                entry.setdefault("thumb", entry["file"])  # no thumbnail made yet: the image itself, scaled
                for key in ("file", "thumb", "sidecar"):
                    if key in entry:
                        entry[key] += suffix
        data["review"] = {"token": review.token, "endpoint": "decide"}
        body = sheet.page(data)
        return web.Response(
            text=body,
            content_type="text/html",
            headers={"Content-Security-Policy": "frame-ancestors 'none'"},
        )

    return page


def _decide(review: Review) -> Handler:
    async def decide(request: web.Request) -> web.StreamResponse:
        try:
            doc = json.loads(await request.read())
        except (ValueError, RecursionError, web.HTTPRequestEntityTooLarge):
            return _refuse(400, "the body is not a JSON decision")
        if not isinstance(doc, dict) or doc.get("decision") not in decisions.CHOICES:
            return _refuse(400, "expected {id, decision: approved|rejected}")
        item = doc.get("id")
        record = review.ledger().items.get(item) if isinstance(item, str) else None
        if not isinstance(item, str) or record is None or record["state"] != "succeeded":
            return _refuse(404, "no succeeded item with this id in the ledger")
        try:
            entry = await asyncio.to_thread(
                decisions.append, review.directory, item, doc["decision"], record["task_id"]
            )
        except (OSError, UsageError) as exc:
            return _refuse(507, f"not kept: {getattr(exc, 'strerror', None) or exc}")
        # Only now, with the line fsync'd, does the page show the decision as made.
        return web.json_response({"id": entry.item, "decision": entry.decision, "at": entry.at})

    return decide


def _file(review: Review) -> Handler:
    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if not (sheet.plain_name(name) or name.startswith(f"{sheet.THUMB_DIR}/")) or not review.credited(name):
            return _refuse(404, "not a file of this night")
        # Images and sidecars only, by their name: a ledger (data, perhaps planted) crediting `x.html` or `x.svg`
        # must not put a page with scripts on this origin, where it could read the token and decide.
        kind = "application/json" if name.endswith(".json") else _FILE_TYPES.get(os.path.splitext(name)[1].lower())
        if kind is None:
            return _refuse(404, "not an image or a sidecar of this night")
        try:
            data = await asyncio.to_thread(_read_inside, review.directory, name)
        except OSError:
            return _refuse(404, "not a readable regular file inside DIR")
        return web.Response(
            body=data, content_type=kind, headers={"Content-Security-Policy": "default-src 'none'; sandbox"}
        )

    return serve


def _read_inside(directory: Path, name: str) -> bytes:
    """The bytes of DIR/name: a regular file, not a symlink, whose real folder is inside DIR (before the open, and
    on the descriptor read: a folder swapped for a link meanwhile serves nothing outside); bounded."""
    path = directory / name
    root = os.path.realpath(directory)
    if os.path.commonpath([root, os.path.realpath(path.parent)]) != root:
        raise OSError("outside DIR")
    data, _ = read_file(path, MAX_FILE, follow=False, within=directory)  # OSError: not regular, too big, outside
    return data


def host_names(host: str, port: int) -> frozenset[str]:
    """The Host header values that name this server: its address, and `localhost` for a loopback one."""
    shown = f"[{host}]" if ":" in host else host
    names = {f"{shown}:{port}".lower()}
    if is_loopback(host):
        names |= {f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"}
    return frozenset(names)


def check_listen(host: str, allow_remote: bool) -> str | None:
    """None for a loopback address; the warning to print when --allow-remote lets another one through;
    UsageError without it."""
    if is_loopback(host):
        return None
    if not allow_remote:
        raise UsageError(
            f"--listen {host}: not a loopback address; anyone who can reach it and learns the URL can decide. "
            "Add --allow-remote to serve it there anyway"
        )
    return (
        f"serving review on {host}, reachable from other machines: the token in the URL is the only guard, "
        "and the traffic is plain http"
    )


async def serve(review: Review, host: str, port: int, announce: Callable[[str], None]) -> int:
    """Serve until SIGINT or SIGTERM; returns 0. Decisions are already on disk: stopping loses none."""
    runner = web.AppRunner(make_app(review), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise UsageError(f"--listen {host}:{port}: cannot listen there: {exc.strerror or exc}") from exc
        bound = runner.addresses[0][1]
        review.hosts = host_names(host, bound)
        shown = f"[{host}]" if ":" in host else host
        announce(f"http://{shown}:{bound}/?token={review.token}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(signum)
    finally:
        await runner.cleanup()
    return 0
