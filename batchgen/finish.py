"""The night's end (SPEC §3): `--on-finish` hooks, a `--notify` message and a `--ping`, on every exit path of
`run` but `--dry-run` — after the ledger, the contact sheet and the metrics are final, while DIR is still
locked, all of it within Bounds.total seconds (Bounds.after_signal once a signal has stopped the run).

- A hook is split once with shlex when the flags are read and run without a shell, in its own process group;
  the run's summary goes to its stdin as JSON (a hook that never reads it is fine), BATCHGEN_EXIT,
  BATCHGEN_DIR and BATCHGEN_MANIFEST to its environment. Its argv holds nothing but what the user wrote; its
  environment never the key, proxy credentials, notify or ping URLs (`hook_env`). At the limit: SIGTERM to its
  group, SIGKILL Bounds.grace seconds later. Its exit status and its stderr's last line are logged, escaped.
  Hooks run one after another, in the order given (a chain: sync, then publish).
- The message goes through Apprise in a child process (notify.py), killed like a hook; `--notify-on problem`
  (exits 1, 2, 3, 4, 70, 128+N) or `always`.
- The ping: `URL/start` while the run starts (`started`), then `URL` for exits 0, 1, 5, else `URL/<code>`.

Nothing here changes the run's exit code, and no URL of `--notify` or `--ping` is ever logged: the notifier's
failure line is masked with them, the key and the proxy's credentials (a proxy's refusal it quotes may name them).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from . import __version__, hookguard
from .config import redact
from .endactions import (
    PING_OK,
    Bounds,
    EndActions,
    Summary,
    child_env,
    hook_env,
    message,
    ping_url,
    should_notify,
)
from .errors import TransportError
from .escapes import inert_line
from .hookguard import die_with_parent
from .progress import Reporter
from .proxies import ProxySettings, proxy_for

T = TypeVar("T")


class LockHold:
    """DIR's lock, kept from the ledger's close until the end actions are over: a duplicate of the descriptor
    the lock was taken on (an flock lasts while any descriptor of its open file is open)."""

    def __init__(self) -> None:
        self.fd: int | None = None

    def keep(self, fd: int) -> None:
        self.release()
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _Clock:
    """The end actions' one deadline; a signal meanwhile brings it to Bounds.after_signal from then."""

    def __init__(self, bounds: Bounds, signalled: bool) -> None:
        self.bounds = bounds
        self.deadline = time.monotonic() + (bounds.after_signal if signalled else bounds.total)
        self.changed = asyncio.Event()

    def signal(self) -> None:
        self.deadline = min(self.deadline, time.monotonic() + self.bounds.after_signal)
        self.changed.set()

    def left(self, before: float = 0.0) -> float:
        return max(0.0, self.deadline - before - time.monotonic())

    async def wait_until(self, before: float) -> None:
        """Sleep until `before` seconds ahead of the deadline (woken early when a signal moves it)."""
        while self.left(before) > 0:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), self.left(before))


def at_end(
    actions: EndActions,
    summary: Summary,
    reporter: Reporter,
    *,
    key: str | None = None,
    proxy: ProxySettings | None = None,
    ca_bundle: str | Path | None = None,
) -> None:
    """Run the end actions, on a loop of their own; returns when all are done or cut at the limit."""
    if not (actions.hooks or actions.notify or actions.ping):
        return
    asyncio.run(_at_end(actions, summary, reporter, key, proxy, str(ca_bundle) if ca_bundle else None))


