"""Learned state that lies: the remembered-service file read like every other input (a FIFO, a link to
/dev/zero), absurd or misread values, --forget-service with nothing to do, and `status` naming only the services
DIR used. Real subprocesses with a deadline, against the simulator on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import pytest

from batchgen import memory

from .helpers import env, manifest_of, run_args, start

DEADLINE = 60.0  # seconds: a run that hangs on its state file fails here instead of holding the suite


async def finish(args: list[str], **kw) -> tuple[int, str]:
    proc = await start(args, **kw)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), DEADLINE)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{args[3]} hung on the remembered-service file")
    return proc.returncode or 0, err.decode()


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "huge"])
async def test_a_fifo_or_a_device_as_the_remembered_service_neither_hangs_nor_eats_memory(sim_factory, tmp_path, kind):
    state = tmp_path / "state"
    path = manifest_of(tmp_path / "m.yaml", ["a lighthouse", "a harbour"])
    async with sim_factory() as sim:
        planted = memory.path_for(state / "batchgen", sim.api_url)
        planted.parent.mkdir(parents=True)
        if kind == "fifo":
            os.mkfifo(planted)
        elif kind == "dev_zero":
            planted.symlink_to("/dev/zero")
        else:
            planted.write_bytes(b"[" * (memory.MAX_BYTES * 4))
        out = tmp_path / "out"
        code, err = await finish(run_args(path, out, sim), env=env(XDG_STATE_HOME=str(state)))
        assert code == 0, err
        assert "Traceback" not in err
        # The run kept what it learned, in place of the planted thing (a regular file now).
        assert planted.is_file() and not planted.is_symlink()
        assert memory.load(planted.parent, sim.api_url, "imagen4-ultra") is not None
        # `status` reads it too: plant it again, then ask.
        planted.unlink()
        if kind == "fifo":
            os.mkfifo(planted)
        else:
            planted.symlink_to("/dev/zero")
        code, err = await finish(
            [sys.executable, "-m", "batchgen", "status", str(out)],
            env=env(XDG_STATE_HOME=str(state)),
        )
        assert code == 0 and "Traceback" not in err


async def one_night(sim, tmp_path: Path, *flags: str) -> Path:
    """One item run to its end against `sim`, remembering in tmp_path/state; DIR (tmp_path/out)."""
    path = manifest_of(tmp_path / "m.yaml", ["a lighthouse"])
    out = tmp_path / "out"
    code, err = await finish(run_args(path, out, sim, *flags), env=env(XDG_STATE_HOME=str(tmp_path / "state")))
    assert code == 0, err
    return out


async def status_of(out: Path, tmp_path: Path, *flags: str) -> str:
    """`batchgen status DIR` with the state folder of one_night."""
    proc = await start(
        [sys.executable, "-m", "batchgen", "status", str(out), *flags], env=env(XDG_STATE_HOME=str(tmp_path / "state"))
    )
    stdout, _ = await asyncio.wait_for(proc.communicate(), DEADLINE)
    return stdout.decode()


def absurd(api: str, p: float) -> dict:
    now = time.time()
    return {
        "version": memory.VERSION,
        "service": memory.service_of(api),
        "saved_at": now,
        "create_rate": None,
        "models": {
            "imagen4-ultra": {
                "capacity": None,
                "latency": {"p05": p, "p50": p, "p95": p, "n": 50, "learned_from": "complete_time", "learned_at": now},
            }
        },
    }


async def test_absurd_remembered_latencies_do_not_stall_the_night(sim_factory, tmp_path):
    """Quantiles of 1e8 s (clamped to --task-timeout): today's first tasks, probed, overrule them."""
    state = tmp_path / "state"
    path = manifest_of(tmp_path / "m.yaml", [f"p{n}" for n in range(6)])
    async with sim_factory(latency=0.2, jitter=0.05) as sim:
        planted = memory.path_for(state / "batchgen", sim.api_url)
        planted.parent.mkdir(parents=True)
        planted.write_text(json.dumps(absurd(sim.api_url, 1e8)))
        # --poll-interval 0.05 (as the helper sets): the unconfirmed memory is probed from 0.6 s at most.
        args = run_args(path, tmp_path / "out", sim, "--task-timeout", "30", "-v")
        code, err = await finish(args, env=env(XDG_STATE_HOME=str(state)))
        assert code == 0, err[-2000:]
        assert "remembered service loaded" in err
        assert "contradicted the remembered latencies" in err
        kept = json.loads(planted.read_text())["models"]["imagen4-ultra"]["latency"]
        assert kept["p95"] < 5  # this run's own, not yesterday's absurdity re-saved


async def test_a_resumed_task_does_not_teach_its_age_as_latency(sim_factory, tmp_path):
    """Last night's leftovers (created a day ago by the service's clock, no completeTime) are fetched; the
    remembered latency is not a day."""
    state = tmp_path / "state"
    path = manifest_of(tmp_path / "m.yaml", [f"p{n}" for n in range(6)])
    async with sim_factory(latency=0.2, jitter=0.05, create_time_offset=86400.0) as sim:
        out = tmp_path / "out"
        # First night: stopped right after creating (--max-runtime), the tasks stay submitted.
        code, err = await finish(run_args(path, out, sim, "--task-timeout", "0.01"), env=env(XDG_STATE_HOME=str(state)))
        assert code == 5, err[-2000:]
        planted = memory.path_for(state / "batchgen", sim.api_url)
        if planted.exists():
            planted.unlink()
        code, err = await finish(run_args(path, out, sim), env=env(XDG_STATE_HOME=str(state)))
        assert code == 0, err[-2000:]
        kept = json.loads(planted.read_text()) if planted.exists() else None
        latency = (kept or {}).get("models", {}).get("imagen4-ultra", {}).get("latency")
        assert latency is None or latency["p95"] < 3600  # resumed tasks taught nothing (never a day)


