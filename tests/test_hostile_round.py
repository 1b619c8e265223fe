"""Hostile round (after the seven-branch merge): attacks from outside on the new features, where two meet."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from batchgen import client, decisions, manifest, rolls
from batchgen.config import Secret, Timeouts
from batchgen.errors import BatchgenError, TransportError

from .helpers import HOOK, KEY, cli, env, make_settings, results, run, run_args, serve, start

SENT = {"bytes": 0}


async def _endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(status=200)
    await response.prepare(request)
    chunk = b"\0" * 65536
    while SENT["bytes"] < 128 * 1024 * 1024:
        await response.write(chunk)
        SENT["bytes"] += len(chunk)
    return response


@contextlib.asynccontextmanager
async def endless_server() -> AsyncIterator[str]:
    """A server whose every answer is 200 and a body of 128 MiB of zeros, as fast as the client takes it."""
    SENT["bytes"] = 0
    async with serve(_endless) as base:
        yield base


async def test_a_ping_answer_that_never_ends_is_not_read_to_its_end():
    async with endless_server() as base:
        assert await client.ping(base + "/abc", seconds=30) == 200
    assert SENT["bytes"] < 64 * 1024 * 1024


async def test_an_api_answer_that_never_ends_is_not_read_to_its_end():
    """recordInfo has a read timeout between chunks only: an answer that keeps coming was read for ever, into
    memory. Now an answer past MAX_ANSWER is a lost answer (TransportError: a createTask stays in doubt)."""
    async with endless_server() as base, client.open_session(Timeouts()) as session:
        api = client.Client(session, base, Secret(KEY), Timeouts())
        with pytest.raises(TransportError):
            await asyncio.wait_for(api.record_info("task-1"), 60)
        with pytest.raises(TransportError):
            await asyncio.wait_for(api.create_task({"model": "imagen4-ultra", "input": {"prompt": "x"}}), 60)
    assert SENT["bytes"] < 64 * 1024 * 1024


MANIFEST = "- id: fox\n  prompt: a fox\n  seed: 7\n- id: owl\n  prompt: an owl\n  seed: 12\n"


async def night_with_both_rejected(path, out, sim) -> None:
    """A night that made every item of MANIFEST, then a review that rejected fox and owl."""
    assert (await run(make_settings(path, out, sim))).exit_code == 0
    for item in ("fox", "owl"):
        decisions.append(out, item, "rejected", results(out)["items"][item]["task_id"])


async def test_a_reroll_of_an_item_whose_model_is_gone_keeps_the_item_and_pays_nothing(tmp_path, write, sim_factory):
    """Two new features meet (guard, held on main): a rejected item re-rolled while its model is gone (503
    naming it) stays succeeded with its image, the roll marked reroll_failed; nothing is paid, and the next
    plain run sends nothing."""
    path = write("m.yaml", MANIFEST)
    out = tmp_path / "out"
    async with sim_factory() as sim:
        assert (await run(make_settings(path, out, sim))).exit_code == 0
    before = (out / "fox.png").read_bytes()
    decisions.append(out, "fox", "rejected", results(out)["items"]["fox"]["task_id"])
    async with sim_factory(unsupported_models=("imagen4-ultra",), unsupported_answer="503") as sim:
        code, _, err = await cli(run_args(path, out, sim, "--reroll"))
        assert code == 0 and "not offered by the service" in err, err
        code, _, err = await cli(run_args(path, out, sim))
        assert code == 0, err
        assert sim.stats.creates == 0
    fox = results(out)["items"]["fox"]
    assert (out / "fox.png").read_bytes() == before and fox["state"] == "succeeded"
    assert fox["reroll_failed"]["kind"] == "model_unavailable"
    code, status, err = await cli([sys.executable, "-m", "batchgen", "status", str(out)])
    assert code == 0 and "reroll failed fox" in status, status + err


async def test_max_spend_holding_back_a_reroll_is_incomplete(tmp_path, write, sim_factory):
    """--max-spend bounds re-rolls like any paid create; the re-roll it held back is still to do: exit 5 (it was
    0, "every item succeeded", as the rejected items are `succeeded`), and the next run sends it."""
    path = write("m.yaml", MANIFEST)
    out = tmp_path / "out"
    async with sim_factory() as sim:
        await night_with_both_rejected(path, out, sim)
        code, _, err = await cli(run_args(path, out, sim, "--reroll", "--price", "1", "--max-spend", "1"))
        assert code == 5 and "--max-spend 1 reached" in err, err
        assert sim.stats.creates == 3
        code, _, err = await cli(run_args(path, out, sim, "--price", "1", "--max-spend", "5"))
        assert code == 0 and sim.stats.creates == 4, err
    assert all(len(r["rolls"]) == 2 for r in results(out)["items"].values())


NIGHTLY = Path(__file__).resolve().parents[1] / "jobs" / "nightly.sh"


async def test_a_broken_env_file_line_is_named_without_its_value(tmp_path):
    """nightly.sh refused a line that is not KEY=value by printing the whole line, to stderr (cron mails it) and
    to the log: a key written `BATCHGEN API KEY=...` or `BATCHGEN-NOTIFY=slack://token` went out in the mail."""
    for n, (line, named) in enumerate(
        [("BATCHGEN API KEY=sk-live-0123456789secret", b"BATCHGEN API KEY"), ("sk-live-0123456789secret", None)]
    ):
        settings = tmp_path / f"nightly-{n}.env"
        settings.write_text(f"BATCHGEN_OUT={tmp_path / 'out'}\n{line}\n", encoding="utf-8")
        proc = await asyncio.create_subprocess_exec(
            *("env", "-i", "/bin/sh", str(NIGHTLY), str(settings)),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 2
        assert b"line 2 is not a KEY=value line" in err and (named is None or named in err), err
        assert b"0123456789secret" not in out + err


async def _refusing_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
    writer.close()


class _Far:
    api_url = "https://api.example.invalid"  # not loopback: its way goes through the proxy


FAR = _Far()


async def test_a_refused_way_with_every_end_action_leaks_no_proxy_password(tmp_path, write):
    """The way refused (a proxy's 407, exit 3) and the night's end: the hook's stdin, argv and environment, the
    notify and ping failure lines, the ledger and the state files hold no form of the proxy's password."""
    import base64

    server = await asyncio.start_server(_refusing_proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hook = write("hook.py", HOOK)
    record = tmp_path / "hook.json"
    state = tmp_path / "state"
    path = write("m.yaml", MANIFEST)
    out = tmp_path / "out"
    proxy = f"http://alice:pa%2Fss-Word-991@127.0.0.1:{port}"
    try:
        code, stdout, stderr = await cli(
            [
                *run_args(path, out, FAR),
                *("--on-finish", f"{sys.executable} {hook} {record}"),
                *("--notify", "json://notify.example.invalid/hook-token-abcdef"),
                *("--ping", "http://ping.example.invalid/ping-token-abcdef"),
            ],
            env=env(BATCHGEN_PROXY=proxy, XDG_STATE_HOME=str(state)),
        )
    finally:
        server.close()
    assert code == 3, stderr
    seen = [stdout, stderr, record.read_text()]
    seen += [p.read_text(errors="replace") for p in [*out.rglob("*"), *state.rglob("*")] if p.is_file()]
    for form in ("pa%2Fss-Word-991", "pa/ss-Word-991", base64.b64encode(b"alice:pa/ss-Word-991").decode()):
        assert not [text for text in seen if form in text], form
    assert "token-abcdef" not in stdout + stderr
    assert json.loads(record.read_text())["doc"]["exit_code"] == 3


async def test_a_run_refused_for_its_settings_still_pings_through_the_configured_proxy(tmp_path, write):
    """A run that stops at its settings (exit 2) still pings at its end; the ping went direct, past the proxy
    BATCHGEN_PROXY names (a direct DNS lookup and connection where only the proxy may go)."""
    asked: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            asked.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        code, _, stderr = await cli(
            [
                *run_args(write("m.yaml", MANIFEST), tmp_path / "out", _Far()),
                "--api-base",
                "http://api.example.invalid",
            ],
            env=env(BATCHGEN_PROXY=f"http://127.0.0.1:{port}", BATCHGEN_PING="http://ping.example.invalid/p-token"),
        )
    finally:
        server.close()
    assert code == 2, stderr
    assert len(asked) == 1 and asked[0].startswith(b"GET http://ping.example.invalid/p-token/2 "), (asked, stderr)


async def test_review_serves_only_images_and_sidecars_never_a_page_the_ledger_credits(tmp_path):
    """The review server serves what the ledger credits; the ledger is data. A ledger crediting `x.html` or
    `x.svg` (planted, or a --name gone wrong) had it served as text/html or image/svg+xml from the review's
    origin: a script there reads the token from its own URL and decides for the reviewer."""
    from PIL import Image

    from batchgen.ledger import Ledger

    out = tmp_path / "out"
    out.mkdir()
    script = b"<script>fetch('/decide')</script>"
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>fetch("/decide")</script></svg>'
    with Ledger.open(out, "m.yaml") as ledger:
        for n, (name, data) in enumerate([("x.html", script), ("x.svg", svg), ("ok.png", None)]):
            ledger.start_submit(f"i{n}", {"model": "imagen4-ultra", "input": {"prompt": f"p{n}"}})
            ledger.submitted(f"i{n}", f"task-{n}")
            if data is None:
                Image.new("RGB", (8, 8)).save(out / name)
            else:
                (out / name).write_bytes(data)
            ledger.succeeded(f"i{n}", [name], ["0" * 64])
    proc = await start([sys.executable, "-m", "batchgen", "review", str(out)])
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        base, token = url.split("/?token=")
        kinds = {}
        async with aiohttp.ClientSession() as session:
            for name in ("x.html", "x.svg", "ok.png"):
                async with session.get(f"{base}/{name}", params={"token": token}) as response:
                    kinds[name] = (response.status, response.content_type)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    assert kinds["ok.png"] == (200, "image/png")
    assert kinds["x.html"][0] == 404 and kinds["x.svg"][0] == 404, kinds


async def test_a_reroll_with_no_seed_left_below_the_models_maximum_is_refused_before_paying(
    tmp_path, write, sim_factory
):
    """A rejected item whose seed is its model's maximum: --reroll crashed (exit 70, ValueError) for the card's
    2**63-1, and sent a seed past a smaller maximum. Now the item is not re-rolled (a warning) and the others are."""
    path = write(
        "m.yaml",
        "- id: fox\n  prompt: a fox\n  seed: 9223372036854775807\n- id: owl\n  prompt: an owl\n  seed: 5\n",
    )
    out = tmp_path / "out"
    async with sim_factory() as sim:
        await night_with_both_rejected(path, out, sim)
        code, _, err = await cli(run_args(path, out, sim, "--reroll"))
        assert code == 0, err
        assert "item 'fox': rejected, but" in err and "no seed is left" in err
        assert sim.stats.creates == 3  # owl's re-roll only
    doc = results(out)["items"]
    assert "rolls" not in doc["fox"] and len(doc["owl"]["rolls"]) == 2
    owl = manifest.load(path)[1]
    assert rolls.next_seed(owl, {"rolls": []}, set(), ceiling=6) == 6
    with pytest.raises(ValueError):
        rolls.next_seed(owl, {"rolls": [{"seed": 6}]}, set(), ceiling=6)  # a card's smaller maximum


NESTED = b'{"code":200,"data":' * 100_000 + b"1" + b"}" * 100_000


async def test_an_answer_nested_too_deep_is_a_service_error_never_a_crash():
    """JSON nested 100,000 deep raises RecursionError, not ValueError: the run ended in exit 70 (a bug) when a
    createTask or recordInfo answer (or its resultJson) was one. Now it is an answer that could not be read."""
    nested_result = json.dumps(
        {"code": 200, "data": {"taskId": "t1", "state": "success", "resultJson": NESTED.decode()}}
    ).encode()

    async def answer(request: web.Request) -> web.Response:
        body = nested_result if request.query.get("taskId") == "t1" else NESTED
        return web.Response(body=body, content_type="application/json")

    async with serve(answer) as base, client.open_session(Timeouts()) as session:
        api = client.Client(session, base, Secret(KEY), Timeouts())
        with pytest.raises(BatchgenError):
            await api.create_task({"model": "imagen4-ultra", "input": {"prompt": "x"}})
        with pytest.raises(BatchgenError):
            await api.record_info("t0")
        record = await api.record_info("t1")  # success, but its resultJson cannot be read
        assert record.result_urls == ()


async def test_state_files_nested_too_deep_never_crash_a_command(tmp_path, write, sim_factory):
    """The state files are data (a hostile folder, a tool gone wrong): decisions.jsonl, a sidecar, last-run.json
    and the journal nested past Python's recursion limit raised RecursionError (exit 70) in run, status and
    report. Each is now what it is: unreadable, skipped or rebuilt."""
    path = write("m.yaml", MANIFEST)
    out = tmp_path / "out"
    deep = b"[" * 3000 + b"]" * 3000
    async with sim_factory() as sim:
        code, _, err = await cli(run_args(path, out, sim, "--metadata", "sidecar"))
        assert code == 0, err
        state = out / ".batchgen"
        (state / "decisions.jsonl").write_bytes(deep + b"\n")
        (out / "fox.png.json").write_bytes(deep)
        (state / "last-run.json").write_bytes(deep)
        for args in (["status", str(out)], ["report", str(out)], run_args(path, out, sim, "--reroll")[3:]):
            code, _, err = await cli([sys.executable, "-m", "batchgen", *args])
            assert code == 0 and "Traceback" not in err and "a bug in batchgen" not in err, (args, err)
        (out / "results.json").write_bytes(deep)  # damaged: rebuilt from the journal
        code, _, err = await cli(run_args(path, out, sim))
        assert code == 0 and "a bug in batchgen" not in err, err
        assert sim.stats.creates == 2
        with (state / "journal.jsonl").open("ab") as journal:
            journal.write(deep + b"\n")  # a damaged journal line: named, the run refused, nothing sent
        code, _, err = await cli(run_args(path, out, sim))
        assert code not in (0, 70) and "is damaged" in err and "a bug in batchgen" not in err, err
        assert sim.stats.creates == 2


async def test_limit_holding_back_a_reroll_is_incomplete(tmp_path, write, sim_factory):
    """--reroll --limit 1 with two rejected items: one re-roll is left, yet the run said exit 0, "every item
    succeeded" (a cron job would never know). Exit 5; the same command again does the other."""
    path = write("m.yaml", MANIFEST)
    out = tmp_path / "out"
    async with sim_factory() as sim:
        await night_with_both_rejected(path, out, sim)
        code, _, err = await cli(run_args(path, out, sim, "--reroll", "--limit", "1"))
        assert code == 5 and sim.stats.creates == 3, err
        code, _, err = await cli(run_args(path, out, sim, "--reroll", "--limit", "1"))
        assert code == 0 and sim.stats.creates == 4, err


async def test_a_task_id_too_long_to_query_is_not_left_submitted_for_ever(tmp_path, write):
    async def create(request: web.Request) -> web.Response:
        return web.json_response({"code": 200, "msg": "ok", "data": {"taskId": "t" * 20_000}})

    app = web.Application()
    app.router.add_post("/api/v1/jobs/createTask", create)
    path = write("m.yaml", "- id: fox\n  prompt: a fox\n")
    async with serve(app) as base:
        code, _, err = await cli([*run_args(path, tmp_path / "out", base), "--max-runtime", "2"])
    fox = results(tmp_path / "out")["items"]["fox"]
    assert fox["state"] == "failed" and code == 1, (code, fox["state"], err[-500:])
    assert fox["error"]["kind"] == "bad_task_id" and fox["paid"] == 1 and "t" * 100 not in err