async def _at_end(
    actions: EndActions,
    summary: Summary,
    out: Reporter,
    key: str | None,
    proxy: ProxySettings | None,
    ca: str | None,
) -> None:
    clock = _Clock(actions.bounds, signalled=summary.code > 128)
    loop = asyncio.get_running_loop()
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for signum in previous:
            loop.add_signal_handler(signum, clock.signal)
    except RuntimeError:  # not the main thread (a caller's own thread): signals stay with the main thread
        previous = {}
    secrets = [*actions.secrets(), *([key] if key else [])]
    try:
        jobs: list[Coroutine[Any, Any, object]] = [_hooks(actions, summary, out, clock, key)]
        if actions.notify and should_notify(summary.code, actions.notify_on):
            title, body = message(summary)
            jobs.append(
                _notify(actions, redact(title, key), redact(body, key), summary.code, out, clock, secrets, proxy, ca)
            )
        if actions.ping is not None:
            suffix = "" if summary.code in PING_OK else str(summary.code)
            jobs.append(_ping(actions.ping.value, suffix, out, clock, proxy, ca))
        await asyncio.gather(*jobs)
    finally:
        for signum, handler in previous.items():
            loop.remove_signal_handler(signum)
            if handler is not None:
                signal.signal(signum, handler)


async def _hooks(actions: EndActions, summary: Summary, out: Reporter, clock: _Clock, key: str | None) -> None:
    stdin = json.dumps(summary.document(), ensure_ascii=False).encode() + b"\n"
    env = hook_env(os.environ, summary, [*actions.urls(), *([key] if key else [])])
    for n, argv in enumerate(actions.hooks, 1):
        name = f"--on-finish hook {n} ({inert_line(Path(argv[0]).name, 60)})"
        if clock.left(actions.bounds.grace) <= 0:
            out.warning(f"{name}: not started, the end-of-run time is up", event="hook", hook=n, status=None)
            continue
        await _hook(name, n, argv, stdin, env, out, clock)


async def _hook(
    name: str, n: int, argv: tuple[str, ...], stdin: bytes, env: dict[str, str], out: Reporter, clock: _Clock
) -> None:
    if why := _not_runnable(argv[0], env):
        out.warning(f"{name}: cannot run it: {why}", event="hook", hook=n, status=None)
        return
    try:
        proc = await asyncio.create_subprocess_exec(
            *_guarded(argv),  # a run killed by SIGKILL releases DIR's lock: nothing the hook started may go on
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group: the limit ends it and all it started
        )
    except OSError as exc:
        out.warning(f"{name}: cannot run it: {exc.strerror or exc}", event="hook", hook=n, status=None)
        return
    assert proc.stdin is not None and proc.stderr is not None
    last = _LastLine()
    feeding = asyncio.ensure_future(_feed(proc.stdin, stdin))
    reading = asyncio.ensure_future(last.read(proc.stderr))
    cut = await _bounded(proc, clock)
    # What the hook started and left running in its group (`rsync &` then exit 0) ends with it: DIR's lock goes
    # with the run, and nothing may work on in DIR beside the next run (the cut does the same in _bounded).
    _kill_group(proc.pid, signal.SIGKILL)
    feeding.cancel()
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(reading), min(0.5, clock.left()))  # a child may keep stderr open
    reading.cancel()
    said = f"; its last stderr line: {inert_line(last.line)}" if last.line else ""
    if cut:
        out.warning(f"{name}: cut at the end-of-run time limit (SIGTERM, then SIGKILL){said}", event="hook", hook=n)
    elif proc.returncode == 0:
        out.info(f"{name}: exit 0{said}", event="hook", hook=n, status=0)
    else:
        out.warning(f"{name}: exit {proc.returncode}{said}", event="hook", hook=n, status=proc.returncode)


async def _feed(pipe: asyncio.StreamWriter, data: bytes) -> None:
    """The summary on the hook's stdin; a hook that never reads it (or exits first) is fine."""
    with contextlib.suppress(ConnectionError, OSError):
        pipe.write(data)
        await pipe.drain()
        pipe.close()


