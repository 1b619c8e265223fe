"""File safety: every file batchgen writes goes through these, so that a planted symlink never redirects a write
and a crash never leaves a half-written file under a final name.

- `open_nofollow`: open without following a symlink at the path (O_NOFOLLOW), a clear UsageError if there is one.
- `state_dir`: DIR/.batchgen and its folders, created 0700, never through a symlink.
- `write_atomically`: temp file, fsync, `os.replace`, fsync of the folder.

And the one reader of every input file: `read_bounded` (a regular file, bounded, optionally never through a
symlink, optionally only its newest part), over `read_file` for a caller that words its own refusals.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import secrets
import select
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from .errors import StorageError, UsageError

STATE_DIR = ".batchgen"
STREAM_WAIT = 60.0  # seconds read_file(stream=True) waits for a pipe's end: time enough to type a passphrase


class NotRegular(OSError):
    """read_file refused a directory, a FIFO or a device (`is_dir`: which)."""

    def __init__(self, is_dir: bool) -> None:
        super().__init__("a directory" if is_dir else "not a regular file")
        self.is_dir = is_dir


class TooLarge(OSError):
    """read_file refused a file over its limit (`size`: its size when it said so, None when it grew)."""

    def __init__(self, size: int | None) -> None:
        super().__init__("too large")
        self.size = size


class Silent(OSError):
    """read_file's stream did not end within its wait: a FIFO nobody writes, a writer that never closes it."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"nothing came to its end within {wait:g} s (a FIFO nobody writes?)")


class Outside(OSError):
    """read_file refused a file that is not inside the folder it must be in (`within`)."""

    def __init__(self) -> None:
        super().__init__("it is outside the folder it must be in")


def read_bounded(
    path: Path, limit: int, what: str, *, follow: bool = True, tail: bool = False, within: Path | None = None
) -> bytes | str:
    """The bytes of a regular file of at most `limit` bytes, or why not, in words naming `what`: the one bounded
    reader of every input file (manifests, wildcard files, cards, reference images, the CA bundle, the remembered
    service, decisions; through `read_file`, the metrics file, the key file and the review's files). A FIFO or a
    device (`/dev/zero`) named as a manifest or a wildcard file would otherwise block the run for ever or fill
    the memory. `follow=False`: a symlink at the path is refused too (a state file the program wrote itself is
    never one). `tail=True`: a longer file gives its newest `limit` bytes, from the first whole line in them (an
    append-only log whose latest lines matter). `within`: the file opened must lie inside this folder — checked on
    the open descriptor, so a link swapped in after the caller's own check still reads nothing from outside."""
    try:
        data, _ = read_file(path, limit, follow=follow, tail=tail, within=within)
    except (NotRegular, Outside) as exc:
        return f"cannot read {what}: {exc.strerror or exc}"
    except TooLarge as exc:
        if exc.size is not None:
            return f"{what} is {exc.size:,} bytes; the limit is {limit:,}"
        return f"{what} is over {limit:,} bytes; the limit is {limit:,}"
    except OSError as exc:
        return f"cannot read {what}: {exc.strerror or exc}"
    return data


def read_file(
    path: Path | str,
    limit: int,
    *,
    follow: bool = True,
    tail: bool = False,
    stream: bool = False,
    within: Path | None = None,
    wait: float = STREAM_WAIT,
) -> tuple[bytes, int]:
    """read_bounded's reader, for a caller with its own words: the bytes and the file's mode, or OSError (the
    OS's, NotRegular or TooLarge). `stream=True` takes a pipe or a device as well as a regular file (a key from
    `<(pass show key)`), read as a stream, never past `limit` nor for more than `wait` seconds (Silent): a FIFO
    nobody writes, or a writer that never ends, is an error, not a run that waits for ever. `within`: see
    read_bounded (Outside)."""
    fd, info = _opened(path, follow=follow, within=within, stream=stream)
    if tail:
        return _read_tail(fd, limit, info.st_size), info.st_mode
    if not stat.S_ISREG(info.st_mode):
        try:
            return _read_stream(fd, limit, wait), info.st_mode
        finally:
            os.close(fd)
    with os.fdopen(fd, "rb") as handle:
        if info.st_size > limit:
            raise TooLarge(info.st_size)
        data = handle.read(limit + 1)  # bounded even if the file grows while it is read
    if len(data) > limit:
        raise TooLarge(None)
    return data, info.st_mode


