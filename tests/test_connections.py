"""Two connection pools: a createTask never goes out on a connection idle for over a second (SPEC §1a), while
status queries and result files (GETs, which pay nothing) keep theirs for READ_KEEPALIVE, instead of a TCP
handshake, a transport and its close for most of them. One cookie jar for both, as with one session."""

from __future__ import annotations

import asyncio
import json

from batchgen import client
from batchgen.client import Client, open_sessions
from batchgen.config import Secret, Timeouts

KEY = "sk-connections-0123456789abcdef"
IDLE = 1.1  # longer than KEEPALIVE: idleness itself is what is tested here, not a synchronisation
RECORD = {"code": 200, "msg": "success", "data": {"taskId": "task-1", "state": "generating"}}
CREATED = {"code": 200, "msg": "success", "data": {"taskId": "task-1"}}


async def test_status_queries_and_results_keep_their_connection_a_create_never_an_idle_one():
    assert client.KEEPALIVE < IDLE < client.READ_KEEPALIVE
    connections: list[list[str]] = []  # the request lines each connection carried

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines: list[str] = []
        connections.append(lines)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                lines.append(head.split(" ")[1].split("?")[0])
                if length := [h for h in head.split("\r\n") if h.lower().startswith("content-length:")]:
                    await reader.readexactly(int(length[0].split(":")[1]))
                if "/result" in head:
                    body, kind, extra = b"\x89PNG not checked here", "image/png", ""
                else:
                    answer = CREATED if "createTask" in head else RECORD
                    body, kind = json.dumps(answer).encode(), "application/json"
                    extra = "Set-Cookie: route=a1; Path=/\r\n" if "createTask" in head else ""
                seen = "cookie: route=a1" in head.lower()
                writer.write(
                    f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nContent-Type: {kind}\r\n{extra}"
                    f"X-Cookie-Seen: {seen}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    base = f"http://localhost:{server.sockets[0].getsockname()[1]}"  # a name: the jar keeps no IP's cookies
    try:
        async with open_sessions(Timeouts()) as (creates, reads):
            api = Client(creates, base, Secret(KEY), Timeouts(), reads=reads)
            assert await api.create_task({"model": "m", "input": {}}) == "task-1"
            assert (await api.record_info("task-1")).task_id == "task-1"
            async with api.open_result(f"{base}/result/a.png") as response:
                assert response.headers["X-Cookie-Seen"] == "True"  # the jar is shared: createTask set it
                await response.read()
            assert len(connections) == 2  # one a pool, each kept back to back
            await asyncio.sleep(IDLE)
            assert (await api.record_info("task-1")).task_id == "task-1"
            async with api.open_result(f"{base}/result/a.png") as response:
                await response.read()
            assert len(connections) == 2  # the GETs' pool kept its connection through the idle second
            await asyncio.sleep(IDLE)
            assert await api.create_task({"model": "m", "input": {}}) == "task-1"
            assert len(connections) == 3  # ... and a createTask went out on a new one
            assert connections[2] == ["/api/v1/jobs/createTask"]
            creating = [c for c in connections if "/api/v1/jobs/createTask" in c]
            assert all(set(c) == {"/api/v1/jobs/createTask"} for c in creating)  # never shared with a GET
    finally:
        server.close()
        await server.wait_closed()
