"""The simulator, over real HTTP on loopback: it must answer as the seed page and SPEC section 1 describe."""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from .helpers import AUTH_HEADERS as KEY
from .helpers import CREATE, create, record, serve, sim_body, until, wait_state


async def test_create_poll_download_lifecycle(sim_factory):
    lifecycle = ["waiting", "queuing", "generating", "success"]
    async with sim_factory(latency=0.4, jitter=0) as sim, aiohttp.ClientSession() as s:
        status, answer = await create(s, sim, sim_body(aspect_ratio="16:9", output_format="jpg", seed=3))
        assert status == 200 and answer["code"] == 200 and answer["msg"] == "success"
        task_id = answer["data"]["taskId"]
        assert task_id.startswith("task_imagen4-ultra_")
        seen: list[str] = []

        async def finished() -> dict[str, Any] | None:
            _, info = await record(s, sim, task_id)
            data = info["data"]
            if not seen or seen[-1] != data["state"]:
                seen.append(data["state"])
            if data["state"] != "success":
                assert data["resultJson"] == "" and data["completeTime"] is None
            return data if data["state"] == "success" else None

        data = await until(finished, 20, what="the task never finished")
        # However fast or slow the polls came, the states seen follow the lifecycle in order.
        assert seen == sorted(seen, key=lifecycle.index) and len(set(seen)) == len(seen)
        assert json.loads(data["param"]) == sim_body(aspect_ratio="16:9", output_format="jpg", seed=3)
        assert data["failCode"] == "" and data["costTime"] >= 390
        assert data["createTime"] <= data["completeTime"]
        (url,) = json.loads(data["resultJson"])["resultUrls"]
        assert not url.startswith(sim.api_url)  # a second origin
        async with s.get(url) as r:
            assert r.status == 200 and r.content_type == "image/jpeg"
            image = Image.open(io.BytesIO(await r.read()))
            image.load()
        assert image.format == "JPEG"
        assert image.size == (round(2816 * 0.05), round(1536 * 0.05))  # 16:9 is 2816x1536 at full scale


async def test_tasks_finish_without_being_polled(sim_factory):
    async with sim_factory(latency=0.2, jitter=0) as sim, aiohttp.ClientSession() as s:
        _, answer = await create(s, sim)
        assert sim.in_flight() == 1
        await until(lambda: sim.in_flight() == 0)
        assert sim.stats.polls == 0
        _, info = await record(s, sim, answer["data"]["taskId"])
        assert info["data"]["state"] == "success"


@pytest.mark.parametrize(
    ("aspect", "size"),
    [
        ("1:1", (2048, 2048)),
        ("social_story_9_16", (1536, 2816)),
        ("4:3", (2368, 1792)),
        ("traditional_3_4", (1792, 2368)),
    ],
)
async def test_images_follow_aspect_ratio_and_default_png(sim_factory, aspect, size):
    async with sim_factory(latency=0.05, jitter=0, image_scale=0.1) as sim, aiohttp.ClientSession() as s:
        _, answer = await create(s, sim, sim_body(aspect_ratio=aspect))
        data = await wait_state(s, sim, answer["data"]["taskId"], {"success"})
        async with s.get(json.loads(data["resultJson"])["resultUrls"][0]) as r:
            image = Image.open(io.BytesIO(await r.read()))
        assert image.format == "PNG" and image.size == (round(size[0] * 0.1), round(size[1] * 0.1))