async def test_forget_service_forgets_also_when_dir_has_nothing_left_to_do(sim_factory, tmp_path):
    state = tmp_path / "state"
    path = manifest_of(tmp_path / "m.yaml", ["a lighthouse"])
    async with sim_factory() as sim:
        out = tmp_path / "out"
        code, err = await finish(run_args(path, out, sim), env=env(XDG_STATE_HOME=str(state)))
        assert code == 0, err
        kept = memory.path_for(state / "batchgen", sim.api_url)
        assert kept.exists()
        code, err = await finish(run_args(path, out, sim, "--forget-service"), env=env(XDG_STATE_HOME=str(state)))
        assert code == 0, err
        assert not kept.exists()  # nothing to do, and forgotten all the same
        assert "--forget-service: forgot" in err


async def test_status_shows_only_the_services_this_dir_used(sim_factory, tmp_path):
    folder = tmp_path / "state" / "batchgen"
    folder.mkdir(parents=True)
    stranger = "https://elsewhere.example.com"
    (memory.path_for(folder, stranger)).write_text(json.dumps(absurd(stranger, 30.0)))
    async with sim_factory() as sim:
        out = await one_night(sim, tmp_path)
        doc = json.loads(await status_of(out, tmp_path, "--json"))
        assert [s["service"] for s in doc["services"]] == [sim.api_url] and doc["services_used_unknown"] is False


async def test_status_of_a_dir_whose_last_run_predates_the_services_list_shows_every_remembered_one(
    sim_factory, tmp_path
):
    """A DIR last run by an older batchgen has no services.json: `status` shows what is remembered, and says it
    cannot tell which of the services DIR used, instead of showing nothing until the next run."""
    async with sim_factory() as sim:
        out = await one_night(sim, tmp_path)
    (out / ".batchgen" / memory.USED).unlink()  # as an older batchgen left it
    doc = json.loads(await status_of(out, tmp_path, "--json"))
    assert [s["service"] for s in doc["services"]] == [sim.api_url] and doc["services_used_unknown"] is True
    text = await status_of(out, tmp_path)
    assert "every remembered service is shown" in text and f"remembered {sim.api_url}" in text


async def test_a_simulated_night_leaves_status_sure_which_services_dir_used(tmp_path):
    """A --simulate run learns nothing and used no service, but it is not a run that predates the note: `status`
    shows no remembered service (not every one in the state folder) and does not say it cannot tell."""
    state = tmp_path / "state" / "batchgen"
    state.mkdir(parents=True)
    stranger = "https://elsewhere.example.com"
    memory.path_for(state, stranger).write_text(json.dumps(absurd(stranger, 30.0)))
    path = manifest_of(tmp_path / "m.yaml", ["a lighthouse"])
    out = tmp_path / "out"
    xdg = env(XDG_STATE_HOME=str(tmp_path / "state"))
    code, err = await finish(
        [sys.executable, "-m", "batchgen", "run", str(path), "--out", str(out), "--simulate"],
        env=xdg,
    )
    assert code == 0, err
    proc = await start([sys.executable, "-m", "batchgen", "status", str(out), "--json"], env=xdg)
    stdout, _ = await asyncio.wait_for(proc.communicate(), DEADLINE)
    doc = json.loads(stdout)
    assert doc["services"] == [] and doc["services_used_unknown"] is False


def test_planted_service_names_in_services_json_are_no_services(tmp_path):
    """`http://a]b` and `http://h:port` make urlsplit raise: --forget-service and status read the list through
    memory.used, which keeps only names as a run keeps them."""
    out = tmp_path / "out"
    (out / ".batchgen").mkdir(parents=True)
    (out / ".batchgen" / memory.USED).write_text(json.dumps(["http://a]b", "http://h:port", "https://ok.example"]))
    assert memory.used(out) == ["https://ok.example"]
    assert memory.forget_all({"XDG_STATE_HOME": str(tmp_path / "x")}, out, "") == []


def test_memory_reader_refuses_what_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert memory.read_document(fifo) is None  # no hang: opened without blocking, then refused
    link = tmp_path / "zero"
    link.symlink_to("/dev/zero")
    assert memory.read_document(link) is None
    target = tmp_path / "real.json"
    target.write_text("{}")
    (tmp_path / "link.json").symlink_to(target)
    assert memory.read_document(tmp_path / "link.json") is None  # never through a link
    assert memory.read_document(Path(target)) == {}


def test_status_shows_planted_names_escaped(tmp_path):
    """A state folder someone wrote into: a model name with an escape sequence and a bidi override, and a
    service name with a newline, reach `status` as one harmless line each."""
    out = tmp_path / "out"
    (out / ".batchgen").mkdir(parents=True)
    service = "https://api.example.com/\x1b]0;owned\x07x"
    (out / ".batchgen" / memory.USED).write_text(json.dumps([service]))
    doc = absurd(service, 30.0)
    doc["models"]["evil\x1b[2J\u202emodel"] = doc["models"].pop("imagen4-ultra")
    folder = tmp_path / "xdg" / "batchgen"
    folder.mkdir(parents=True)
    memory.path_for(folder, service).write_text(json.dumps(doc))
    entries = memory.describe({"XDG_STATE_HOME": str(tmp_path / "xdg")}, out, memory.used(out))
    text = memory.describe_text(entries)
    assert entries and "\x1b" not in text and "\u202e" not in text and "\x07" not in text
    assert text.count("\n") == len(entries) - 1
    # shown as escapes a person can read (escapes.inert_line), as every outside name is, not as `?`s
    assert "api.example.com/\\x1b]0;owned\\x07x" in text and "evil\\x1b[2J\\u202emodel" in text
