"""The one exception tree of batchgen. Every error a user can meet is one of these.

    BatchgenError                      exit 1 unless a subclass says otherwise
    ├── UsageError                     exit 2: bad flags, bad configuration (the user must act)
    │   ├── ManifestError              exit 2: the manifest is invalid; carries every Problem at once
    │   ├── LedgerError                exit 2: results.json or the journal cannot be trusted
    │   └── CardError                  exit 2: a model card cannot be read (names its file and line)
    ├── LockedError                    exit 4: another run holds the output directory
    ├── StorageError                   exit 5: the disk refused a write (full, I/O error); the run stops
    ├── ServiceError                   the service answered, and not with success
    │   ├── AuthError                  exit 3: 401, the key was refused (stop the run)
    │   ├── QuotaError                 exit 3: 403, quota or access (stop the run)
    │   ├── RequestRejected            400 / 413 / 422: this item's request is wrong (never retried)
    │   │   └── ModelUnavailable       the model is not offered (any more): its items are not sent (gone.py)
    │   ├── RateLimited                429: saturated (back off, retry)
    │   └── ServerError                5xx or an unreadable answer (retry with backoff)
    ├── TransportError                 the network failed: no answer at all (retry with backoff)
    ├── WayRefused                     exit 3: the way to the service refused us: a certificate that does
    │                                  not verify, a proxy that refuses (stop the run; no retry can help)
    └── DownloadError                  a result file was missing, broken or not an image (retry)

What to do about each branch (retry, fail the item, stop the run) is decided in one place, the engine's submit
and poll steps; a task that ends in `fail` is not an exception but a record, classified by `failures.py`.
aiohttp's own exceptions are translated into this tree in `client.py` only (`raise TransportError(...) from exc`).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from .escapes import visible


class ExitCode(enum.IntEnum):
    """SPEC's exit codes, one name each (the most severe wins: SOFTWARE, AUTH, USAGE, LOCKED, a signal,
    INCOMPLETE, FAILED, OK). A signal N is `ExitCode.signal(N)`, 128 + N."""

    OK = 0  # every item succeeded
    FAILED = 1  # finished, and some items failed for good
    USAGE = 2  # usage or manifest error; nothing submitted
    AUTH = 3  # access refused: the key or the quota, or the way (a certificate, a proxy)
    LOCKED = 4  # another run holds DIR's lock
    INCOMPLETE = 5  # items remain pending or submitted; also a write the disk refused
    SOFTWARE = 70  # sysexits.h EX_SOFTWARE: a bug in batchgen
    SIGNAL = 128  # 128 + N: stopped by signal N

    @staticmethod
    def signal(signum: int) -> int:
        """What a shell reports for a program stopped by signal `signum`."""
        return ExitCode.SIGNAL + signum


class BatchgenError(Exception):
    """Base of every batchgen error."""

    exit_code: ExitCode = ExitCode.FAILED


class UsageError(BatchgenError):
    """The user must fix a flag, a file or the environment."""

    exit_code = ExitCode.USAGE


_POSITION = re.compile(r"#[0-9]+")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a manifest, located by file, line, item and field."""

    file: str
    line: int | None
    message: str
    item: str | None = None  # the item's id as given, bare ("harbor-dawn"), or "#3" for the third one without
    field: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        parts = [where]
        if self.item is not None:  # an id is quoted (it may hold spaces or ':'); a position is not
            parts.append(f"item {self.item}" if _POSITION.fullmatch(self.item) else f"item {self.item!r}")
        if self.field is not None:
            parts.append(self.field)
        return visible(": ".join(parts) + ": " + self.message)  # a manifest's text, shown inert on one line


class ManifestError(UsageError):
    """A manifest is invalid. `problems` holds every problem found, in file order."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        count = len(problems)
        head = f"{count} problem{'s' if count != 1 else ''} in the manifest; nothing was submitted"
        super().__init__("\n".join([*(str(p) for p in problems), head]))


class LedgerError(UsageError):
    """The ledger or its journal cannot be read or trusted."""


class CardError(UsageError):
    """A model card (built-in or a user's) is malformed; the message names the file and the line."""


class LockedError(BatchgenError):
    """Another run holds the output directory's lock."""

    exit_code = ExitCode.LOCKED


class StorageError(BatchgenError):
    """A write to the output directory failed (ENOSPC, EIO, ...). The run stops; the ledger stays valid.

    Exit 5, "incomplete": what was done is recorded, and a rerun continues once there is room.
    """

    exit_code = ExitCode.INCOMPLETE


class ServiceError(BatchgenError):
    """The service answered with an error. `status` is the HTTP status, `code` the body's code."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class AuthError(ServiceError):
    """401: the key was refused. The whole run stops."""

    exit_code = ExitCode.AUTH


class QuotaError(ServiceError):
    """403: insufficient quota or access denied. The whole run stops."""

    exit_code = ExitCode.AUTH


class RequestRejected(ServiceError):
    """400, 413 or 422: this item's request will never be accepted as it is."""


class ModelUnavailable(RequestRejected):
    """The service does not offer the request's model: 400 "unsupported model", model_price_error, or the
    gateway's 503 "no channel available for model X", naming it. Nothing was created (gone.py)."""

    def __init__(self, message: str, *, model: str, status: int | None = None) -> None:
        super().__init__(message, status=status, code="model_unavailable")
        self.model = model


class RateLimited(ServiceError):
    """429: the service is saturated. `retry_after` is the server's wait in seconds, when it sent one."""

    def __init__(
        self, message: str, *, status: int | None = 429, code: str | None = "429", retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


class ServerError(ServiceError):
    """5xx, or an answer that could not be read: worth another try after a pause."""


class TransportError(BatchgenError):
    """No answer: connection refused or dropped, timeout, DNS. Worth another try after a pause.

    `sent` is False only when the request certainly never reached the service (no connection was made):
    a createTask that failed with `sent` True may have been created, and paid for, all the same.
    """

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class WayRefused(BatchgenError):
    """The way to a host refused us before any request reached it: its certificate does not verify (untrusted,
    expired, another host's), or the proxy refused (407, CONNECT denied). Nothing was sent, so nothing was paid;
    retrying cannot help, so the run stops at once. The message names the host, the cause and what to do."""

    exit_code = ExitCode.AUTH

    def __init__(self, message: str, *, host: str, proxy: bool = False) -> None:
        super().__init__(message)
        self.host = host
        self.proxy = proxy  # the proxy refused (else: the certificate)


class DownloadError(BatchgenError):
    """A result file could not be fetched whole, or is not the image it should be."""

    def __init__(
        self, message: str, *, expired: bool = False, permanent: bool = False, unreachable: bool = False
    ) -> None:
        super().__init__(message)
        self.expired = expired  # 401/403/404/410 from the result host: the signed URL may have expired
        self.permanent = permanent  # no retry can help (malformed, not http(s), or carrying the key)
        self.unreachable = unreachable  # no connection to the result host at all
