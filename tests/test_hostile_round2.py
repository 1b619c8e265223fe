"""The second hostile round (issue 19's merge): the hook guard, the streamed key file, the descriptor check of a
file that must lie inside its folder, and the typed readers of a record's optional fields — attacked as a
hostile user, a misbehaving service and a hostile file system would, with real processes and real files."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from batchgen import config, endactions, files, finish
from batchgen.errors import UsageError
from batchgen.progress import Reporter

from .helpers import (
    BATCHGEN,
    a_ledger,
    a_summary,
    batchgen,
    capped,
    cli,
    env,
    make_settings,
    manifest_of,
    no_traceback,
    outlived,
    results,
    run,
    run_args,
)


async def _at_end(tmp_path: Path, *hooks: tuple[str, ...]) -> str:
    """The end actions with `hooks`, run as batchgen runs them; their log."""
    bounds = endactions.Bounds(total=20.0, after_signal=5.0, grace=1.0, ping=1.0)
    actions = endactions.EndActions(hooks=hooks, bounds=bounds)
    with (tmp_path / "log").open("w") as stream:
        await asyncio.to_thread(finish.at_end, actions, a_summary(tmp_path), Reporter(stream=stream, progress=False))
    return (tmp_path / "log").read_text()


# ---------------------------------------------------------------- the hook guard


PLANTED = "open({marker!r}, 'w').write('ran')\n"


@pytest.mark.parametrize("planted", ["batchgen.py", "batchgen/__init__.py"])
async def test_a_batchgen_module_in_the_working_folder_never_runs_in_the_hook_guards_place(
    tmp_path, monkeypatch, planted
):
    # `python -m batchgen.hookguard` looks in the working folder first: a user's wrapper script `batchgen.py` (or
    # a planted one) ran in the guard's place — its code executed, and the hook itself never ran.
    work = tmp_path / "work"
    (work / planted).parent.mkdir(parents=True, exist_ok=True)
    (work / planted).write_text(PLANTED.format(marker=str(tmp_path / "planted-ran")))
    if planted.startswith("batchgen/"):
        (work / "batchgen" / "hookguard.py").write_text(PLANTED.format(marker=str(tmp_path / "planted-ran")))
    monkeypatch.chdir(work)
    hook = (sys.executable, "-c", f"open({str(tmp_path / 'hook-ran')!r}, 'w').write('ran')")
    log = await _at_end(tmp_path, hook)
    assert not (tmp_path / "planted-ran").exists(), log
    assert (tmp_path / "hook-ran").read_text() == "ran", log
    assert "--on-finish hook 1 (python" in log and ": exit 0" in log


# ---------------------------------------------------------------- the key file


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "key"
    os.mkfifo(path)
    return path


def test_a_key_file_that_is_a_fifo_nobody_writes_is_a_clear_error_not_a_run_that_waits_for_ever(tmp_path, monkeypatch):
    # The key file is read as a stream (`<(pass show key)`); it was opened blocking, so a FIFO with no writer
    # held the night before it began, for ever, with no word said.
    monkeypatch.setattr(config, "KEY_FILE_WAIT", 0.3)
    fifo = _fifo(tmp_path)
    outcome: list[BaseException] = []
    reader = threading.Thread(target=lambda: outcome.append(_refusal(str(fifo))), daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # free the blocked reader, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(10)
        pytest.fail("the key file's read waited for a writer that never came")
    assert f"--api-key-file {fifo}: cannot read it: nothing came to its end within 0.3 s" in str(outcome[0])


def test_a_key_pipe_whose_writer_never_ends_is_a_clear_error_and_one_that_ends_gives_the_key(tmp_path):
    fifo = _fifo(tmp_path)
    writer = subprocess.Popen(["sh", "-c", f"exec > {fifo}; printf 'sk-held\\n'; exec sleep 30"])  # never ends
    try:
        with pytest.raises(files.Silent, match=r"within 0\.5 s"):
            files.read_file(fifo, config.KEY_FILE_LIMIT, stream=True, wait=0.5)
    finally:
        writer.kill()
        writer.wait()
    read, write = os.pipe()
    os.write(write, b"sk-from-a-pipe\n")
    os.close(write)
    try:
        assert files.read_file(f"/dev/fd/{read}", 64, stream=True, wait=5)[0] == b"sk-from-a-pipe\n"
    finally:
        os.close(read)
    with pytest.raises(files.TooLarge):
        files.read_file("/dev/zero", config.KEY_FILE_LIMIT, stream=True, wait=5)


def _refusal(key_file: str) -> BaseException:
    try:
        config.read_key({}, key_file, [])
    except UsageError as exc:
        return exc
    return AssertionError("no refusal")


# ---------------------------------------------------------------- a file that must lie inside its folder


def test_a_file_that_must_be_inside_its_folder_and_opens_as_a_pipe_is_refused_not_a_traceback(tmp_path):
    # A wildcard file swapped for a link to /dev/stdin (a pipe under cron) between the name check and the open:
    # the descriptor's path is "pipe:[N]", which commonpath refused with a ValueError — exit 70.
    read, write = os.pipe()
    try:
        (tmp_path / "colors.txt").symlink_to(f"/proc/self/fd/{read}")
        said = files.read_bounded(tmp_path / "colors.txt", 1000, "colors.txt", within=tmp_path)
        assert said == "cannot read colors.txt: it is outside the folder it must be in"
    finally:
        os.close(read)
        os.close(write)


# ---------------------------------------------------------------- a hand-edited results.json


@pytest.mark.parametrize(
    "edit",
    [
        {"roll": {}},  # an open re-roll with no number: the run that finished it raised KeyError 'n'
        {"roll": {"n": 2, "keep": 5}},  # zip over an int
        {"roll": {"n": 2, "keep": [5]}},  # a name that is an int
        {"cost": 5},  # status: `"consumeCredits" in 5`
        {"cost": {"consumeCredits": "x"}},  # status: 0.0 + "x"
        {"reroll_failed": 5},
        {"rolls": [{"n": "x", "files": ["item-00.png"]}]},
    ],
    ids=["roll-empty", "keep-int", "keep-list-of-int", "cost-int", "cost-text", "reroll-failed-int", "roll-n-text"],
)
async def test_odd_optional_fields_in_a_hand_edited_ledger_are_damage_never_a_traceback(sim_factory, tmp_path, edit):
    out = tmp_path / "out"
    path = manifest_of(tmp_path / "m.yaml", ["an owl"])
    async with sim_factory() as sim:
        assert (await run(make_settings(path, out, sim))).exit_code == 0
        doc = results(out)
        doc["items"]["item-00"].update(edit)
        (out / "results.json").write_text(json.dumps(doc))
        for name in ("previous.json", "previous-journal.jsonl", "journal.jsonl"):
            (out / ".batchgen" / name).unlink(missing_ok=True)  # nothing to rebuild it from: refused, not read
        for command in (["status", str(out)], ["report", str(out)]):
            proc = batchgen(*command, extra_env=env())
            no_traceback(proc)
            assert proc.returncode == 2, proc.stderr
            assert "results.json: item 'item-00' is damaged" in proc.stderr
        code, _, stderr = await cli(run_args(path, out, sim))
        assert code == 2 and "results.json: item 'item-00' is damaged" in stderr and "Traceback" not in stderr
        assert sim.stats.create_calls == 1


# ---------------------------------------------------------------- planted state files


@pytest.mark.parametrize("service", ["http://a]b", "http://h:port"])
@pytest.mark.parametrize("where", ["remembered", "services.json"])
def test_status_with_a_planted_service_name_urlsplit_refuses_is_not_a_traceback(tmp_path, service, where):
    # status of a DIR without services.json shows every remembered service; a state file naming one that
    # urlsplit refuses (ValueError: Invalid IPv6 URL, or a port that is no number) stopped status with exit 70.
    out = a_ledger(tmp_path / "out")
    if where == "services.json":
        (out / ".batchgen" / "services.json").write_text(json.dumps([service, "http://127.0.0.1:8080"]))
    else:
        document = {"version": 2, "service": service, "saved_at": 1.0, "create_rate": None, "models": {}}
        (out / ".batchgen" / "service-0123456789abcdef.json").write_text(json.dumps(document))
    proc = batchgen("status", str(out), extra_env=env(XDG_STATE_HOME=str(tmp_path / "state")))
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert service not in proc.stdout


def _cores_allowed() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


async def test_a_hook_that_dumps_core_leaves_no_core_of_the_guard_in_the_working_folder(tmp_path):
    # The guard ends as its hook ended: a hook's SIGABRT made the guard kill itself with SIGABRT too, and where
    # cores are on, a core of the guard's Python landed in batchgen's working folder on every such night.
    if Path("/proc/sys/kernel/core_pattern").read_text().strip() not in ("core", "core.%p"):
        pytest.skip("cores are not written as ./core here")
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    path = manifest_of(work / "m.yaml", ["an owl"])
    abort = f"import os; os.chdir({str(elsewhere)!r}); os.abort()"  # the hook's own core, if any, goes elsewhere
    proc = await asyncio.create_subprocess_exec(
        *BATCHGEN, "run", str(path), "--out", str(work / "out"), "--simulate", "--no-progress",
        "--on-finish", f"{sys.executable} -c {shlex.quote(abort)}",
        cwd=work, env=env(), preexec_fn=_cores_allowed,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    assert "--on-finish hook 1 (python" in stderr.decode() and f"exit -{signal.SIGABRT}" in stderr.decode()
    assert not [p.name for p in work.iterdir() if p.name.startswith("core")]


@pytest.mark.parametrize("planted", ["+Inf", "NaN", "99999999999", "-5"])
def test_a_last_success_that_is_no_past_time_is_not_carried_over_by_a_failing_night(tmp_path, planted):
    # The metrics file's last success is carried over by a night that did not finish its work, so that a night
    # that keeps failing shows as stale. +Inf, NaN or a time in the year 5138 (a hand-edited or planted file)
    # was carried on for ever: the staleness alert could never fire.
    metrics = tmp_path / "batchgen.prom"
    metrics.write_text(f'batchgen_last_success_timestamp{{manifest="m.yaml"}} {planted}\n')
    manifest = manifest_of(tmp_path / "m.yaml", ["a"])
    args = ["run", str(manifest), "--out", str(tmp_path / "out"), "--api-base", "http://127.0.0.1:9"]
    proc = batchgen(*args, "--metrics-file", str(metrics), "--limit", "-1")  # a flag error: exit 2
    assert proc.returncode == 2, proc.stderr
    no_traceback(proc)
    text = metrics.read_text()
    assert "batchgen_last_run_exit_code" in text and "batchgen_last_success_timestamp" not in text


def _page_data(out: Path) -> Any:
    """The contact sheet's data block, parsed as strictly as the browser's JSON.parse (no NaN, no Infinity)."""
    page = (out / "index.html").read_text()
    block = page.split('<script type="application/json" id="sheet-data">')[1].split("</script>")[0]

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(block, parse_constant=refuse)


@pytest.mark.parametrize("planted", ["figures", "fifo"])
def test_a_planted_last_run_file_never_blanks_or_holds_the_contact_sheet(tmp_path, planted):
    # .batchgen/last-run.json was read whole and unchecked: NaN or Infinity in it went into the page's data, which
    # JSON.parse refuses (the page showed no card at all), and a FIFO there held `report` for ever.
    out = a_ledger(tmp_path / "out")
    last = out / ".batchgen" / "last-run.json"
    if planted == "fifo":
        os.mkfifo(last)
    else:
        last.write_text('{"seconds": NaN, "paid_creates": Infinity, "retries": 2}')
    try:
        proc = batchgen("report", str(out))
    except subprocess.TimeoutExpired:
        os.close(os.open(last, os.O_WRONLY | os.O_NONBLOCK))  # let the blocked reader go
        pytest.fail("report waited on a FIFO planted as last-run.json")
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    data = _page_data(out)
    assert data["run"] == (None if planted == "fifo" else {"retries": 2})


@pytest.mark.parametrize("planted", ["results.json", ".batchgen/journal.jsonl", "results.json -> /dev/zero"])
async def test_a_fifo_or_device_planted_as_a_ledger_file_is_refused_never_waited_on(sim_factory, tmp_path, planted):
    # results.json and the journal were read with Path.read_bytes: a FIFO there held status, report and run for
    # ever; a link to /dev/zero read until the memory was gone.
    out = tmp_path / "out"
    path = manifest_of(tmp_path / "m.yaml", ["an owl"])
    async with sim_factory() as sim:
        assert (await run(make_settings(path, out, sim))).exit_code == 0
        name = planted.split(" ")[0]
        (out / name).unlink()
        if "->" in planted:
            (out / name).symlink_to("/dev/zero")
        else:
            os.mkfifo(out / name)
        for args in (["status", str(out)], ["report", str(out)], run_args(path, out, sim)[len(BATCHGEN) :]):
            proc = await asyncio.create_subprocess_exec(
                *BATCHGEN, *args, env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, preexec_fn=capped,
            )  # fmt: skip
            try:
                _, stderr = await asyncio.wait_for(proc.communicate(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                pytest.fail(f"{args[0]} waited on a {planted} for ever")
            assert proc.returncode == 2, stderr.decode()
            assert f"cannot read {out / name}: not a regular file" in stderr.decode()
        assert sim.stats.create_calls == 1


@pytest.mark.parametrize("redirect", ["</dev/null >/dev/null 2>&1", "", "setsid"])
async def test_what_a_hook_leaves_running_in_the_background_ends_when_the_hook_ends(tmp_path, redirect):
    # A hook that starts a job in the background and exits 0 (`rsync … &`): the guard ends the group only when
    # batchgen dies, and batchgen only at the bound, so a job with its own stdio worked on in DIR after the lock
    # was released; one that kept the hook's stderr made the hook look hung: cut at the bound, the time all used.
    marker = tmp_path / "job-pid"
    script = tmp_path / "hook.sh"
    # setsid: a job in a session of its own is in no group the guard or batchgen can kill; it went on for ever.
    job = "setsid sleep 600 </dev/null >/dev/null 2>&1" if redirect == "setsid" else f"sleep 600 {redirect}"
    script.write_text(f"#!/bin/sh\n{job} &\necho $! > {marker}\nexit 0\n", "utf-8")
    script.chmod(0o755)
    log = await _at_end(tmp_path, (str(script),))
    assert "--on-finish hook 1 (hook.sh): exit 0" in log
    job = int(marker.read_text())
    await outlived(job, 10, "the hook's background job outlived the end of the run")


async def test_a_daemon_a_hook_double_forks_ends_with_the_hook(tmp_path):
    # The classic daemon: fork, setsid, fork again, the middle process exits. Its orphan went to init, in a session
    # of its own: no group kill reached it. The guard is a child subreaper: the orphan comes back to it, and goes.
    marker = tmp_path / "daemon-pid"
    daemon = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        open({str(marker)!r}, 'w').write(str(os.getpid()))\n"
        "        time.sleep(600)\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        f"while not os.path.exists({str(marker)!r}): time.sleep(0.01)\n"
    )
    log = await _at_end(tmp_path, (sys.executable, "-c", daemon))
    assert "--on-finish hook 1 (python" in log and "exit 0" in log
    await outlived(int(marker.read_text()), 10, "the hook's daemon outlived the end of the run")
