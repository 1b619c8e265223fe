"""Review: decisions.jsonl (decisions.py), what status/report/run do with it, and the review server (review.py)
over real HTTP in a subprocess: its token, Host and Origin checks, the files it serves, and kills."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from batchgen import decisions, report, sheet
from batchgen.errors import UsageError
from batchgen.ledger import Ledger

from .helpers import cli, make_settings, manifest_of, results, run, start

# ---------------------------------------------------------------- decisions.jsonl


def _ledger(out: Path, n: int = 3) -> Path:
    """A real ledger of n succeeded items, each with one image, written through the Ledger API."""
    out.mkdir(parents=True, exist_ok=True)
    with Ledger.open(out, "m.yaml") as ledger:
        for k in range(n):
            item = f"item-{k:02d}"
            request = {"model": "imagen4-ultra", "input": {"prompt": f"prompt {k}", "seed": 7}}
            ledger.start_submit(item, request)
            ledger.submitted(item, f"task-{k}")
            Image.new("RGB", (16, 16), (k * 40 % 255, 90, 160)).save(out / f"{item}.png")
            ledger.succeeded(item, [f"{item}.png"], ["0" * 64])
    return out


def test_latest_decision_per_item_wins_and_only_for_the_task_judged(tmp_path):
    out = _ledger(tmp_path / "out")
    decisions.append(out, "item-00", "rejected", "task-0")
    decisions.append(out, "item-01", "approved", "task-1")
    decisions.append(out, "item-00", "approved", "task-0")
    decisions.append(out, "item-02", "rejected", "task-old")  # about an image generated again since
    decisions.append(out, "ghost", "rejected", None)  # not in the ledger
    held = decisions.current(out, report.read_ledger(out).items)
    assert {k: v.decision for k, v in held.items()} == {"item-00": "approved", "item-01": "approved"}
    assert stat_mode(decisions.path_of(out)) == 0o600
    with pytest.raises(ValueError):
        decisions.append(out, "item-00", "maybe", "task-0")  # type: ignore[arg-type]


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_torn_last_line_is_dropped_and_the_next_decision_stays_whole(tmp_path):
    out = _ledger(tmp_path / "out")
    decisions.append(out, "item-00", "approved", "task-0")
    with decisions.path_of(out).open("ab") as handle:  # a kill inside an append: half a line, no newline
        handle.write(b'{"id":"item-00","decision":"rejec')
    assert decisions.read_all(out)["item-00"].decision == "approved"
    decisions.append(out, "item-01", "rejected", "task-1")
    assert {k: v.decision for k, v in decisions.read_all(out).items()} == {
        "item-00": "approved",
        "item-01": "rejected",
    }
    garbage = b'[1]\n{"id": 5}\n{"id":"item-02","decision":"maybe","at":"x"}\nnot json\n'
    with decisions.path_of(out).open("ab") as handle:
        handle.write(garbage)
    assert set(decisions.read_all(out)) == {"item-00", "item-01"}


def test_two_writers_at_once_keep_every_line_whole(tmp_path):
    out = _ledger(tmp_path / "out")
    with ThreadPoolExecutor(max_workers=4) as pool:  # two review pages (or servers) appending together
        list(pool.map(lambda k: decisions.append(out, f"item-0{k % 3}", "rejected", f"task-{k % 3}"), range(400)))
    lines = decisions.path_of(out).read_bytes().splitlines()
    assert len(lines) == 400 and all(json.loads(line)["decision"] == "rejected" for line in lines)


def test_a_long_file_is_read_from_its_newest_part(tmp_path, monkeypatch):
    out = _ledger(tmp_path / "out")
    for k in range(200):
        decisions.append(out, "item-00", "rejected" if k % 2 else "approved", "task-0")
    monkeypatch.setattr(decisions, "MAX_BYTES", 1000)  # a bound, made small: the newest lines still win
    assert decisions.read_all(out)["item-00"].decision == "rejected"


def test_decisions_file_that_is_not_a_regular_file(tmp_path):
    out = _ledger(tmp_path / "out")
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"id":"item-00","decision":"rejected","at":"x","task_id":"task-0"}\n')
    decisions.path_of(out).symlink_to(secret)
    assert decisions.read_all(out) == {}  # never read through a link
    with pytest.raises(UsageError, match="symbolic link"):
        decisions.append(out, "item-00", "approved", "task-0")
    assert secret.read_text().count("\n") == 1  # never written through it either
    decisions.path_of(out).unlink()
    os.mkfifo(decisions.path_of(out))
    assert decisions.read_all(out) == {}  # a FIFO: no block, no read
    with pytest.raises(UsageError, match="not a regular file"):
        decisions.append(out, "item-00", "approved", "task-0")


async def test_run_status_and_report_read_decisions(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a calm sea", "a red kite", "an old lighthouse"], seed=7)
    out = tmp_path / "out"
    async with sim_factory() as sim:
        assert (await run(make_settings(path, out, sim))).exit_code == 0
        assert results(out)["version"] == 1  # nothing reviewed: still version 1
        doc = results(out)
        decisions.append(out, "item-00", "rejected", doc["items"]["item-00"]["task_id"])
        decisions.append(out, "item-01", "approved", doc["items"]["item-01"]["task_id"])
        assert (await run(make_settings(path, out, sim))).exit_code == 0  # a run copies them into the records
    doc = results(out)
    assert doc["version"] == 2
    assert {k: r.get("decision") for k, r in doc["items"].items()} == {
        "item-00": "rejected",
        "item-01": "approved",
        "item-02": None,
    }
    status = report.status(out)
    assert status["review"] == {
        "approved": 1,
        "rejected": 1,
        "undecided": 1,
        "rejected_ids": ["item-00"],
        "reroll_failed": [],
    }
    assert "review: 1 approved, 1 rejected, 1 undecided" in report.status_text(status)
    code, text, _ = await cli([sys.executable, "-m", "batchgen", "status", str(out), "--json"])
    assert code == 0 and json.loads(text)["review"]["rejected_ids"] == ["item-00"]
    data = sheet.page_data(out)
    assert {i["id"]: i.get("decision") for i in data["items"]} == {
        "item-00": "rejected",
        "item-01": "approved",
        "item-02": None,
    }
    assert "connect-src" not in sheet.page(data)  # the static page talks to nothing


def test_a_version_2_ledger_with_a_bad_decision_is_damaged_and_version_3_refused(tmp_path):
    out = _ledger(tmp_path / "out", 1)
    doc = results(out)
    doc["version"] = 2
    doc["items"]["item-00"]["decision"] = "approved"
    (out / "results.json").write_text(json.dumps(doc))
    assert report.read_ledger(out).items["item-00"].get("decision") == "approved"
    for bad in ({"rolls": 5}, {"rolls": [1]}, {"rolls": [{"files": [{}]}]}, {"roll": "x"}, {"decision": "maybe"}):
        damaged = json.loads(json.dumps(doc))
        damaged["items"]["item-00"].update(bad)
        (out / "results.json").write_text(json.dumps(damaged))
        loaded = report.read_ledger(out)  # rebuilt from the previous snapshot and journal, never a traceback
        assert loaded.damaged and ("roll" in loaded.damaged or "decision" in loaded.damaged), loaded.damaged
    doc["version"] = 3
    (out / "results.json").write_text(json.dumps(doc))
    with pytest.raises(Exception, match="version 3"):
        report.read_ledger(out)


# ---------------------------------------------------------------- the server, over real HTTP


class Server:
    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc, self.url = proc, url
        self.base, _, self.token = url.partition("/?token=")
        self.host = self.base.removeprefix("http://")


async def _serve(out: Path, *extra: str) -> Server:
    proc = await start([sys.executable, "-m", "batchgen", "review", str(out), *extra])
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
    assert line.startswith("http://127.0.0.1:") and "/?token=" in line, line
    return Server(proc, line)


async def _post(server: Server, body: object, **headers: str) -> tuple[int, str]:
    sent = {"X-Batchgen-Token": server.token, "Content-Type": "application/json", **headers}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.base}/decide", data=json.dumps(body), headers=sent) as response:
            return response.status, await response.text()


async def _get(server: Server, path: str, **headers: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.base}/{path}", headers=headers) as response:
            return response.status, await response.read()


async def test_token_host_and_origin_are_checked(tmp_path):
    out = _ledger(tmp_path / "out")
    server = await _serve(out)
    try:
        token = f"token={server.token}"
        assert (await _get(server, f"?{token}"))[0] == 200
        assert (await _get(server, ""))[0] == 403  # no token
        assert (await _get(server, "?token=guess"))[0] == 403
        assert (await _get(server, f"item-00.png?{token}"))[0] == 200
        assert (await _get(server, "item-00.png"))[0] == 403
        # DNS rebinding: a page of evil.example whose name now points at 127.0.0.1 sends its own Host.
        port = server.host.rsplit(":", 1)[1]
        assert (await _get(server, f"?{token}", Host=f"evil.example:{port}"))[0] == 421
        assert (await _get(server, f"?{token}", Host=f"localhost:{port}"))[0] == 200
        decision = {"id": "item-00", "decision": "rejected"}
        assert (await _post(server, decision, **{"X-Batchgen-Token": "guess"}))[0] == 403
        assert (await _post(server, decision, Origin="http://evil.example"))[0] == 403
        assert (await _post(server, decision, Origin=f"http://{server.host}", **{"Sec-Fetch-Site": "cross-site"}))[
            0
        ] == 403
        assert (await _post(server, decision, **{"Content-Type": "text/plain"}))[0] == 415  # a simple CORS request
        assert (await _post(server, {"id": "ghost", "decision": "rejected"}))[0] == 404
        assert (await _post(server, {"id": "item-00", "decision": "maybe"}))[0] == 400
        assert decisions.read_all(out) == {}  # nothing refused was kept
        status, text = await _post(
            server, decision, Origin=f"http://{server.host}", **{"Sec-Fetch-Site": "same-origin"}
        )
        assert status == 200 and json.loads(text)["decision"] == "rejected"
        assert decisions.read_all(out)["item-00"].task_id == "task-0"
        async with aiohttp.ClientSession() as session:  # a state change by GET: refused
            async with session.get(f"{server.base}/decide?{token}") as response:
                assert response.status == 404
            async with session.put(f"{server.base}/decide?{token}") as response:
                assert response.status == 405
    finally:
        server.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(server.proc.wait(), 30) == 0


async def test_serves_only_files_the_ledger_credits(tmp_path):
    out = _ledger(tmp_path / "out", 2)
    (tmp_path / "secret.png").write_bytes(b"secret")
    (out / "notes.png").write_bytes(b"not credited")
    (out / "item-01.png").unlink()
    (out / "item-01.png").symlink_to(tmp_path / "secret.png")  # a credited name, now a link out of DIR
    server = await _serve(out)
    try:
        token = f"?token={server.token}"
        for path in (
            "results.json",
            "notes.png",
            ".batchgen/decisions.jsonl",
            "item-01.png",
            "../secret.png",
            "%2e%2e/secret.png",
            "index.html",
            ".batchgen/journal.jsonl",
        ):
            status, body = await _get(server, path + token)
            assert status in (404, 403) and b"secret" not in body, path
        status, body = await _get(server, "item-00.png" + token)
        assert status == 200 and body.startswith(b"\x89PNG")
    finally:
        server.proc.kill()
        await server.proc.wait()


async def test_a_ledger_damaged_while_serving_is_a_clear_answer(tmp_path):
    out = _ledger(tmp_path / "out", 1)
    server = await _serve(out)
    try:
        doc = results(out)
        doc["version"] = 99  # a newer batchgen wrote it meanwhile
        (out / "results.json").write_text(json.dumps(doc))
        status, body = await _get(server, f"?token={server.token}")
        assert status == 503 and b"version 99" in body
    finally:
        server.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(server.proc.wait(), 30) == 0
        assert server.proc.stderr is not None
        assert "Traceback" not in (await server.proc.stderr.read()).decode()


async def test_non_loopback_listen_needs_allow_remote(tmp_path):
    out = _ledger(tmp_path / "out", 1)
    code, _, err = await cli([sys.executable, "-m", "batchgen", "review", str(out), "--listen", "0.0.0.0:0"])
    assert code == 2 and "--allow-remote" in err
    code, _, err = await cli([sys.executable, "-m", "batchgen", "review", str(tmp_path / "none")])
    assert code == 2 and "no ledger" in err


async def test_allow_remote_says_so(tmp_path):
    out = _ledger(tmp_path / "out", 1)
    proc = await start(
        [sys.executable, "-m", "batchgen", "review", str(out), "--listen", "0.0.0.0:0", "--allow-remote"]
    )
    assert proc.stdout is not None and proc.stderr is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    assert line.startswith("http://0.0.0.0:")
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.wait(), 30)
    assert "reachable from other machines" in (await proc.stderr.read()).decode()


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
async def test_a_decision_answered_survives_a_kill(tmp_path, signum):
    out = _ledger(tmp_path / "out", 3)
    server = await _serve(out)
    for k, decision in enumerate(("rejected", "approved", "rejected")):
        status, _ = await _post(server, {"id": f"item-0{k}", "decision": decision})
        assert status == 200
    server.proc.send_signal(signum)  # the instant after the last 200
    await asyncio.wait_for(server.proc.wait(), 30)
    assert {k: v.decision for k, v in decisions.read_all(out).items()} == {
        "item-00": "rejected",
        "item-01": "approved",
        "item-02": "rejected",
    }
    # and a new server (a new token) goes on from them
    again = await _serve(out)
    try:
        assert again.token != server.token
        status, _ = await _post(again, {"id": "item-01", "decision": "rejected"})
        assert status == 200 and decisions.read_all(out)["item-01"].decision == "rejected"
    finally:
        again.proc.kill()
        await again.proc.wait()


async def test_review_works_while_a_run_holds_the_lock(tmp_path):
    out = _ledger(tmp_path / "out", 1)
    with Ledger.open(out, "m.yaml"):  # a run holding DIR's lock all night
        server = await _serve(out)
        try:
            assert (await _post(server, {"id": "item-00", "decision": "approved"}))[0] == 200
        finally:
            server.proc.kill()
            await server.proc.wait()
    assert decisions.read_all(out)["item-00"].decision == "approved"
