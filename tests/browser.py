"""Headless Chromium driven over the DevTools protocol (a websocket on loopback), for the contact sheet's tests.

No browser-automation library: the protocol is JSON over a websocket, and aiohttp already speaks websockets.
Input goes through `Input.dispatch*Event`, i.e. real mouse clicks and key presses, not `element.click()`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .helpers import until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="headless Chromium is not installed (.ci/run installs it; CI fails rather than skips)",
)

# Where screenshots go: $BATCHGEN_ARTEFACTS, else tests/artifacts/ (git-ignored), to be looked at by a person.
ARTEFACTS = Path(os.environ.get("BATCHGEN_ARTEFACTS") or Path(__file__).parent / "artifacts")

KEYS = {"Escape": 27, "ArrowLeft": 37, "ArrowRight": 39, "Enter": 13}


class PageError(AssertionError):
    """The page threw, or the protocol answered with an error."""


class Page:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = iter(range(1, 1_000_000))
        self.errors: list[str] = []  # uncaught exceptions and console errors (CSP violations among them)
        self.requests: list[str] = []  # every URL the page asked for

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self._ids)
        await self._ws.send_json({"id": number, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self._ws.receive_json(), 30)
            if message.get("id") == number:
                if "error" in message:
                    raise PageError(f"{method}: {message['error']}")
                return message["result"]
            self._event(message)

    def _event(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(params["entry"]["text"])
        elif method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise PageError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, seconds: float = 15.0) -> Any:
        """Poll a condition in the page until it is truthy (its value), or fail at the deadline."""
        return await until(
            lambda: self.evaluate(expression), seconds, every=0.05, what=f"still false after {seconds} s: {expression}"
        )

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", url=url)
        await self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")

    async def click(self, selector: str) -> None:
        """A real left click in the middle of the element (scrolled into view first)."""
        box = await self.evaluate(
            f"""(() => {{
                const node = document.querySelector({json.dumps(selector)});
                if (!node) return null;
                node.scrollIntoView({{block: "center", inline: "center"}});
                const r = node.getBoundingClientRect();
                return {{x: r.left + r.width / 2, y: r.top + r.height / 2}};
            }})()"""
        )
        assert box, f"nothing matches {selector}"
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], button="left", clickCount=1)

    async def key(self, name: str) -> None:
        code = KEYS[name]
        for kind in ("rawKeyDown", "keyUp"):
            await self.call("Input.dispatchKeyEvent", type=kind, key=name, code=name, windowsVirtualKeyCode=code)

    async def type(self, selector: str, text: str) -> None:
        await self.click(selector)
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).select()")
        await self.call("Input.insertText", text=text)

    async def resize(self, width: int, height: int) -> None:
        await self.call(
            "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
        )

    async def screenshot(self, path: Path) -> Path:
        shot = await self.call("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


@asynccontextmanager
async def chromium(profile: Path, width: int = 1280, height: int = 900) -> AsyncIterator[Page]:
    """A headless Chromium with one page, no network services of its own; killed on exit."""
    assert CHROMIUM, "CI must have Chromium: .ci/run installs it"
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        "--remote-debugging-port=0",
        "--remote-debugging-address=127.0.0.1",
        "about:blank",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    drain: asyncio.Task[None] | None = None
    try:
        assert proc.stderr is not None
        endpoint = None
        while endpoint is None:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert line, "Chromium exited before it listened"
            if match := re.search(r"DevTools listening on (ws://\S+)", line):
                endpoint = match.group(1)
        port = endpoint.split(":")[2].split("/")[0]
        # Keep reading its stderr: a full pipe would block Chromium.
        drain = asyncio.create_task(_drain(proc.stderr))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                target = next(t for t in await response.json() if t["type"] == "page")
            async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                for domain in ("Page", "Runtime", "Log", "Network"):
                    await page.call(f"{domain}.enable")
                await page.resize(width, height)
                yield page
    finally:
        proc.kill()
        await proc.wait()
        if drain is not None:
            drain.cancel()  # its helper processes may hold the pipe a moment longer: do not wait for EOF
            with contextlib.suppress(asyncio.CancelledError):
                await drain


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass
