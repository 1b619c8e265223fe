"""The fourth hostile round: the hook guard as a child subreaper that ends a hook's whole process tree (from
/proc, through pidfds), and the mask of a short proxy password — attacked as a hostile hook, a hostile user and a
misbehaving system would, with real processes, real signals and real log lines."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shlex
import signal
import sys
from pathlib import Path

import pytest

from batchgen import endactions, finish
from batchgen.config import redact
from batchgen.progress import Reporter
from batchgen.proxies import resolve_proxy

from .helpers import KEY, a_summary, cli, manifest_of, outlived, process_ended, results, run_args, start, until
from .helpers import finish as finish_proc


async def _at_end(tmp_path: Path, *hooks: tuple[str, ...], total: float = 20.0) -> str:
    """The end actions with `hooks`, run as batchgen runs them; their log."""
    bounds = endactions.Bounds(total=total, after_signal=5.0, grace=1.0, ping=1.0)
    actions = endactions.EndActions(hooks=hooks, bounds=bounds)
    with (tmp_path / "log").open("w") as stream:
        await asyncio.to_thread(finish.at_end, actions, a_summary(tmp_path), Reporter(stream=stream, progress=False))
    return (tmp_path / "log").read_text()


def _pids(path: Path) -> list[int]:
    return [int(word) for word in path.read_text().split()] if path.exists() else []


def _ended(pid: int) -> bool:
    """process_ended, for a process that may go between its two looks (kill, then /proc)."""
    try:
        return process_ended(pid)
    except FileNotFoundError:
        return True


async def _all_ended(pids: list[int], deadline: float, what: str) -> None:
    try:
        await until(lambda: all(_ended(pid) for pid in pids), deadline=deadline, what=what)
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------- a job whose main thread has exited


# A daemon (setsid) whose main thread ends while another thread works on: /proc shows its leader as a zombie
# ("Z"), though the process runs. the tree walk took every "Z" for gone and skipped it — and all below it.
THREADED_DAEMON = (
    "import ctypes, os, threading, time\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    def work():\n"
    "        open({marker!r}, 'w').write(str(threading.get_native_id()))\n"
    "        while True: time.sleep(0.05)\n"
    "    threading.Thread(target=work).start()\n"
    "    ctypes.CDLL(None).pthread_exit(None)\n"
    "while not os.path.exists({marker!r}) or not open({marker!r}).read(): time.sleep(0.01)\n"
)


async def test_a_daemon_whose_main_thread_exited_ends_with_the_hook(tmp_path):
    marker = tmp_path / "worker-tid"
    log = await _at_end(tmp_path, (sys.executable, "-c", THREADED_DAEMON.format(marker=str(marker))))
    assert "exit 0" in log, log
    # the worker thread's id: kill(2) of it reaches its process; its /proc entry says whether it still runs
    await outlived(int(marker.read_text()), 10, "a daemon with only its main thread gone outlived its hook")


async def test_a_daemon_whose_main_thread_exited_ends_when_the_run_is_killed(sim_factory, tmp_path):
    marker = tmp_path / "worker-tid"
    daemon = THREADED_DAEMON.format(marker=str(marker)) + "import time; time.sleep(600)\n"
    hook = f"{sys.executable} -c {shlex.quote(daemon)}"
    path = manifest_of(tmp_path / "m.yaml", ["an owl"])
    async with sim_factory(api_key=KEY) as sim:
        proc = await start(run_args(path, tmp_path / "out", sim, "--on-finish", hook))
        await until(lambda: marker.exists() and marker.read_text(), deadline=60)
        proc.kill()
        await finish_proc(proc)
    await outlived(int(marker.read_text()), 15, "a daemon with only its main thread gone outlived its killed run")


# ---------------------------------------------------------------- a job that keeps starting workers

# A job in a session of its own that starts a worker every few milliseconds and finishes its work on SIGTERM
# (here: ignores it). The tree was signalled in one pass, children first: the workers it started between the
# walk of /proc and its own SIGKILL were left, reparented to init when the guard went, working on for ever.
SPAWNER = (
    "import os, signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "os.setsid()\n"
    "out = open({pids!r}, 'a')\n"
    "for _ in range(1500):\n"
    "    child = os.fork()\n"
    "    if child == 0:\n"
    "        os.execv('/bin/sleep', ['sleep', '600'])\n"
    "    out.write(f'{{child}} '); out.flush()\n"
    "    time.sleep(0.005)\n"
    "time.sleep(600)\n"
)


def _spawner_hook(tmp_path: Path, pids: Path) -> Path:
    script = tmp_path / "spawner.py"
    script.write_text(SPAWNER.format(pids=str(pids)))
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\ntrap '' TERM\n{sys.executable} {script} &\nwait\nsleep 600\n", "utf-8")
    hook.chmod(0o755)
    return hook


async def test_workers_a_job_starts_while_its_run_is_killed_end_too(sim_factory, tmp_path):
    pids = tmp_path / "pids"
    hook = _spawner_hook(tmp_path, pids)
    path = manifest_of(tmp_path / "m.yaml", ["an owl"])
    async with sim_factory(api_key=KEY) as sim:
        proc = await start(run_args(path, tmp_path / "out", sim, "--on-finish", str(hook)))
        await until(lambda: len(_pids(pids)) >= 30, deadline=60)
        proc.kill()
        await finish_proc(proc)
    await _all_ended_after_settling(pids, "a worker a job started as its run was killed outlived the run")


async def test_workers_a_job_starts_while_its_hook_is_cut_at_the_bound_end_too(tmp_path):
    pids = tmp_path / "pids"
    hook = _spawner_hook(tmp_path, pids)
    log = await _at_end(tmp_path, (str(hook),), total=3.0)
    assert "cut at the end-of-run time limit" in log, log
    await _all_ended_after_settling(pids, "a worker a job started as its hook was cut outlived the run")


async def _all_ended_after_settling(pids: Path, what: str) -> None:
    """Every worker listed ends; the list is read once the spawner itself is gone (it stops growing)."""
    seen: list[int] = []

    def settled() -> bool:
        nonlocal seen
        now = _pids(pids)
        done, seen = now == seen, now
        return done

    await until(settled, deadline=20, every=0.5, what="the spawner never stopped")
    await _all_ended(seen, 15, what)


# ---------------------------------------------------------------- a short proxy password in derived text


@pytest.mark.parametrize("password", ['q"7', "a\\b7", 'x"y"'])
def test_a_short_password_with_a_quote_or_backslash_is_masked_in_json_log_lines(password):
    # A JSON line escapes `"` and `\`: the short mask looked for the password as typed, and the escaped form
    # (q\"7) went to the log whole. The long mask has known this form since round 2.
    encoded = password.replace('"', "%22").replace("\\", "%5C")
    settings = resolve_proxy(f"http://nightly:{encoded}@proxy:3128", {})
    stream = io.StringIO()
    Reporter(stream=stream, fmt="json", secret=settings.secrets()).warning(f"proxy said: bad password {password}")
    line = stream.getvalue()
    assert json.loads(line)["msg"] == "proxy said: bad password ****", line


@pytest.mark.parametrize("password", ["n12", "u001b", "t42"])
def test_a_short_password_never_breaks_a_json_log_line(password):
    # `\n12 items` in a JSON line is a line break and "12 items", not the password n12; the mask took the n of
    # the escape: `\****` is no JSON (a --log-format json reader lost the line).
    settings = resolve_proxy(f"http://nightly:{password}@proxy:3128", {})
    stream = io.StringIO()
    reporter = Reporter(stream=stream, fmt="json", secret=settings.secrets())
    reporter.warning(f"the service said:\n12 items, \x1b[ and \t42; the password {password}")
    record = json.loads(stream.getvalue())
    assert record["msg"].endswith("the password ****"), record
    assert password not in stream.getvalue().replace("\\" + password, ""), stream.getvalue()


def test_a_short_secret_before_a_long_one_never_cuts_the_long_one_open():
    # The masks ran in the order given: a short secret standing alone inside a longer one (the key
    # "abc-Zk29xQ7pL" and a proxy user "abc") was masked first, and the rest of the key no longer matched.
    key = "abc-Zk29xQ7pL0"
    assert redact(f"key {key} here", ["abc", key]) == "key **** here"


@pytest.mark.parametrize("password", ["1234", "true", "null", "msg", "level"])
def test_a_short_password_equal_to_a_figure_or_a_key_never_breaks_a_json_log_line(password):
    # The mask ran over the finished JSON line: a password "1234" (a cheap proxy's) made `"succeeded": 1234` into
    # `"succeeded": ****`, "true" or "null" a bare ****: no JSON, the night's summary lost to its reader; "msg"
    # renamed the line's own key. Values are masked before the line is made; keys and figures are batchgen's own.
    settings = resolve_proxy(f"http://nightly:{password}@proxy:3128", {})
    stream = io.StringIO()
    reporter = Reporter(stream=stream, fmt="json", secret=settings.secrets())
    reporter.info(f"proxy said {password}", event="summary", succeeded=1234, sent=True, problem=None, note=password)
    record = json.loads(stream.getvalue())
    assert record["msg"] == "proxy said ****" and record["note"] == "****", record
    assert (record["level"], record["succeeded"], record["sent"], record["problem"]) == ("info", 1234, True, None)


# ---------------------------------------------------------------- a job that outruns the walk of /proc

# A job in a session of its own that forks and exits at once, over and over: each of its processes lives a
# millisecond or so, less than one walk of /proc, so the walk never found one alive to signal; 50 walks later the
# guard gave up, and it ran on, reparented to init.
RUNNER = (
    "import os, sys, time\n"
    "os.setsid()\n"
    "open(sys.argv[1], 'w').write(str(os.getpgrp()))\n"
    "for _ in range(60000):\n"
    "    if os.fork():\n"
    "        os._exit(0)\n"
)


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_a_job_that_forks_away_faster_than_the_walk_ends_with_the_hook(tmp_path):
    marker = tmp_path / "runner-group"
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\n{sys.executable} {runner} {marker} &\nsleep 0.5\n", "utf-8")
    hook.chmod(0o755)
    try:
        log = await _at_end(tmp_path, (str(hook),))
        assert "exit 0" in log, log
        group = int(marker.read_text())
        await until(lambda: _group_gone(group), deadline=10, what="a job forking away from the walk outlived its hook")
    finally:
        if marker.exists() and marker.read_text():
            while not _group_gone(int(marker.read_text())):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(marker.read_text()), signal.SIGKILL)


# ---------------------------------------------------------------- what is not the hook's, and odd names


async def test_nothing_outside_the_hooks_tree_is_signalled_whatever_the_hook_does(tmp_path):
    # A process of the user's own in a session of its own (another night's rsync), named in the hook's
    # environment: the hook signals nothing itself, it only names it in its own children's process names and
    # groups nothing with it; the guard's walk and group kills must leave it alone. So must they the test runner.
    outside = await asyncio.create_subprocess_exec("sleep", "600", start_new_session=True)
    marker = tmp_path / "job-pid"
    renamed = (
        "import ctypes, os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        f"    ctypes.CDLL(None).prctl(15, b'x) Z {outside.pid} (')\n"  # PR_SET_NAME: ") Z PID (" in its comm
        f"    open({str(marker)!r}, 'w').write(str(os.getpid()))\n"
        "    time.sleep(600)\n"
        f"while not os.path.exists({str(marker)!r}) or not open({str(marker)!r}).read(): time.sleep(0.01)\n"
    )
    try:
        log = await _at_end(tmp_path, (sys.executable, "-c", renamed))
        assert "exit 0" in log, log
        await outlived(int(marker.read_text()), 10, "a job whose name holds ') Z PID (' outlived its hook")
        assert outside.returncode is None and not _ended(outside.pid)
    finally:
        outside.kill()
        await outside.wait()


# ---------------------------------------------------------------- the run killed at any instant

KILLER = (
    "import os, subprocess, sys, time\n"
    "guard = subprocess.Popen([sys.executable, '-I', sys.argv[1], str(os.getpid()), '--', *sys.argv[3:]],"
    " start_new_session=True)\n"
    "time.sleep(float(sys.argv[2]))\n"
    "os._exit(9)\n"  # batchgen dies at this instant, as a SIGKILL would end it: nothing cleaned up
)


@pytest.mark.parametrize("instant", [0.0, 0.02, 0.05, 0.1, 0.2, 0.4])
async def test_a_run_killed_at_any_instant_of_its_hook_leaves_nothing_of_it_running(tmp_path, instant):
    # The parent-death signal, the subreaper and the walks race the hook's own start and its job's forks: at
    # every instant, what the hook started (a SIGTERM-deaf job in a session of its own, starting workers) ends
    # within the guard's grace and a few seconds.
    pids = tmp_path / "pids"
    hook = _spawner_hook(tmp_path, pids)
    killer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLER, finish.hookguard.__file__, str(instant), str(hook)
    )
    await killer.wait()
    await _all_ended_after_settling(pids, f"a worker outlived its run killed {instant} s into its hook")


# ---------------------------------------------------------------- a short password in a paid result's URL


async def test_a_short_proxy_password_that_is_a_word_of_the_result_url_never_refuses_a_paid_image(
    sim_factory, tmp_path
):
    # The service never sees the proxy's password: "png" in ".../1.png" is the URL's word, not the password. The
    # short mask took it for the secret: every paid result was refused ("a result URL carries the API key; not
    # fetched"), again on every rerun. Only a secret no URL holds by chance (the key, a long password) refuses.
    path = manifest_of(tmp_path / "m.yaml", ["an owl"])
    async with sim_factory(api_key=KEY) as sim:
        args = run_args(path, tmp_path / "out", sim, "--proxy", "http://nightly:png@proxy.invalid:3128")
        code, _, stderr = await cli(args)
        assert code == 0, stderr
        assert sim.stats.create_calls == 1
    assert [r["state"] for r in results(tmp_path / "out")["items"].values()] == ["succeeded"], stderr
