"""File safety: every file batchgen writes goes through these, so that a planted symlink never redirects a write
and a crash never leaves a half-written file under a final name.

- `open_nofollow`: open without following a symlink at the path (O_NOFOLLOW), a clear UsageError if there is one.
- `state_dir`: DIR/.batchgen and its folders, created 0700, never through a symlink.
- `write_atomically`: temp file, fsync, `os.replace`, fsync of the folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable
from pathlib import Path

from .errors import StorageError, UsageError

STATE_DIR = ".batchgen"


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
    temp = temp_dir / f".{path.name}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)
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


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
