"""The night's end (issue 21, SPEC §3): --on-finish hooks as real subprocesses, --notify through Apprise's
json:// to a local receiver, --ping to a local monitor — on every exit path, while DIR is still locked, within
their bound, never changing the exit code and never handing out the key."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from batchgen import endactions, finish
from batchgen.config import Secret
from batchgen.errors import TransportError
from batchgen.progress import Reporter
from batchgen.proxies import ProxySettings

from .helpers import HOOK, KEY, cli, env, injected, manifest_of, outlived, run_args, serve, start, until
from .helpers import finish as finish_proc


@pytest.fixture
def hook(tmp_path: Path) -> Path:
    path = tmp_path / "hook.py"
    path.write_text(HOOK)
    return path


class Receiver:
    """A local HTTP server that records every request: a JSON webhook for Apprise, a monitor for pings."""

    def __init__(self, status: int = 200, hang: bool = False) -> None:
        self.requests: list[dict[str, object]] = []
        self.status = status
        self.hang = hang
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            {"method": request.method, "path": request.path, "headers": dict(request.headers), "body": body}
        )
        if self.hang:
            await asyncio.sleep(3600)
        return web.Response(status=self.status, text="OK")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Receiver]:
        async with serve(self.handle) as base:
            self.port = int(base.rsplit(":", 1)[1])
            yield self

    def paths(self) -> list[str]:
        return [str(r["path"]) for r in self.requests]


TOKEN = "tok-3f9a1c7e5b2d"  # the secret part of the notify and ping URLs


async def test_a_hook_gets_the_summary_never_the_key_and_a_hostile_prompt_runs_nothing(sim_factory, tmp_path, hook):
    pwned = tmp_path / "pwned"
    hostile = f"a fox $(touch {pwned}) `touch {pwned}2`; touch {pwned}3 [sim:fail-policy]"
    path = manifest_of(tmp_path / "m.yaml", ["an owl", hostile])
    out = tmp_path / "out"
    record = tmp_path / "hook.json"
    environment = env(
        BATCHGEN_PROXY="http://user:proxy-pass-77@127.0.0.1:9",
        https_proxy="http://user:proxy-pass-77@127.0.0.1:9",
        NO_PROXY="127.0.0.1,localhost",
        BATCHGEN_PING=f"http://127.0.0.1:9/{TOKEN}",
        MY_COPY_OF_THE_KEY=f"Bearer {KEY}",
        HOME=str(tmp_path),
    )
    async with sim_factory(api_key=KEY) as sim:
        code, _, stderr = await cli(
            run_args(path, out, sim, "--on-finish", f"{sys.executable} {hook} '{record}'", "--report"),
            env=environment,
        )
    assert code == 1, stderr  # one item failed for good
    assert not any(p.name.startswith("pwned") for p in [*tmp_path.iterdir(), *out.iterdir()])
    seen = json.loads(record.read_text())
    assert seen["argv"] == [str(hook), str(record)]  # exactly what was written, split once, no shell
    doc = seen["doc"]
    assert doc["exit_code"] == 1 and doc["exit_meaning"] == "finished, and some items failed for good"
    assert doc["counts"] == {"pending": 0, "submitted": 0, "succeeded": 1, "failed": 1}
    assert doc["dir"] == str(out) and doc["ledger"] == str(out / "results.json")
    assert doc["contact_sheet"] == str(out / "index.html") and doc["paid_creates"] == 2
    assert [f["id"] for f in doc["first_failures"]] == ["item-01"]
    assert doc["first_failures"][0]["kind"] == "task_policy"
    hook_env = seen["env"]
    assert hook_env["BATCHGEN_EXIT"] == "1" and hook_env["BATCHGEN_DIR"] == str(out)
    assert hook_env["BATCHGEN_MANIFEST"] == str(path)
    for gone in ("BATCHGEN_API_KEY", "BATCHGEN_PROXY", "BATCHGEN_PING", "https_proxy", "MY_COPY_OF_THE_KEY"):
        assert gone not in hook_env, gone
    assert hook_env["NO_PROXY"] == "127.0.0.1,localhost"  # what is no secret stays
    assert not any(KEY in v or "proxy-pass-77" in v or TOKEN in v for v in hook_env.values())
    assert seen["dir_locked"] is True  # the hook ran while DIR was still the run's
    # its last stderr line is logged, escaped; the run's exit code is its own
    assert "--on-finish hook 1 (python" in stderr and "exit 0; its last stderr line: the hook's last word" in stderr
    assert "\\x1b]0;retitled\\x07" in stderr and "\x1b" not in stderr
    assert TOKEN not in stderr and KEY not in stderr


async def test_a_failing_hook_keeps_the_exit_code_and_a_missing_one_is_only_logged(sim_factory, tmp_path, hook):
    path = manifest_of(tmp_path / "m.yaml", ["an owl"])
    out = tmp_path / "out"
    async with sim_factory(api_key=KEY) as sim:
        code, _, stderr = await cli(
            run_args(
                path,
                out,
                sim,
                "--on-finish",
                f"{sys.executable} {hook} {tmp_path / 'h.json'} 7",
                "--on-finish",
                str(tmp_path / "no-such-hook"),
            )
        )
    assert code == 0, stderr
    assert "--on-finish hook 1 (python" in stderr and ": exit 7; its last stderr line" in stderr
    assert "--on-finish hook 2 (no-such-hook): cannot run it: No such file or directory" in stderr
    assert stderr.rstrip().splitlines()[-1].endswith("exit 0 (every item succeeded)")  # the summary stays last


async def test_hooks_run_on_usage_errors_and_not_on_a_dry_run(sim_factory, tmp_path, hook):
    path = manifest_of(tmp_path / "m.yaml", ["an owl"])
    out = tmp_path / "out"
    record = tmp_path / "h.json"
    async with sim_factory(api_key=KEY) as sim:
        dry, _, _ = await cli(run_args(path, out, sim, "--dry-run", "--on-finish", f"{sys.executable} {hook} {record}"))
        assert dry == 0 and not record.exists()
        code, _, stderr = await cli(
            run_args(path, out, sim, "--concurrency", "0", "--on-finish", f"{sys.executable} {hook} {record}")
        )
    assert code == 2, stderr
    assert json.loads(record.read_text())["env"]["BATCHGEN_EXIT"] == "2"


def _actions(**kw: object) -> endactions.EndActions:
    bounds = endactions.Bounds(total=2.0, after_signal=2.0, grace=0.5, ping=1.0)
    return endactions.EndActions(bounds=bounds, **kw)  # type: ignore[arg-type]


def _summary(tmp_path: Path, code: int = 1) -> endactions.Summary:
    return endactions.Summary(
        code=code,
        meaning="finished, and some items failed for good",
        manifest=str(tmp_path / "m.yaml"),
        directory=str(tmp_path),
        counts={"pending": 0, "submitted": 0, "succeeded": 1, "failed": 1},
        figures={"paid_creates": 2},
        failures=[{"id": "fox", "kind": "task_policy", "code": "400", "message": "flagged \x1b[2J"}],
    )


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone, even between the open and the read (ESRCH)
        return False


@pytest.mark.parametrize("session", [False, True])
async def test_a_hook_that_hangs_is_cut_at_its_bound_with_all_it_started(tmp_path, session):
    # session: the hook's child in a session of its own (setsid), deaf to SIGTERM too: in no group, it ran on.
    pids = tmp_path / "pids"
    deaf = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    hang = (
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"  # deaf to SIGTERM: SIGKILL must follow
        f"child = subprocess.Popen([sys.executable, '-c', {deaf!r}], start_new_session={session})\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(600)\n"
    )
    actions = _actions(hooks=((sys.executable, "-c", hang), (sys.executable, "-c", "pass")))
    stream = (tmp_path / "log").open("w")
    await asyncio.to_thread(finish.at_end, actions, _summary(tmp_path), Reporter(stream=stream, progress=False))
    stream.close()
    log = (tmp_path / "log").read_text()
    assert "--on-finish hook 1 (python" in log and "cut at the end-of-run time limit (SIGTERM, then SIGKILL)" in log
    assert "--on-finish hook 2 (python" in log and "not started, the end-of-run time is up" in log
    hook_pid, child_pid = map(int, pids.read_text().split())
    await until(lambda: not _alive(hook_pid) and not _alive(child_pid), deadline=10)


async def test_the_notification_on_a_failing_night_and_none_on_a_good_one(sim_factory, tmp_path):
    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login someone password netrc-secret-99\n")
    (tmp_path / ".netrc").chmod(0o600)
    path = manifest_of(tmp_path / "m.yaml", ["an owl", "a fox [sim:fail-policy]"])
    good = manifest_of(tmp_path / "good.yaml", ["an owl"])
    async with Receiver().running() as hook_site, sim_factory(api_key=KEY) as sim:
        environment = env(BATCHGEN_NOTIFY=f"json://127.0.0.1:{hook_site.port}/{TOKEN}", HOME=str(tmp_path))
        code, _, stderr = await cli(run_args(path, tmp_path / "out", sim, "--report"), env=environment)
        assert code == 1, stderr
        assert len(hook_site.requests) == 1
        code, _, _ = await cli(run_args(good, tmp_path / "good", sim), env=environment)
        assert code == 0 and len(hook_site.requests) == 1  # a good night is quiet by default
        code, _, _ = await cli(run_args(good, tmp_path / "good", sim, "--notify-on", "always"), env=environment)
        assert code == 0 and len(hook_site.requests) == 2
    (request, always) = hook_site.requests
    assert request["method"] == "POST" and request["path"] == f"/{TOKEN}"
    assert "Authorization" not in request["headers"]  # ~/.netrc is never read
    sent = json.loads(request["body"])  # type: ignore[arg-type]
    assert sent["title"] == "batchgen: m.yaml: finished, and some items failed for good"
    body = sent["message"]
    assert "1 succeeded, 1 failed" in body and "2 paid creates" in body
    assert "- item-01: task_policy: 400: Your prompt was flagged" in body
    assert f"contact sheet: {tmp_path / 'out' / 'index.html'}" in body
    assert KEY not in json.dumps(sent) and "notification sent" in stderr and TOKEN not in stderr
    assert json.loads(always["body"])["title"] == "batchgen: good.yaml: every item succeeded"  # type: ignore[arg-type]


@pytest.mark.parametrize("case", ["down", "500", "hangs"])
async def test_a_notifier_that_is_down_or_fails_costs_at_most_the_bound(tmp_path, case):
    receiver = Receiver(status=500 if case == "500" else 200, hang=case == "hangs")
    async with receiver.running() as site:
        port = 9 if case == "down" else site.port  # 9: discard, nobody listens there
        actions = _actions(notify=(Secret(f"json://127.0.0.1:{port}/{TOKEN}"),))
        stream = (tmp_path / "log").open("w")
        await asyncio.to_thread(finish.at_end, actions, _summary(tmp_path), Reporter(stream=stream, progress=False))
        stream.close()
    log = (tmp_path / "log").read_text()
    assert "notification not sent" in log and TOKEN not in log
    if case == "hangs":
        assert "within the end-of-run time limit" in log


async def test_pings_start_and_end_with_the_exit_code(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["an owl"])
    async with Receiver().running() as monitor, sim_factory(api_key=KEY) as sim:
        environment = env(BATCHGEN_PING=f"http://127.0.0.1:{monitor.port}/ping/{TOKEN}")
        code, _, stderr = await cli(run_args(path, tmp_path / "out", sim), env=environment)
        assert code == 0, stderr
        assert monitor.paths() == [f"/ping/{TOKEN}/start", f"/ping/{TOKEN}"]
        path.write_text("- prompt: a\n  seed: 0\n")  # a broken manifest: exit 2
        code, _, _ = await cli(run_args(path, tmp_path / "out", sim), env=environment)
        assert code == 2
        assert monitor.paths()[2:] == [f"/ping/{TOKEN}/start", f"/ping/{TOKEN}/2"]
    assert TOKEN not in stderr


async def test_a_monitor_that_is_down_never_holds_the_run_or_changes_its_code(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["an owl"])
    async with sim_factory(api_key=KEY) as sim:
        code, _, stderr = await cli(
            run_args(path, tmp_path / "out", sim), env=env(BATCHGEN_PING=f"http://127.0.0.1:9/{TOKEN}")
        )
    assert code == 0, stderr
    assert "ping (start): not delivered: cannot connect" in stderr and "ping (success): not delivered" in stderr
    assert TOKEN not in stderr


async def test_a_sigterm_run_still_runs_its_hooks_and_pings(sim_factory, tmp_path, hook):
    path = manifest_of(tmp_path / "m.yaml", ["held [sim:hold]"])
    record = tmp_path / "h.json"
    async with Receiver().running() as monitor, sim_factory(api_key=KEY) as sim:
        proc = await start(
            run_args(path, tmp_path / "out", sim, "--on-finish", f"{sys.executable} {hook} {record}"),
            env=env(BATCHGEN_PING=f"http://127.0.0.1:{monitor.port}/{TOKEN}"),
        )
        await until(lambda: sim.stats.creates == 1)
        proc.send_signal(signal.SIGTERM)
        code, _, stderr = await finish_proc(proc)
    assert code == 143, stderr
    seen = json.loads(record.read_text())
    assert seen["env"]["BATCHGEN_EXIT"] == "143" and seen["dir_locked"] is True
    assert monitor.paths() == [f"/{TOKEN}/start", f"/{TOKEN}/143"]


async def test_doctor_notify_sends_a_test_message_and_a_test_ping(tmp_path):
    async with Receiver().running() as site:
        actions = _actions(
            notify=(Secret(f"json://127.0.0.1:{site.port}/{TOKEN}"),),
            ping=Secret(f"http://127.0.0.1:{site.port}/ping/{TOKEN}"),
        )
        stream = (tmp_path / "log").open("w")
        results = await finish.test_notification(actions, Reporter(stream=stream, progress=False))
        stream.close()
    assert [ok for ok, _ in results] == [True, True]
    assert sorted(site.paths()) == sorted([f"/{TOKEN}", f"/ping/{TOKEN}/log"])
    assert TOKEN not in (tmp_path / "log").read_text()


async def test_batchgen_doctor_notify_tries_the_message_and_the_ping_from_the_environment(sim_factory, tmp_path):
    """`batchgen doctor --notify`: the checks of the way, then a test message to BATCHGEN_NOTIFY and a test ping to
    BATCHGEN_PING, one line each and never their URLs; a monitor that is down is a failed line (exit 1)."""
    async with Receiver().running() as site, sim_factory(api_key=KEY) as sim:
        environment = env(
            BATCHGEN_NOTIFY=f"json://127.0.0.1:{site.port}/{TOKEN}",
            BATCHGEN_PING=f"http://127.0.0.1:{site.port}/ping/{TOKEN}",
            XDG_STATE_HOME=str(tmp_path / "state"),
        )
        args = [sys.executable, "-m", "batchgen", "doctor", "--api-base", sim.api_url, "--notify"]
        code, stdout, stderr = await cli(args, env=environment)
        assert code == 0, stdout + stderr
        assert sorted(site.paths()) == sorted([f"/{TOKEN}", f"/ping/{TOKEN}/log"])
        assert "ok   notify: the test message was sent" in stdout and "ok   ping: the test ping was answered" in stdout
        assert TOKEN not in stdout + stderr
        environment["BATCHGEN_PING"] = f"http://127.0.0.1:9/ping/{TOKEN}"  # nothing listens on the discard port
        code, stdout, stderr = await cli(args, env=environment)
    assert code == 1, stdout + stderr
    assert "FAIL ping: the test ping was NOT answered" in stdout and TOKEN not in stdout + stderr


def test_end_action_flags_are_read_once_and_checked_before_anything_runs():
    with pytest.raises(Exception, match="--on-finish"):
        endactions.resolve(["rclone sync 'unbalanced"], None, None, None, {})
    with pytest.raises(Exception, match="--ping: expected an http"):
        endactions.resolve(None, None, None, "ftp://x/y", {})
    actions = endactions.resolve(
        ["a 'b c'"], None, None, None, {"BATCHGEN_NOTIFY": "json://h/x", "BATCHGEN_PING": "https://hc/u"}
    )
    assert actions.hooks == (("a", "b c"),) and actions.notify[0].value == "json://h/x" and actions.ping
    several = endactions.resolve(None, None, None, None, {"BATCHGEN_NOTIFY": "mailto://u:pw@h?to=a,b, json://h/x"})
    assert [u.value for u in several.notify] == ["mailto://u:pw@h?to=a,b", "json://h/x"]
    assert endactions.mask_argv(["run", "--notify", "slack://t/a/b", "--ping=https://hc/u"]) == [
        "run",
        "--notify",
        "****",
        "--ping=****",
    ]
    assert (
        endactions.ping_url("https://hc.example/ping/uuid?rid=1", "start") == "https://hc.example/ping/uuid/start?rid=1"
    )
    assert [endactions.should_notify(c, "problem") for c in (0, 1, 2, 3, 4, 5, 70, 143)] == [
        False, True, True, True, True, False, True, True
    ]  # fmt: skip


async def test_a_crash_still_runs_the_end_actions_and_its_log_masks_their_urls(sim_factory, tmp_path, hook):

    path = manifest_of(tmp_path / "m.yaml", ["an owl"])
    out = tmp_path / "out"
    record = tmp_path / "h.json"
    async with Receiver().running() as monitor, sim_factory(api_key=KEY) as sim:
        ping = f"http://127.0.0.1:{monitor.port}/{TOKEN}"
        args = run_args(path, out, sim, "--ping", ping, "--on-finish", f"{sys.executable} {hook} {record}")
        code, _, stderr = await cli(injected('RuntimeError("a bug")', args))
        assert code == 70, stderr
        assert monitor.paths() == [f"/{TOKEN}/start", f"/{TOKEN}/70"]
    assert json.loads(record.read_text())["env"]["BATCHGEN_EXIT"] == "70"
    (crash_log,) = (out / ".batchgen").glob("crash-*.log")
    assert "--ping ****" in crash_log.read_text() and TOKEN not in crash_log.read_text()
    assert "--ping on the command line is visible to other users (ps); prefer BATCHGEN_PING" in stderr
    assert TOKEN not in stderr


async def test_a_flag_error_in_the_end_flags_still_writes_the_metrics_and_runs_the_hooks(sim_factory, tmp_path, hook):
    path = manifest_of(tmp_path / "m.yaml", ["an owl"])
    record = tmp_path / "h.json"
    metrics = tmp_path / "batchgen.prom"
    async with sim_factory(api_key=KEY) as sim:
        args = run_args(path, tmp_path / "out", sim, "--metrics-file", str(metrics), "--notify-on", "sometimes")
        code, _, stderr = await cli([*args, "--on-finish", f"{sys.executable} {hook} {record}"])
    assert code == 2 and "--notify-on: invalid choice" in stderr
    assert 'batchgen_last_run_exit_code{manifest=""} 2' in metrics.read_text()
    assert json.loads(record.read_text())["env"]["BATCHGEN_EXIT"] == "2"


@pytest.mark.slow
async def test_sigterm_while_a_hook_hangs_cuts_it_within_the_signal_bound_and_keeps_the_exit_code(
    sim_factory, tmp_path
):
    # 10 s: the bound after a signal (a systemd stop must fit TimeoutStopSec=60), not the 120 s of a normal end.
    marker = tmp_path / "hook-started"
    hang = f"import pathlib, time; pathlib.Path({str(marker)!r}).write_text('x'); time.sleep(600)"
    path = manifest_of(tmp_path / "m.yaml", ["an owl"])
    async with sim_factory(api_key=KEY) as sim:
        proc = await start(run_args(path, tmp_path / "out", sim, "--on-finish", f"{sys.executable} -c {hang!r}"))
        await until(marker.exists, deadline=60)
        proc.send_signal(signal.SIGTERM)
        code, _, stderr = await finish_proc(proc)
    assert code == 0, stderr  # the run itself was done: the signal only cut the hook
    assert "cut at the end-of-run time limit (SIGTERM, then SIGKILL)" in stderr


async def test_a_hook_ends_when_its_run_is_killed_and_never_works_on_beside_the_next_run(sim_factory, tmp_path):
    """SIGKILL of the run while its hook works: the run cannot cut the hook at its bound, and DIR's lock goes with
    the run. The hook is sent SIGTERM as its parent dies (it never works on in DIR beside the next run)."""
    marker = tmp_path / "hook-pid"
    hang = f"import os, pathlib, time; pathlib.Path({str(marker)!r}).write_text(str(os.getpid())); time.sleep(600)"
    path = manifest_of(tmp_path / "m.yaml", ["an owl"])
    async with sim_factory(api_key=KEY) as sim:
        proc = await start(run_args(path, tmp_path / "out", sim, "--on-finish", f"{sys.executable} -c {hang!r}"))
        await until(lambda: marker.exists() and marker.read_text(), deadline=60)
        hook_pid = int(marker.read_text())
        proc.kill()
        await finish_proc(proc)

    await outlived(hook_pid, 10, "the hook still runs after its run was killed")


@pytest.mark.parametrize("job", ["sleep", "setsid sleep"])
async def test_what_a_hook_started_ends_too_when_its_run_is_killed(sim_factory, tmp_path, job):
    """A shell-script hook that started a long job (an rsync, here a sleep): SIGKILL of the run must end the job
    as well, not only the shell (the kernel's parent-death signal reaches one process, not its children)."""
    marker = tmp_path / "job-pid"
    script = tmp_path / "hook.sh"
    script.write_text(f"#!/bin/sh\n{job} 600 &\necho $! > {marker}\nwait\n", "utf-8")
    script.chmod(0o755)
    path = manifest_of(tmp_path / "m.yaml", ["an owl"])
    async with sim_factory(api_key=KEY) as sim:
        proc = await start(run_args(path, tmp_path / "out", sim, "--on-finish", str(script)))
        await until(lambda: marker.exists() and marker.read_text().strip(), deadline=60)
        job = int(marker.read_text())
        proc.kill()
        await finish_proc(proc)
    await outlived(job, 15, "the hook's own job still runs after its run was killed")


async def test_a_hook_that_ends_by_a_signal_is_reported_as_before(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["an owl"])
    hook = "import os, signal, sys; sys.stderr.write('going down\\n'); os.kill(os.getpid(), signal.SIGABRT)"
    async with sim_factory(api_key=KEY) as sim:
        args = run_args(path, tmp_path / "out", sim, "--on-finish", f"{sys.executable} -c {hook!r}")
        code, _, stderr = await cli(args)
    assert code == 0, stderr
    assert f"exit {-signal.SIGABRT}; its last stderr line: going down" in stderr


def test_the_notifier_gets_the_runs_proxy_and_ca_and_no_key_or_netrc():
    env_in = {"BATCHGEN_API_KEY": KEY, "BATCHGEN_NOTIFY": f"json://h/{TOKEN}", "PATH": "/bin", "HOME": "/home/x"}
    way = ProxySettings(https="http://proxy.example:3128", http="http://proxy.example:3128")
    child = endactions.child_env(env_in, [f"json://h/{TOKEN}"], way, "/etc/ca.pem")
    assert "BATCHGEN_API_KEY" not in child and "BATCHGEN_NOTIFY" not in child and child["PATH"] == "/bin"
    assert child["HTTPS_PROXY"] == child["http_proxy"] == "http://proxy.example:3128"
    assert child["REQUESTS_CA_BUNDLE"] == child["SSL_CERT_FILE"] == "/etc/ca.pem"
    assert child["NETRC"] == os.devnull


async def test_json_logs_carry_the_hook_event_and_keep_the_summary_last(sim_factory, tmp_path, hook):
    path = manifest_of(tmp_path / "m.yaml", ["an owl"])
    async with sim_factory(api_key=KEY) as sim:
        args = run_args(path, tmp_path / "out", sim, "--log-format", "json")
        code, _, stderr = await cli([*args, "--on-finish", f"{sys.executable} {hook} {tmp_path / 'h.json'} 4"])
    assert code == 0, stderr
    events = [json.loads(line) for line in stderr.splitlines()]
    (hooked,) = [e for e in events if e["event"] == "hook"]
    assert hooked["status"] == 4 and hooked["level"] == "warning" and "\x1b" not in hooked["msg"]
    assert events[-1]["event"] == "summary" and events[-1]["exit_code"] == 0


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
async def test_a_ping_trusts_the_runs_ca_bundle_and_refuses_an_unknown_certificate(tmp_path):
    import ssl
    import subprocess

    from batchgen.client import ping

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    monitor = Receiver()
    async with serve(monitor.handle, ssl_context=context) as base:
        url = f"{base}/{TOKEN}"
        assert await ping(url, seconds=5, ca_bundle=str(cert)) == 200
        with pytest.raises(TransportError, match="TLS failed") as refused:
            await ping(url, seconds=5)
        assert TOKEN not in str(refused.value)
    assert monitor.paths() == [f"/{TOKEN}"]