async def test_auth_is_required_in_the_gateway_envelope(sim_factory):
    async with sim_factory(api_key="right") as sim, aiohttp.ClientSession() as s:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic right"}):
            status, answer = await create(s, sim, headers=headers)
            assert status == 401
            assert answer["error"]["type"] == "new_api_error" and answer["error"]["code"] == ""
            assert "token" in answer["error"]["message"]
        status, _ = await create(s, sim, headers={"Authorization": "Bearer right"})
        assert status == 200
        assert sim.stats.creates == 1


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"input": {"prompt": "x"}}, "model is required"),
        ({"model": "imagen3", "input": {"prompt": "x"}}, "unsupported model: imagen3"),
        ({"model": "imagen4-ultra", "input": {}}, "input.prompt is required"),
        ({"model": "imagen4-ultra", "input": {"prompt": "  "}}, "input.prompt is required"),
        (
            {"model": "imagen4-ultra", "input": {"prompt": "x", "seed": 0}},
            "input.seed: expected an integer >= 1, got 0",
        ),
        ({"model": "imagen4-ultra", "input": {"prompt": "x", "aspect_ratio": "2:1"}}, "input.aspect_ratio: expected"),
        ({"model": "imagen4-ultra", "input": {"prompt": "x", "steps": 3}}, "input.steps is not a supported parameter"),
    ],
)
async def test_invalid_requests_get_the_business_envelope(sim_factory, payload, message):
    async with sim_factory() as sim, aiohttp.ClientSession() as s:
        status, answer = await create(s, sim, payload)
        assert status == 400 and answer["code"] == 400 and answer["data"] is None
        assert answer["msg"].startswith(message)
        assert sim.stats.creates == 0


async def test_http200_error_mode_puts_the_code_only_in_the_body(sim_factory):
    async with sim_factory(http200_errors=True) as sim, aiohttp.ClientSession() as s:
        status, answer = await create(s, sim, {"model": "imagen4-ultra", "input": {}})
        assert status == 200 and answer["code"] == 400


async def test_body_limit_quota_and_upstream_rejection(sim_factory):
    async with sim_factory(body_limit=2000, quota=1) as sim, aiohttp.ClientSession() as s:
        status, answer = await create(s, sim, sim_body("x" * 3000))
        assert status == 413 and answer["code"] == 413
        status, answer = await create(s, sim, sim_body("please [sim:reject]"))
        assert status == 422 and answer["code"] == 422
        assert (await create(s, sim))[0] == 200
        status, answer = await create(s, sim, sim_body("another"))
        assert status == 403 and answer["error"]["code"] == "insufficient_user_quota"
        assert sim.stats.creates == 1


async def test_unknown_and_fresh_tasks_are_null(sim_factory):
    async with sim_factory(null_window=0.3) as sim, aiohttp.ClientSession() as s:
        status, answer = await record(s, sim, "task_imagen4-ultra_1")
        assert status == 422
        assert answer == {"code": 422, "msg": "recordInfo is null", "data": None}
        _, created = await create(s, sim)
        _, answer = await record(s, sim, created["data"]["taskId"])
        assert answer["code"] == 422
        data = await wait_state(s, sim, created["data"]["taskId"], {"waiting", "queuing", "generating", "success"})
        assert data["taskId"] == created["data"]["taskId"]  # visible once the null window is over


async def test_rate_window_429_drops_the_request(sim_factory):
    async with sim_factory(rate=(3, 0.5), latency=5) as sim, aiohttp.ClientSession() as s:
        statuses = [(await create(s, sim, sim_body(f"p{n}")))[0] for n in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        assert sim.stats.creates == 3 and sim.stats.rate_limited == 2

        async def accepted() -> bool:  # a refused create is dropped: retrying is free
            return (await create(s, sim, sim_body("later")))[0] == 200

        await until(accepted, 10, every=0.05, what="the window never reopened")
        assert sim.stats.creates == 4


async def test_capacity_429_and_max_in_flight(sim_factory):
    async with sim_factory(capacity=2, latency=0.3, jitter=0) as sim, aiohttp.ClientSession() as s:
        results = await asyncio.gather(*(create(s, sim, sim_body(f"p{n}")) for n in range(4)))
        assert sorted(status for status, _ in results) == [200, 200, 429, 429]
        assert sim.stats.max_in_flight == 2
        await until(lambda: sim.in_flight() == 0)
        assert (await create(s, sim, sim_body("after")))[0] == 200


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("relay", {"code": "429", "message": "当前分组上游负载已饱和，请稍后再试", "data": None}),
        ("business", {"code": 429, "msg": "当前分组上游负载已饱和，请稍后再试", "data": None}),
        (
            "gateway",
            {"error": {"message": "当前分组上游负载已饱和，请稍后再试", "type": "new_api_error", "code": "429"}},
        ),
        ("empty", None),
    ],
)
async def test_429_envelopes(sim_factory, kind, expected):
    async with sim_factory(capacity=0, envelope_429=kind, retry_after=2) as sim, aiohttp.ClientSession() as s:
        async with s.post(sim.api_url + CREATE, json=sim_body(), headers=KEY) as r:
            text = await r.text()
            assert r.status == 429 and r.headers["Retry-After"] == "2"
        assert (json.loads(text) if text else None) == expected