class _LastLine:
    """The last non-empty line of a stream, bounded: a hook may print gigabytes."""

    LIMIT = 4096

    def __init__(self) -> None:
        self.line = ""
        self._tail = b""

    async def read(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self._tail = (self._tail + chunk)[-self.LIMIT :]
            lines = [ln for ln in self._tail.splitlines() if ln.strip()]
            if lines:
                self.line = lines[-1].decode("utf-8", "replace").strip()


async def _bounded(proc: asyncio.subprocess.Process, clock: _Clock) -> bool:
    """Wait for a child until Bounds.grace before the deadline; then SIGTERM its group, and SIGKILL it at the
    deadline. True when it was cut."""
    waiting = asyncio.ensure_future(_exited(proc))
    term = asyncio.ensure_future(clock.wait_until(clock.bounds.grace))
    await asyncio.wait({waiting, term}, return_when=asyncio.FIRST_COMPLETED)
    term.cancel()
    if waiting.done():
        return False
    _kill_group(proc.pid, signal.SIGTERM)
    kill = asyncio.ensure_future(clock.wait_until(0.0))
    await asyncio.wait({waiting, kill}, return_when=asyncio.FIRST_COMPLETED)
    kill.cancel()
    if not waiting.done():
        # A job in a session of its own is in no group; one that forks as it is killed leaves orphans, which go
        # to the guard (a subreaper, killed last): walk its tree again until none is left.
        for _ in range(hookguard.PASSES):
            if not hookguard.signal_tree(proc.pid, signal.SIGKILL) or waiting.done():
                break
            await asyncio.sleep(0.01)
        _kill_group(proc.pid, signal.SIGKILL)
    _kill_group(proc.pid, signal.SIGKILL)  # what it started and left behind in its group goes too
    await waiting
    return True


async def _exited(proc: asyncio.subprocess.Process) -> None:
    """The child's exit — not proc.wait(), which also waits for its pipes to close: a job the hook left in the
    background holding its stderr made a hook that had exited 0 look hung until the bound, then 'cut'."""
    while proc.returncode is None:  # noqa: ASYNC110  # asyncio tells the exit only with the pipes' end
        await asyncio.sleep(EXIT_POLL)


EXIT_POLL = 0.05  # seconds between looks at whether a child has exited


def _guarded(argv: tuple[str, ...]) -> list[str]:
    """The hook run under hookguard: it leads the hook's group and ends the group when batchgen dies. Run as its
    file in isolated mode (-I), never as `-m batchgen.hookguard`: that looks in the working folder first, where a
    `batchgen.py` (a user's wrapper script, a planted file) would run in its place and the hook not at all."""
    return [sys.executable, "-I", hookguard.__file__, str(os.getpid()), "--", *argv]


def _not_runnable(program: str, env: dict[str, str]) -> str | None:
    """Why the hook's program cannot be started, said before its guard starts (as exec would say it)."""
    if os.sep in program:
        if not os.path.exists(program):
            return os.strerror(errno.ENOENT)
        return None if os.access(program, os.X_OK) and not os.path.isdir(program) else os.strerror(errno.EACCES)
    return None if shutil.which(program, path=env.get("PATH", os.defpath)) else os.strerror(errno.ENOENT)


def _kill_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


async def _notify(
    actions: EndActions,
    title: str,
    body: str,
    code: int,
    out: Reporter,
    clock: _Clock,
    secrets: list[str],
    proxy: ProxySettings | None,
    ca: str | None,
) -> bool:
    """Send the message through the Apprise child; logs what happened, never a URL. True when it was taken."""
    kind = "success" if code == 0 else "warning" if code in (1, 5) else "failure"
    request = {"urls": [url.value for url in actions.notify], "title": title, "body": body, "type": kind}
    parts = set(actions.secrets())  # the URLs' parts ("services", a host name) mask text; whole values go
    kept_out = [s for s in secrets if s not in parts]  # the key: no variable holding it, under any name
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "batchgen.notify",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=child_env(os.environ, [*actions.urls(), *kept_out], proxy, ca),
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    except OSError as exc:
        out.warning(f"notification not sent: cannot start its process: {exc.strerror or exc}", event="notify")
        return False
    assert proc.stdin is not None and proc.stdout is not None
    await _feed(proc.stdin, json.dumps(request).encode())
    reading = asyncio.ensure_future(proc.stdout.read(65536))
    if await _bounded(proc, clock):
        reading.cancel()
        out.warning("notification not sent within the end-of-run time limit; the notifier was stopped", event="notify")
        return False
    try:
        result = json.loads(await asyncio.wait_for(reading, max(0.1, clock.left())))
    except (ValueError, TimeoutError):
        result = {"ok": False, "problem": f"the notifier ended with status {proc.returncode}"}
    if result.get("ok"):
        out.info(f"notification sent to {len(actions.notify)} notify URL(s)", event="notify", sent=True)
        return True
    # The proxy's credentials too: a proxy's refusal, quoted by the notifier, may name them.
    problem = inert_line(redact(str(result.get("problem")), [*secrets, *(proxy.secrets() if proxy else ())]))
    out.warning(f"notification not sent: {problem}", event="notify", sent=False)
    return False


async def _ping(
    url: str, suffix: str, out: Reporter, clock: _Clock, proxy: ProxySettings | None, ca: str | None
) -> bool:
    """One ping, bounded by its own timeout and the time left; logged without its URL."""
    from .client import ping

    what = f"ping ({suffix or 'success'})"
    timeout = min(clock.bounds.ping, clock.left())
    if timeout <= 0:
        out.warning(f"{what}: not sent, the end-of-run time is up", event="ping")
        return False
    try:
        target = ping_url(url, suffix)
        chosen = proxy_for(target, proxy) if proxy is not None else None
        status = await ping(target, seconds=timeout, proxy=chosen, ca_bundle=ca)
    except TransportError as exc:
        out.warning(f"{what}: not delivered: {exc}", event="ping", status=None)
        return False
    if status >= 400:
        out.warning(f"{what}: the monitor answered HTTP {status}", event="ping", status=status)
        return False
    out.debug(f"{what}: HTTP {status}", event="ping", status=status)
    return True


async def started(
    actions: EndActions,
    run: Awaitable[T],
    reporter: Reporter,
    *,
    proxy: ProxySettings | None = None,
    ca_bundle: str | Path | None = None,
) -> T:
    """Await the run with `URL/start` pinged beside it; the run never waits for the ping, except at its end, for
    at most what is left of the ping's own timeout (so that `start` comes before the final ping)."""
    if actions.ping is None:
        return await run
    clock = _Clock(actions.bounds, signalled=False)
    clock.deadline = time.monotonic() + actions.bounds.ping
    ca = str(ca_bundle) if ca_bundle else None
    start = asyncio.ensure_future(_ping(actions.ping.value, "start", reporter, clock, proxy, ca))
    try:
        return await run
    finally:
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(start), clock.left())
        start.cancel()


