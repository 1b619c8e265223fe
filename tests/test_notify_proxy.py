"""The night's end through the run's proxy (issue 19): a notify or ping failure line is masked with the proxy's
credentials as well as the key and the notify URLs, whatever the Reporter itself was told to mask.

The proxy here is real (loopback TCP) and refuses every request with 407, naming the user and password it was
given in its reason phrase, as a proxy that logs or echoes them would; Apprise's Lark plugin reports the
proxy's refusal word for word, through the real notifier child process."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest

from batchgen import endactions, finish, notify
from batchgen.config import Secret
from batchgen.progress import Reporter
from batchgen.proxies import ProxySettings

from .helpers import a_summary

pytestmark = pytest.mark.skipif(not notify.available(), reason="Apprise (the notify extra) is not installed")

USER, PASSWORD = "someone", "proxy-pass-77"
TOKEN = "tok-3f9a1c7e5b2d"


@contextlib.asynccontextmanager
async def echoing_proxy(password: str = PASSWORD) -> AsyncIterator[str]:
    """An HTTP proxy that refuses with 407 and echoes the credentials it got; yields its URL with them."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            auth = [line for line in head.split(b"\r\n") if line.lower().startswith(b"proxy-authorization:")]
            who = base64.b64decode(auth[0].split()[-1]).decode() if auth else "nobody"
            writer.write(f"HTTP/1.1 407 unknown user {who}\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://{USER}:{quote(password, safe='')}@127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("password", [PASSWORD, "p@ss:w/rd 77"])  # the second one percent-encoded in the URL
async def test_a_notify_failure_through_the_proxy_never_shows_its_credentials(tmp_path, password):
    bounds = endactions.Bounds(total=20.0, after_signal=2.0, grace=0.5, ping=5.0)
    actions = endactions.EndActions(bounds=bounds, notify=(Secret(f"lark://{TOKEN}"),))
    async with echoing_proxy(password) as url:
        way = ProxySettings(https=url, http=url, source="--proxy")
        stream = (tmp_path / "log").open("w")
        reporter = Reporter(stream=stream, progress=False)  # told nothing to mask: finish masks on its own
        await asyncio.to_thread(finish.at_end, actions, a_summary(tmp_path, failed=1), reporter, proxy=way)
        stream.close()
    log = (tmp_path / "log").read_text()
    assert "notification not sent: " in log and "407 unknown user" in log, log  # the proxy's words did come back
    assert password not in log and quote(password, safe="") not in log and TOKEN not in log, log


async def test_doctor_notify_through_the_proxy_never_shows_its_credentials(tmp_path):
    bounds = endactions.Bounds(total=20.0, after_signal=2.0, grace=0.5, ping=5.0)
    actions = endactions.EndActions(bounds=bounds, notify=(Secret(f"lark://{TOKEN}"),))
    async with echoing_proxy() as url:
        stream = (tmp_path / "log").open("w")
        reporter = Reporter(stream=stream, progress=False)
        way = ProxySettings(https=url, http=url, source="--proxy")
        results = await finish.test_notification(actions, reporter, proxy=way)
        stream.close()
    log = (tmp_path / "log").read_text()
    assert results[0][0] is False and "407 unknown user" in log, log
    assert PASSWORD not in log and TOKEN not in log, log


async def test_a_ping_failure_through_the_proxy_never_shows_its_credentials(tmp_path):
    bounds = endactions.Bounds(total=20.0, after_signal=2.0, grace=0.5, ping=5.0)
    ping = Secret(f"https://hc.example/{TOKEN}")
    actions = endactions.EndActions(bounds=bounds, ping=ping)
    async with echoing_proxy() as url:
        stream = (tmp_path / "log").open("w")
        reporter = Reporter(stream=stream, progress=False)
        way = ProxySettings(https=url, http=url, source="--proxy")
        await asyncio.to_thread(finish.at_end, actions, a_summary(tmp_path, failed=1), reporter, proxy=way)
        stream.close()
    log = (tmp_path / "log").read_text()
    assert "not delivered: the request failed" in log, log  # the client names only the kind of failure
    assert PASSWORD not in log and TOKEN not in log and USER not in log, log
