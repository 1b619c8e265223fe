"""Callbacks are hints: a valid one brings a status query forward; a forged one changes nothing."""

from __future__ import annotations

import asyncio
import io
import json
import socket

import aiohttp

from batchgen import ledger, runner
from batchgen.callbacks import CallbackReceiver
from batchgen.config import PollSchedule
from batchgen.progress import Reporter

from .helpers import make_settings, manifest_of, until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_receiver_accepts_only_its_token_and_a_task_id():
    seen: list[str] = []
    async with CallbackReceiver("127.0.0.1", 0, seen.append) as receiver, aiohttp.ClientSession() as session:
        url = receiver.url_for(None)
        assert url.startswith(f"http://127.0.0.1:{receiver.port}/") and url.endswith(receiver.token)
        good = {"code": 200, "msg": "success", "data": {"taskId": "task_1", "state": "success"}}
        for target, body, status in [
            (url, good, 200),
            (url.replace(receiver.token, "guessed-token"), good, 404),
            (f"http://127.0.0.1:{receiver.port}/", good, 404),
            (url, {"data": {}}, 400),
            (url, {"data": {"taskId": 5}}, 400),
        ]:
            async with session.post(target, json=body) as response:
                assert response.status == status
        async with session.post(url, data=b"not json") as response:
            assert response.status == 400
    assert seen == ["task_1"] and receiver.received == 1 and receiver.refused == 5


async def test_behind_a_proxy_the_public_url_carries_the_token():
    async with CallbackReceiver("127.0.0.1", 0, lambda _: None) as receiver:
        assert (
            receiver.url_for("https://hooks.example.com/batchgen/")
            == f"https://hooks.example.com/batchgen/{receiver.token}"
        )


async def _status_queries(sim, path, out, **kw) -> tuple[int, float]:
    settings = make_settings(path, out, sim, poll=PollSchedule(0.1), **kw)
    outcome = await runner.run(settings, Reporter(stream=io.StringIO()))
    assert outcome.exit_code == 0
    return outcome.counters.polls, outcome.counters.callbacks


async def test_callbacks_cut_status_queries_per_task(sim_factory, tmp_path):
    prompts = [f"p{n}" for n in range(6)]
    async with sim_factory(latency=1.0, jitter=0) as sim:
        polling, _ = await _status_queries(sim, manifest_of(tmp_path / "a.yaml", prompts), tmp_path / "a")
    async with sim_factory(latency=1.0, jitter=0) as sim:
        with_callbacks, woken = await _status_queries(
            sim, manifest_of(tmp_path / "b.yaml", prompts), tmp_path / "b", callback_listen=f"127.0.0.1:{free_port()}"
        )
        assert sim.stats.callbacks_sent == 6
    assert woken == 6
    # Each task is asked once, after its callback; the fallback polling asked only the cold start's probes of
    # the oldest task (one at a time, four times less often than without callbacks: at 0.4 s and 0.8 s here).
    assert with_callbacks <= woken + 2 < polling, (polling, with_callbacks)


async def test_a_forged_callback_changes_nothing(sim_factory, tmp_path):
    # The task is held: whatever a callback claims, recordInfo says "generating" until the test releases it.
    path = manifest_of(tmp_path / "m.yaml", ["held [sim:hold]"])
    out = tmp_path / "out"
    async with sim_factory(latency=0.05, jitter=0) as sim, aiohttp.ClientSession() as session:
        settings = make_settings(path, out, sim, callback_listen=f"127.0.0.1:{free_port()}")
        run = asyncio.ensure_future(runner.run(settings, Reporter(stream=io.StringIO())))
        await until(lambda: sim.stats.creates == 1)
        ((task_id, body),) = sim.created().items()
        # A forged result on the simulator's own file origin: any fetch of it would be counted there.
        forged_url = f"{sim.files_url}/r/{task_id}/1.png"
        forged = {
            "code": 200,
            "msg": "success",
            "data": {"taskId": task_id, "state": "success", "resultJson": json.dumps({"resultUrls": [forged_url]})},
        }
        asked = sim.stats.polls_by_task[task_id]
        async with session.post(body["callBackUrl"], json=forged) as response:
            assert response.status == 200  # the right token: the poller is woken, and asks recordInfo
        await until(lambda: sim.stats.polls_by_task[task_id] > asked)  # ... which says: still generating
        assert ledger.load(out).items["item-00"]["state"] == "submitted"
        assert sim.stats.file_requests == 0  # the forged URL was never fetched
        assert sim.release() == 1
        outcome = await run
        assert outcome.exit_code == 0
        assert sim.stats.file_requests == 1  # only the real result URL, handed out by recordInfo, was fetched