async def test_mixed_429_envelopes_take_turns(sim_factory):
    async with sim_factory(capacity=0, envelope_429="mixed") as sim, aiohttp.ClientSession() as s:
        answers = [await create(s, sim) for _ in range(4)]
    assert [status for status, _ in answers] == [429] * 4
    relay, business, gateway, empty = (answer for _, answer in answers)
    assert relay["code"] == "429" and "message" in relay
    assert business["code"] == 429 and "msg" in business
    assert gateway["error"]["code"] == "429" and empty is None


async def test_injected_500s_and_dropped_connections(sim_factory):
    async with sim_factory(error_rate=1.0) as sim, aiohttp.ClientSession() as s:
        status, answer = await create(s, sim)
        assert status == 500 and answer["code"] == 500
    async with sim_factory(drop_rate=1.0) as sim, aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientError):
            await create(s, sim)
        assert sim.stats.dropped == 1 and sim.stats.creates == 0


async def test_failures_by_marker_and_by_rate(sim_factory):
    async with sim_factory(latency=0.05, jitter=0) as sim, aiohttp.ClientSession() as s:
        _, policy = await create(s, sim, sim_body("x [sim:fail-policy]"))
        _, once = await create(s, sim, sim_body("y [sim:fail-transient:1]"))
        _, again = await create(s, sim, sim_body("y [sim:fail-transient:1]"))
        data = await wait_state(s, sim, policy["data"]["taskId"], {"fail", "success"})
        assert data["state"] == "fail" and data["failCode"] == "400" and "content polic" in data["failMsg"]
        assert data["resultJson"] == ""
        assert (await wait_state(s, sim, once["data"]["taskId"], {"fail", "success"}))["failCode"] == "500"
        assert (await wait_state(s, sim, again["data"]["taskId"], {"fail", "success"}))["state"] == "success"
    async with sim_factory(latency=0.05, jitter=0, fail_rate=1.0) as sim, aiohttp.ClientSession() as s:
        _, answer = await create(s, sim)
        assert (await wait_state(s, sim, answer["data"]["taskId"], {"fail", "success"}))["state"] == "fail"


async def _result_url(s, sim, prompt: str = "p") -> str:
    _, answer = await create(s, sim, sim_body(prompt))
    data = await wait_state(s, sim, answer["data"]["taskId"], {"success"})
    return json.loads(data["resultJson"])["resultUrls"][0]


async def test_result_urls_expire_and_refresh_on_record_info(sim_factory):
    async with sim_factory(latency=0.05, jitter=0) as sim, aiohttp.ClientSession() as s:
        url = await _result_url(s, sim)
        async with s.get(url) as r:
            assert r.status == 200
        async with s.get(url.replace("sig=", "sig=0")) as r:
            assert r.status == 403
    async with sim_factory(latency=0.05, jitter=0, expired_url_rate=1.0) as sim, aiohttp.ClientSession() as s:
        _, answer = await create(s, sim)
        task_id = answer["data"]["taskId"]
        data = await wait_state(s, sim, task_id, {"success"})
        (stale,) = json.loads(data["resultJson"])["resultUrls"]
        async with s.get(stale) as r:
            assert r.status == 403 and "expired" in await r.text()
        sim.config = replace(sim.config, expired_url_rate=0.0)
        _, again = await record(s, sim, task_id)  # the same task, asked again: a freshly signed URL
        (fresh,) = json.loads(again["data"]["resultJson"])["resultUrls"]
        assert fresh != stale
        async with s.get(fresh) as r:
            assert r.status == 200