def _read_stream(fd: int, limit: int, wait: float) -> bytes:
    """A pipe's or a device's bytes to its end, from the non-blocking `fd`: TooLarge past `limit`, Silent when
    the end has not come within `wait` seconds."""
    end = time.monotonic() + wait
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    data = b""
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise Silent(wait)
        if not poller.poll(left * 1000):
            continue
        try:
            chunk = os.read(fd, limit + 1 - len(data))
        except BlockingIOError:  # woken, but nothing to read yet
            continue
        if not chunk:
            return data
        data += chunk
        if len(data) > limit:
            raise TooLarge(None)


def open_regular(path: Path, limit: int) -> BinaryIO:
    """A regular file of at most `limit` bytes, open for reading; OSError (NotRegular, TooLarge) otherwise. Opened
    without blocking: a FIFO planted at its name is refused at once instead of waiting for a writer."""
    fd, info = _opened(path)
    if info.st_size > limit:
        os.close(fd)
        raise TooLarge(info.st_size)
    return os.fdopen(fd, "rb")


def _opened(
    path: Path | str, *, follow: bool = True, within: Path | None = None, stream: bool = False
) -> tuple[int, os.stat_result]:
    """The descriptor and status of a file fit to read (read_file, open_regular), or OSError (the OS's, Outside,
    NotRegular; a pipe or a device only with `stream`). Opened without blocking: a FIFO's open returns at once,
    writer or not."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    # fstat before fdopen: os.fdopen refuses a directory with IsADirectoryError, and the fd must not leak.
    info = os.fstat(fd)
    if within is not None and not _opened_inside(fd, path, within):
        os.close(fd)
        raise Outside()
    if stat.S_ISDIR(info.st_mode) or not (stat.S_ISREG(info.st_mode) or stream):
        os.close(fd)
        raise NotRegular(stat.S_ISDIR(info.st_mode))
    return fd, info


def _opened_inside(fd: int, path: Path | str, folder: Path) -> bool:
    """Whether the file open at `fd` lies inside `folder`: its path as the kernel holds it for the descriptor
    (/proc/self/fd), so no rename or link swapped in between a caller's check and the open can lead outside."""
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc (not Linux): the path resolved now, the best there is
        opened = os.path.realpath(path)
    root = os.path.realpath(folder)
    if not os.path.isabs(opened):  # a pipe or a socket ("pipe:[4026]"): in no folder at all
        return False
    return os.path.commonpath([root, opened]) == root


def _read_tail(fd: int, limit: int, size: int) -> bytes:
    """The newest `limit` bytes of the open file `fd`, from the first whole line when the file is longer."""
    start = max(0, size - limit)
    try:
        data = os.pread(fd, limit, start)
    finally:
        os.close(fd)
    if start > 0:  # it begins inside a line
        cut = data.find(b"\n")
        data = b"" if cut < 0 else data[cut + 1 :]
    return data


def open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """Open without following a symlink planted at `path`."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(f"{path} is a symbolic link; batchgen will not write through it") from exc
        raise


def check_output_dir(directory: Path, uid: int | None = None) -> Path:
    """Make sure DIR and DIR/.batchgen can be ours (created if missing); returns DIR/.batchgen.

    --out naming a file, a path under a file, a folder this user cannot write, or a .batchgen that belongs to
    another user (its journal and lock would then be shared across users) is a UsageError: exit 2 with what to
    do, never a traceback.
    """
    uid = os.geteuid() if uid is None else uid
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--out {directory} is a file, not a directory; choose a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _storage(exc, directory)
        raise UsageError(f"--out {directory}: cannot create it: {exc.strerror or exc}") from exc
    folder = directory / STATE_DIR
    if folder.exists() and not folder.is_symlink():
        owner = folder.stat().st_uid
        if owner != uid:
            raise UsageError(
                f"{folder} belongs to another user (uid {owner}); run batchgen as that user, or use another --out"
            )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"--out {directory}: this user (uid {uid}) cannot write there; use another --out")
    try:
        return state_dir(directory)
    except OSError as exc:
        _storage(exc, directory)
        raise UsageError(f"--out {directory}: cannot create {folder}: {exc.strerror or exc}") from exc


def _storage(exc: OSError, directory: Path) -> None:
    """A full or failing disk is a StorageError (exit 5: free space and rerun), not a usage error."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
        raise StorageError(f"cannot write in {directory}: {exc.strerror or exc}") from exc


