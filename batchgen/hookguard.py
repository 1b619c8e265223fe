"""`python -I …/batchgen/hookguard.py PARENT -- ARGV…`: runs one --on-finish hook and ends everything it started when
batchgen dies.

A run killed by SIGKILL cannot cut its hook at the bound, and DIR's lock goes with the run: nothing the hook
started may work on in DIR beside the next run. The kernel can signal one process when its parent dies
(PR_SET_PDEATHSIG), but not its children: a shell script hook would die and leave its `rsync` running. This
guard is that one process. It leads the hook's process group (batchgen starts it in a session of its own), and
on SIGTERM it passes SIGTERM to the whole group; when the SIGTERM was batchgen's death, SIGKILL follows GRACE
seconds later (batchgen alive, it is batchgen's cut at the bound, and batchgen keeps the bound). Otherwise it
waits for the hook and ends as the hook ended (its exit code, or its signal), after ending what the hook left
running. Standard library only: it starts before every hook.

A process group is not all a hook can start: a job that calls setsid (`setsid rsync … &`, a daemon's double
fork) leaves the group, and a group kill misses it. So the guard is also a child subreaper (PR_SET_CHILD_SUBREAPER:
what the hook orphans is reparented to the guard, not to init), and every end — the hook's own, batchgen's cut at
the bound (`signal_tree` of the guard, from batchgen), batchgen's death — also signals the guard's descendants by
the process tree, wherever their group or session is."""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import subprocess
import sys
import time
from types import FrameType

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PR_SET_CHILD_SUBREAPER = 36
GRACE = 2.0  # seconds between the group's SIGTERM and its SIGKILL when batchgen died


def die_with_parent() -> None:
    """SIGTERM to this process when its parent dies (Linux)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _prctl(option: int, value: int) -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(option, value)


def _walk() -> tuple[dict[int, list[int]], dict[int, tuple[int, int]]]:
    """One walk of /proc: each live process's children; each zombie's parent and process group."""
    children: dict[int, list[int]] = {}
    zombies: dict[int, tuple[int, int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            stat = _stat(int(entry.name)) if entry.name.isdigit() else None
            if stat is not None and stat[0]:
                children.setdefault(stat[1], []).append(int(entry.name))
            elif stat is not None:
                zombies[int(entry.name)] = stat[1], stat[2]
    return children, zombies


def _below(root: int, children: dict[int, list[int]]) -> list[int]:
    """Every process below `root` in the process tree, parents before their children."""
    found: list[int] = []
    todo = [root]
    while todo:
        below = children.get(todo.pop(), [])
        found.extend(below)
        todo.extend(below)
    return found


def _stat(pid: int) -> tuple[bool, int, int] | None:
    """Whether `pid` lives, its parent and its process group. A process whose main thread has exited
    (pthread_exit) while others work on shows "Z" like a zombie: it is none, and lives."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:  # "pid (comm) state ppid pgrp ..."; comm may hold ") "
            fields = handle.read().rsplit(b")", 1)[1].split()
        alive = fields[0] != b"Z" or len(os.listdir(f"/proc/{pid}/task")) > 1
        return alive, int(fields[1]), int(fields[2])
    except (OSError, ValueError, IndexError):
        return None


def signal_tree(root: int, signum: int) -> int:
    """`signum` to every descendant of `root` (the group kill's complement: a job in a session of its own),
    children before their parents. Each through a pidfd, opened before the process's parent is checked again to
    be `root` or in its tree (a killed parent's children move to the subreaper), so a number freed and reused
    meanwhile by an unrelated process is never signalled. Then to each process group of those it signalled
    (never the caller's or root's own: their owners end those): a kill(2) of a group is atomic, and a job that
    forks away faster than a walk of /proc (each process lives less than a walk) goes with its group. A group
    held by a process seen alive in root's tree is one of the tree's: root's session is batchgen's new one, and
    no process can join a group of another session. How many descendants there were (0: none left)."""
    children, zombies = _walk()
    tree = _below(root, children)
    ours = {root, *tree}
    # A zombie child of root holds its group's number until root reaps it (the guard, a subreaper, is the parent
    # of what its tree orphans): its group is the tree's, even when no member of it was seen alive.
    groups = {group for parent, group in zombies.values() if parent == root}
    for pid in reversed(tree):
        try:
            handle = os.pidfd_open(pid)
        except OSError:
            continue  # ended meanwhile
        try:
            stat = _stat(pid)
            if stat is not None and stat[0] and stat[1] in ours:
                signal.pidfd_send_signal(handle, signum)
                groups.add(stat[2])
        except OSError:
            pass
        finally:
            os.close(handle)
    groups.discard(os.getpgrp())
    with contextlib.suppress(OSError):
        groups.discard(os.getpgid(root))
    for group in groups:
        with contextlib.suppress(OSError):
            os.killpg(group, signum)
    return len(tree)


PASSES = 50  # walks of the tree at an end: a job forking as it is killed leaves new orphans to the subreaper


class _Guard:
    def __init__(self, parent: int) -> None:
        self.parent = parent
        self.hook: subprocess.Popen[bytes] | None = None

    def on_term(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM: batchgen's cut at the bound (it SIGKILLs the group itself at its deadline), or its death."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group's SIGTERM reaches this process too
        _signal_group(signal.SIGTERM)
        signal_tree(os.getpid(), signal.SIGTERM)
        if os.getppid() == self.parent:
            signal.signal(signal.SIGTERM, self.on_term)
            return  # batchgen lives: it keeps the bound, the hook ends as it ends
        if self.hook is not None:
            _reaped_within(self.hook.pid, GRACE)
        _end_left_behind()  # not one pass: what a job started between the walk and its own kill came back here
        _signal_group(signal.SIGKILL)  # whatever the hook started and left behind; this process too


def _reaped_within(pid: int, seconds: float) -> None:
    """Wait up to `seconds` for the hook to end. Not Popen.wait: this runs in the signal handler, inside the main
    thread's Popen.wait, whose lock it holds — that wait could never see the hook end and always took `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return
        time.sleep(0.02)


def _end_left_behind() -> None:
    """What the hook left running, in its group or not, ends with it (batchgen ends the group again after)."""
    for _ in range(PASSES):  # a job forking as it is killed: its orphans come back to this subreaper, and go too
        if not signal_tree(os.getpid(), signal.SIGKILL):
            return
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        time.sleep(0.01)


def _signal_group(signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(0, signum)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -I hookguard.py PARENT -- COMMAND [ARGS…]", file=sys.stderr)
        return 2
    guard = _Guard(int(argv[0]))
    signal.signal(signal.SIGTERM, guard.on_term)
    die_with_parent()
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    if os.getppid() != guard.parent:  # the parent died before the line above: nothing to run for
        return 128 + signal.SIGTERM
    try:
        guard.hook = subprocess.Popen(argv[2:])  # stdin, stderr, the group and the environment: the guard's own
    except OSError as exc:
        print(f"cannot run it: {exc.strerror or exc}", file=sys.stderr)
        return 127
    code = guard.hook.wait()
    _end_left_behind()
    if code < 0:  # ended by a signal: end the same way, so batchgen's message says the same as without the guard
        with contextlib.suppress(ValueError, OSError):  # but no core of this Python for the hook's SIGSEGV/SIGABRT
            resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