async def test_truncated_and_html_downloads(sim_factory):
    async with sim_factory(latency=0.05, jitter=0, truncate_rate=1.0) as sim, aiohttp.ClientSession() as s:
        url = await _result_url(s, sim)
        with pytest.raises(aiohttp.ClientPayloadError):
            async with s.get(url) as r:
                declared = r.content_length
                await r.read()
        assert declared and declared > 0
    async with sim_factory(latency=0.05, jitter=0, html_rate=1.0) as sim, aiohttp.ClientSession() as s:
        async with s.get(await _result_url(s, sim)) as r:
            assert r.status == 200 and r.content_type == "text/html"


async def test_stats_endpoint_counts_and_flags_authorization_on_files(sim_factory):
    async with sim_factory(latency=0.05, jitter=0) as sim, aiohttp.ClientSession() as s:
        url = await _result_url(s, sim, "stats")
        async with s.get(url, headers=KEY) as r:
            await r.read()
        async with s.get(sim.api_url + "/__sim/stats") as r:
            stats = await r.json()
        assert stats["creates"] == 1 and stats["polls"] >= 1 and stats["file_requests"] == 1
        assert stats["file_auth_headers"] == 1
        assert list(stats["creates_by_request"].values()) == [1]


async def test_callbacks_are_posted_and_retried(sim_factory):
    received: list[dict[str, Any]] = []
    calls = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return web.Response(status=503)  # the first delivery fails; the simulator retries
        received.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with serve(app) as base, sim_factory(latency=0.05, jitter=0) as sim, aiohttp.ClientSession() as s:
        payload = {**sim_body("hooked"), "callBackUrl": f"{base}/hook"}
        _, answer = await create(s, sim, payload)
        await until(lambda: received)
        assert calls == 2 and sim.stats.callbacks_sent == 1
        assert received[0]["data"]["taskId"] == answer["data"]["taskId"]
        assert received[0]["data"]["state"] == "success"


def test_sim_command_answers_like_the_seed_page_and_stops_on_sigterm():
    import re
    import signal
    import subprocess
    import sys
    import urllib.request

    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchgen",
            "sim",
            "--port",
            "0",
            "--latency",
            "0.1",
            "--jitter",
            "0",
            "--image-scale",
            "0.02",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            line = proc.stdout.readline()
            api = re.search(r"api=(\S+)", line).group(1)
            request = urllib.request.Request(
                api + CREATE,
                method="POST",
                headers={**KEY, "Content-Type": "application/json"},
                data=json.dumps(
                    sim_body("A realistic aerial photo of a futuristic green city beside the sea")
                ).encode(),
            )
            with urllib.request.urlopen(request, timeout=5) as r:
                answer = json.load(r)
            assert answer["code"] == 200 and answer["data"]["taskId"].startswith("task_imagen4-ultra_")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0


async def test_a_held_task_runs_until_released_and_then_finishes(sim_factory):
    async with sim_factory(latency=0.05, jitter=0) as sim, aiohttp.ClientSession() as s:
        _, answer = await create(s, sim, sim_body("hold me [sim:hold]"))
        task_id = answer["data"]["taskId"]
        await wait_state(s, sim, task_id, {"generating"})
        assert sim.in_flight() == 1
        _, info = await record(s, sim, task_id)
        assert info["data"]["state"] == "generating" and info["data"]["completeTime"] is None
        async with s.post(sim.api_url + "/__sim/release") as r:
            assert (await r.json()) == {"released": 1}
        data = await wait_state(s, sim, task_id, {"success"})
        assert json.loads(data["resultJson"])["resultUrls"] and sim.in_flight() == 0
        assert sim.release() == 0  # nothing left to release