def write_failure(directory: Path, item_id: str, exc: OSError) -> StorageError:
    """Why a run stopped on a write to DIR (exit 5, the ledger intact, the task kept for the next run, unpaid).
    Only a full disk asks for space: a name the file system refuses (names.check_lengths runs before sending, so
    this is a file system with shorter limits somewhere under DIR) asks for a shorter --name, and anything else
    (a folder where a file goes, a read-only mount) says what is in the way."""
    where = f"item {item_id!r}: cannot write {exc.filename2 or exc.filename or 'a file'}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(
            f"cannot write in {directory}: {exc.strerror or exc}; the ledger is intact: free some space and rerun "
            "to continue"
        )
    if exc.errno in (errno.ENAMETOOLONG, errno.EILSEQ):
        return StorageError(f"{where} (this file system refuses the name); rerun with a shorter --name to fetch it")
    return StorageError(f"{where}; the ledger is intact and the paid task kept: fix this and rerun to fetch it")


def state_dir(directory: Path, sub: str | None = None) -> Path:
    """DIR/.batchgen (or a folder in it), created if missing; never through a symlink."""
    path = directory / STATE_DIR
    for folder in (path, path / sub) if sub else (path,):
        if folder.is_symlink():
            raise UsageError(f"{folder} is a symbolic link; batchgen keeps its files only in a real directory")
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path / sub if sub else path


def write_atomically(path: Path, data: bytes | Iterable[bytes], temp_dir: Path, *, mode: int | None = None) -> None:
    """Write `data` (bytes, or chunks of them: a large document never held whole) to a new file in temp_dir, fsync
    it, and rename it over `path` (then fsync the folder).

    `mode`, when given, is set exactly, whatever the umask (a file another user's daemon must read)."""
    temp = temp_dir / temp_name(path)
    # A SIGKILLed writer's temp files for this same path: nothing else would ever remove them.
    clear_stale(temp_dir, glob.escape(temp.name.rsplit(".", 3)[0]) + ".*.tmp")
    fd = open_nofollow(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            if isinstance(data, bytes):
                handle.write(data)
            else:
                handle.writelines(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)


TEMP_HEAD = 40  # bytes of the final name kept in a temp name, for a person reading .batchgen/tmp/
TEMP_SUFFIX = "tmp"


def temp_name(path: Path, suffix: str = TEMP_SUFFIX) -> str:
    """A temp file's name for the final `path`: unique per final path and per writer, and short whatever the path.

    Built from the hash of the whole path, never from its last part alone: `a/1.png.json` and `b/1.png.json`
    written at once into one temp folder must not meet (ATTACKS 9). A head of the name (at most TEMP_HEAD bytes)
    keeps it readable; the whole name stays under 100 bytes however long the final name is (ATTACKS 2)."""
    head = os.fsencode(path.name)[:TEMP_HEAD].decode("utf-8", "ignore").lstrip(".")
    digest = hashlib.sha256(os.fsencode(os.path.abspath(path))).hexdigest()[:16]
    return f".{head}.{digest}.{os.getpid()}.{secrets.token_hex(4)}.{suffix}"


def clear_stale(folder: Path, pattern: str) -> None:
    """Remove temp files matching `pattern` (`….<pid>.<anything>.tmp` or `….<pid>.tmp`) whose writer is gone:
    a SIGKILL leaves them, nothing else ever would. A live writer's (another process at this moment) are kept."""
    for path in folder.glob(pattern):
        pids = [part for part in path.name.split(".")[-3:-1] if part.isdigit()]
        if pids and not pid_alive(int(pids[0])):
            with contextlib.suppress(OSError):
                path.unlink()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process: alive
    return True


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