async def test_notification(
    actions: EndActions, reporter: Reporter, *, proxy: ProxySettings | None = None, ca_bundle: str | Path | None = None
) -> list[tuple[bool, str]]:
    """`batchgen doctor --notify`: a test message to every notify URL and a test ping (`URL/log`, which a
    healthchecks-style monitor records without changing the check's state); one (ok, line) each."""
    clock = _Clock(actions.bounds, signalled=False)
    ca = str(ca_bundle) if ca_bundle else None
    results: list[tuple[bool, str]] = []
    if actions.notify:
        body = f"A test message from `batchgen doctor --notify` (batchgen {__version__}); nothing ran."
        ok = await _notify(actions, "batchgen: test message", body, 0, reporter, clock, actions.secrets(), proxy, ca)
        results.append((ok, "notify: the test message was sent" if ok else "notify: the test message was NOT sent"))
    else:
        results.append((True, "notify: no --notify URL and no BATCHGEN_NOTIFY (nothing to test)"))
    if actions.ping is not None:
        ok = await _ping(actions.ping.value, "log", reporter, clock, proxy, ca)
        results.append((ok, "ping: the test ping was answered" if ok else "ping: the test ping was NOT answered"))
    else:
        results.append((True, "ping: no --ping URL and no BATCHGEN_PING (nothing to test)"))
    return results


def send_test_notification(
    actions: EndActions, reporter: Reporter, *, proxy: ProxySettings | None = None, ca_bundle: str | Path | None = None
) -> list[tuple[bool, str]]:
    """`test_notification` on a loop of its own (for a caller that is not async)."""
    return asyncio.run(test_notification(actions, reporter, proxy=proxy, ca_bundle=ca_bundle))
