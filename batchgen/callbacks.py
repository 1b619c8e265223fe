"""The optional callback receiver (`--callback-listen HOST:PORT`): a hint that a task may be finished.

The service POSTs the terminal recordInfo body to callBackUrl. batchgen gives every run a random token and
puts it last in the callback URL's path; a POST whose path does not end with it is refused and forgotten. A
valid one only wakes that task's poller, which then asks recordInfo at once: the ledger changes only from
recordInfo, never from a callback, and polling goes on as the fallback for callbacks that never come.
"""

from __future__ import annotations

import hmac
import json
import secrets
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

MAX_BODY = 1024 * 1024


class CallbackReceiver:
    """Listens while started: `await receiver.start()` ... `await receiver.close()`, or `async with`."""

    def __init__(self, host: str, port: int, on_task: Callable[[str], None] | None = None) -> None:
        self.host = host
        self.port = port
        self.token = secrets.token_urlsafe(24)
        self.on_task = on_task
        self.received = 0
        self.refused = 0
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> CallbackReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind and listen; raises OSError when the address cannot be had (leaving no runner or socket open)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except BaseException:
            sock.close()
            raise
        from aiohttp import web  # the server side, loaded by the runs that listen (--callback-listen) only

        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        try:
            await self._runner.setup()
            self.port = sock.getsockname()[1]
            await web.SockSite(self._runner, sock).start()
        except BaseException:
            sock.close()
            await self.close()
            raise

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def url_for(self, public_base: str | None) -> str:
        """The callBackUrl to send: the public base (or this listener's own address), then the token."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        base = public_base or f"http://{host}:{self.port}"
        return f"{base.rstrip('/')}/{self.token}"

    async def _handle(self, request: web.Request) -> web.Response:
        from aiohttp import web

        last = request.path.rstrip("/").rsplit("/", 1)[-1]
        if not hmac.compare_digest(last.encode(), self.token.encode()):
            self.refused += 1
            return web.Response(status=404)
        try:
            body = json.loads(await request.read())
            task_id = body["data"]["taskId"]
        except (ValueError, KeyError, TypeError, RecursionError):
            self.refused += 1
            return web.json_response({"ok": False}, status=400)
        if not isinstance(task_id, str):
            self.refused += 1
            return web.json_response({"ok": False}, status=400)
        self.received += 1
        if self.on_task is not None:
            self.on_task(task_id)
        return web.json_response({"ok": True})


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:PORT`) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"expected HOST:PORT, e.g. 127.0.0.1:8765; got {text!r}")
    return host.strip("[]"), int(port)
