"""`batchgen run` as a user runs it: a real subprocess, real signals, against the simulator on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys

import pytest

from batchgen import ledger, manifest

from .helpers import BATCHGEN, KEY, ROOT, check_directory, cli, env, finish, manifest_of, run_args, start, until


async def test_run_non_tty_output_is_plain_lines_with_a_summary(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a", "b", "c"])
    async with sim_factory(api_key=KEY) as sim:
        code, stdout, stderr = await cli(run_args(path, tmp_path / "out", sim))
    assert code == 0, stderr
    assert "\r" not in stderr and "\r" not in stdout
    assert "3 succeeded, 0 failed, 0 submitted, 0 pending" in stderr
    assert KEY not in stderr + stdout


async def test_json_log_format_is_one_object_per_line(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a", "b [sim:fail-policy]"])
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        code, _, stderr = await cli(run_args(path, tmp_path / "out", sim, "--log-format", "json"))
    assert code == 1
    records = [json.loads(line) for line in stderr.splitlines()]
    summary = [r for r in records if r.get("event") == "summary"]
    assert len(summary) == 1 and summary[0]["exit_code"] == 1 and summary[0]["paid_creates"] == 2
    assert any(r["level"] == "warning" and r.get("item") == "item-01" for r in records)


async def test_manifest_errors_exit_2_and_submit_nothing(sim_factory, tmp_path):
    async with sim_factory(api_key=KEY) as sim:
        code, _, stderr = await cli(run_args(ROOT / "sample_manifests" / "invalid.yaml", tmp_path / "out", sim))
        assert code == 2 and sim.stats.create_calls == 0
    assert "item 'bad-seed': seed: expected an integer >= 1, got 0" in stderr
    assert "nothing was submitted" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


async def test_plain_http_to_a_remote_host_is_refused_with_exit_2(tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a"])
    code, _, stderr = await cli(
        [*BATCHGEN, "run", str(path), "--out", str(tmp_path / "o"), "--api-base", "http://api.example.com"]
    )
    assert code == 2 and "refusing to send the API key over plain http" in stderr


async def test_missing_key_is_a_usage_error(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a"])
    async with sim_factory() as sim:
        code, _, stderr = await cli(run_args(path, tmp_path / "out", sim), env={**env(), "BATCHGEN_API_KEY": ""})
    assert code == 2 and "no API key" in stderr


async def test_dry_run_contacts_nothing_and_counts_against_the_ledger(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a", "b", "c [sim:fail-policy]"])
    out = tmp_path / "out"
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        assert (await cli(run_args(path, out, sim)))[0] == 1
        manifest_of(tmp_path / "m.yaml", ["a", "b changed", "c [sim:fail-policy]", "d", "e"])
        calls = sim.stats.create_calls + sim.stats.polls
        code, stdout, _ = await cli(run_args(path, out, sim, "--dry-run"))
        assert sim.stats.create_calls + sim.stats.polls == calls
    assert code == 0
    assert "would submit 3: 2 new, 1 changed, 0 failed to retry" in stdout
    assert "already done 1; failed and left alone 1 (use --retry-failed)" in stdout


async def test_a_second_run_on_the_same_directory_exits_4(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a"])
    out = tmp_path / "out"
    async with sim_factory(api_key=KEY) as sim:
        with ledger.Ledger.open(out, "m.yaml"):
            code, _, stderr = await cli(run_args(path, out, sim))
        assert code == 4 and f"(pid {os.getpid()})" in stderr
        assert sim.stats.create_calls == 0


async def test_two_concurrent_runs_one_exits_4(sim_factory, tmp_path):
    # The first run is held open by construction: its task stays `generating` until the simulator is told.
    path = manifest_of(tmp_path / "m.yaml", ["a [sim:hold]", "b"])
    out = tmp_path / "out"
    async with sim_factory(api_key=KEY) as sim:
        first = await start(run_args(path, out, sim))
        await until(lambda: sim.stats.creates > 0)  # the lock is taken before any create
        code, _, stderr = await cli(run_args(path, out, sim))
        assert code == 4 and "in use by another batchgen run" in stderr
        assert sim.release() == 1
        assert (await finish(first))[0] == 0
        assert sim.stats.creates == 2


@pytest.mark.parametrize(("signum", "expected"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
async def test_a_signal_stops_the_run_with_its_code_and_resume_does_not_pay_again(
    sim_factory, tmp_path, signum, expected
):
    # Four held tasks never finish until released: a run that exits on the signal has proven it did not wait.
    path = manifest_of(tmp_path / "m.yaml", [*(f"p{n} [sim:hold]" for n in range(4)), "p4", "p5"])
    out = tmp_path / "out"
    async with sim_factory(api_key=KEY) as sim:
        proc = await start(run_args(path, out, sim, "--concurrency", "4"))

        def submitted() -> list[dict]:
            return [r for r in ledger.load(out).items.values() if r["state"] == "submitted" and r["task_id"]]

        await until(lambda: sim.stats.creates == 4 and len(submitted()) == 4)
        proc.send_signal(signum)
        code, _, stderr = await finish(proc)
        assert code == expected, stderr
        items = check_directory(out)
        assert sorted(r["request"]["input"]["prompt"] for r in items.values() if r["state"] == "submitted") == [
            f"p{n} [sim:hold]" for n in range(4)
        ]
        assert sim.release() == 4
        code, _, stderr = await cli(run_args(path, out, sim))
        assert code == 0, stderr
        assert sim.stats.creates == 6 and set(sim.stats.creates_by_request.values()) == {1}


async def test_max_runtime_saves_state_and_exits_5(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["quick", "held [sim:hold]"])
    out = tmp_path / "out"
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        code, _, stderr = await cli(run_args(path, out, sim, "--max-runtime", "1"))
        assert code == 5, stderr
        assert "--max-runtime 1 s reached" in stderr and "run the same command again to continue" in stderr
        held = check_directory(out)["item-01"]
        assert held["state"] == "submitted" and held["task_id"]  # saved with its task id, resumable
        assert sim.release() == 1
        code, _, stderr = await cli(run_args(path, out, sim))
        assert code == 0, stderr
        assert sim.stats.creates == 2  # the held task was polled by its id, not paid for again


@pytest.mark.slow
async def test_sigkill_at_random_moments_never_pays_twice_or_leaves_junk(sim_factory, tmp_path):
    prompts = [f"a picture number {n}" + (" [sim:fail-transient:1]" if n % 5 == 0 else "") for n in range(16)]
    path = manifest_of(tmp_path / "m.yaml", prompts)
    out = tmp_path / "out"
    moments = random.Random(20261126)
    async with sim_factory(api_key=KEY, latency=0.6, jitter=0.3, truncate_rate=0.1) as sim:
        killed = 0

        def events() -> int:
            return sim.stats.create_calls + sim.stats.polls + sim.stats.file_requests

        for _ in range(6):
            proc = await start(run_args(path, out, sim, "--concurrency", "4"))
            # Killed at a random event of the service's (a create, a status query, a download), not a random
            # time: however fast or slow the machine, the kill lands in the middle of the work.
            target = events() + moments.randint(1, 25)
            await until(lambda: events() >= target or proc.returncode is not None)  # noqa: B023 - awaited at once
            with contextlib.suppress(ProcessLookupError):  # it may have finished already
                proc.kill()
            killed += (await finish(proc))[0] == -signal.SIGKILL
            check_directory(out)  # valid ledger and whole images after every kill
        assert killed >= 3, "the runs finished before they could be killed: the test proves nothing"
        code, _, stderr = await cli(run_args(path, out, sim))
        assert code == 0, stderr
        items = check_directory(out)
        assert {r["state"] for r in items.values()} == {"succeeded"}
        for item in manifest.load(path):
            record = items[item.id]
            paid = sim.stats.creates_by_request[manifest.derive_id(item.canonical)]
            allowed = (2 if "fail-transient" in item.input["prompt"] else 1) + record.get("in_doubt", 0)
            assert paid <= allowed, (item.id, paid, record)
        assert not list((out / ".batchgen" / "tmp").glob("*"))


async def test_simulate_quick_start_works_offline(tmp_path):
    code, _, stderr = await cli(
        [
            sys.executable,
            "-m",
            "batchgen",
            "run",
            str(ROOT / "sample_manifests" / "demo.yaml"),
            "--out",
            str(tmp_path / "demo"),
            "--simulate",
        ],
        env={**env(), "BATCHGEN_API_KEY": ""},
    )
    assert code == 0, stderr
    assert len(list((tmp_path / "demo").glob("*.png"))) + len(list((tmp_path / "demo").glob("*.jpg"))) == 8
    code, stdout, _ = await cli([sys.executable, "-m", "batchgen", "status", str(tmp_path / "demo"), "--json"])
    assert code == 0 and json.loads(stdout)["counts"]["succeeded"] == 8


async def test_a_terminal_gets_a_tqdm_bar(sim_factory, tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    path = manifest_of(tmp_path / "m.yaml", ["a", "b"])
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a terminal 120 wide
    try:
        async with sim_factory(api_key=KEY, latency=0.8) as sim:
            proc = await asyncio.create_subprocess_exec(
                *run_args(path, tmp_path / "out", sim),
                env=env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=follower,
            )
            assert await asyncio.wait_for(proc.wait(), 30) == 0
        os.close(follower)
        follower = -1
        screen = b""
        with contextlib.suppress(OSError):  # EIO once the terminal has nothing more to read
            while chunk := os.read(leader, 65536):
                screen += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    text = screen.decode(errors="replace")
    assert "\r" in text and "2/2" in text and "img" in text
