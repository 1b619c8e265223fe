"""Run settings: small frozen value objects, resolved once (flag > environment > default).

The API key is held in a `Secret`, which never shows its value in repr or str.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import json
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, unquote_plus, urlsplit

from . import schema
from .errors import UsageError
from .files import NotRegular, TooLarge, read_file
from .models import Registry
from .prices import Prices
from .proxies import ProxySettings


@dataclass(frozen=True, slots=True)
class Secret:
    """A value that must never be printed: repr and str show stars only."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__


MIN_SECRET = 6


@functools.lru_cache(maxsize=16)  # a run's few secrets, asked for at every message and item checked
def secret_forms(secret: str) -> tuple[str, ...]:
    """The secret as it may appear in text: itself, URL-encoded (%XX in either case, + for a space), JSON-escaped
    (a `"` or `\\` in a proxy password, in a --log-format json line), and as the id and name makers transform it
    (`-` and other punctuation as `_` or `-`: ids.token, names.slug)."""
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret), quote_plus(secret, safe="")}
    forms |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), form) for form in forms}
    forms |= {json.dumps(secret, ensure_ascii=ascii_only)[1:-1] for ascii_only in (True, False)}
    runs = _ALNUM.findall(secret)
    forms |= {"_".join(runs), "-".join(runs), secret.replace("-", "_"), secret.replace("_", "-")}
    forms.add(re.sub(r"[^A-Za-z0-9_-]+", "-", secret).strip("-_"))  # names.slug's form (its case: any)
    return tuple(sorted(forms, key=len, reverse=True))


_ALNUM = re.compile(r"[A-Za-z0-9]+")


def redact(text: str, secret: str | Sequence[str] | None) -> str:
    """Mask a secret (or each of several: the key, proxy credentials), and its derived forms (secret_forms), in
    text, whatever their case (a slug lowercases). A string shorter than MIN_SECRET (no real key, but a proxy
    password may be that short) is masked only where it stands alone, not inside a longer word: masking it
    everywhere would mangle ordinary words; one shorter than MIN_SHORT is not masked at all."""
    ones = (secret,) if isinstance(secret, str) or secret is None else secret
    for one in sorted((one for one in ones if one), key=len, reverse=True):  # a short one never cuts a long open
        if len(one) < MIN_SHORT:
            continue
        if len(one) < MIN_SECRET:
            text = _alone(one).sub(_masked_alone, text)
            continue
        folded = text.casefold()
        for form in secret_forms(one):
            if form and form.casefold() in folded:
                text = re.sub(re.escape(form), "****", text, flags=re.IGNORECASE)
                folded = text.casefold()
    return text


MIN_SHORT = 3


@functools.lru_cache(maxsize=16)
def _alone(secret: str) -> re.Pattern[str]:
    """A short secret, URL-encoded or JSON-escaped (a `"` in a --log-format json line is `\\"`) or not, with no
    letter or digit on either side; and the run of backslashes before it (see _masked_alone)."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret, safe="")}
    forms |= {json.dumps(secret, ensure_ascii=ascii_only)[1:-1] for ascii_only in (True, False)}
    alternatives = "|".join(map(re.escape, sorted(forms, key=len, reverse=True)))
    return re.compile(r"(?<!\\)(\\*)(?<![A-Za-z0-9])(?:" + alternatives + r")(?![A-Za-z0-9])", re.IGNORECASE)


def _masked_alone(match: re.Match[str]) -> str:
    """The mask of a short secret. After an odd run of backslashes its first character is an escape's (`\\n12`
    in a JSON line, or a line `visible` escaped, is a line break and "12"): the escape's backslash goes under the
    mask too, or `\\****` would be no JSON."""
    run = match.group(1)
    return run[: len(run) // 2 * 2] + "****"


SECRET_PROBE = 16  # characters of the key's letters and digits: what an id (24) or a name slug (31) keeps of it


def holds_secret(text: str, secret: str | None) -> bool:
    """Whether `text` holds the secret, or the start of it that an id or a file name would keep, in any form:
    URL-encoded, case-folded, its punctuation changed or dropped. For refusing a value before it can flow into an
    id, a file name, the ledger or a log (runner), where a truncated form could no longer be masked."""
    if not secret or len(secret) < MIN_SECRET:
        return False
    probe = _probe(secret)
    return len(probe) >= MIN_SECRET and probe in _letters(unquote_plus(text) if "%" in text or "+" in text else text)


@functools.lru_cache(maxsize=4)
def _probe(secret: str) -> str:
    return _letters(secret)[:SECRET_PROBE]


_NOT_ALNUM = str.maketrans("", "", "".join(chr(c) for c in range(128) if not chr(c).isalnum()))


def _letters(text: str) -> str:
    """The ASCII letters and digits of `text`, case-folded (a str.translate: 100,000 prompts in a blink)."""
    if text.isascii():
        return text.lower().translate(_NOT_ALNUM)
    return "".join(_ALNUM.findall(text)).casefold()


def unmistakable(secret: str | Sequence[str] | None) -> tuple[str, ...]:
    """The secrets (the key, a long proxy credential) that text holds by no chance: for what is refused or
    changed, not only masked in a line. A short proxy password standing alone in a result URL ("png" in
    ".../1.png") is a word of the URL: the service never sees the proxy's password."""
    ones = (secret,) if isinstance(secret, str) or secret is None else secret
    return tuple(one for one in ones if one and len(one) >= MIN_SECRET)


def carries(text: str, secret: str | Sequence[str] | None) -> bool:
    """Whether text holds the secret in any of its forms."""
    return redact(text, secret) != text


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff for retryable failures (429, 5xx, transport): capped exponential with jitter, in seconds.

    `delay` is the one backoff formula of batchgen: the engine's retries and the throttle's shared cool-down
    after 429s (limits.Cooldown) both use it.
    """

    calls: int = 8  # calls per operation (one createTask, one download) before the item is left for the next run
    wait_initial: float = 1.0
    wait_max: float = 60.0
    wait_jitter: float = 1.0  # up to this many seconds added at random

    def delay(self, failed: int, jitter: float) -> float:
        """The wait after the `failed`-th failed call in a row (1-based); `jitter` is a random number in [0, 1).

        (A "call" is one HTTP call of an operation; an item's "attempts" are its submissions, in the ledger.)"""
        return min(self.wait_max, self.wait_initial * 2.0 ** (failed - 1)) + self.wait_jitter * jitter


@dataclass(frozen=True, slots=True)
class PollSchedule:
    """The cold start of the poll scheduler (polls.py): how often to probe a task while nothing is known of the
    service's latencies — the API family's advice, scaled by `first`.

    Every 2-3 s for the first 30 s, 5-10 s after that, 15-30 s after two minutes.
    """

    first: float = 2.5

    def interval(self, age: float) -> float:
        if age < 12 * self.first:
            return self.first
        if age < 48 * self.first:
            return 3 * self.first
        return 8 * self.first


@dataclass(frozen=True, slots=True)
class Timeouts:
    """HTTP timeouts in seconds."""

    connect: float = 10.0
    api_read: float = 60.0  # one API answer
    # One createTask call, whole: a stopping run waits for a call already sent (it may be paid), and the
    # systemd unit gives it TimeoutStopSec=60 before SIGKILL; 45 s leaves room for the ledger and the exit.
    create: float = 45.0
    download_read: float = 60.0  # silence between two chunks of a result file
    download_total: float = 900.0  # one whole result file


@dataclass(frozen=True, slots=True)
class RunSettings:
    manifest: Path
    out: Path
    api_base: str
    api_key: Secret | None
    simulate: bool = False
    # The API family publishes 100+ tasks running at once: at 20 creates per 10 s and 20-45 s per image, a run
    # has up to 90 in flight, so the create window, not this limit, sets the pace. A 429 teaches the real figure.
    concurrency: int = 100
    create_rate: tuple[int, float] = (20, 10.0)  # the API family allows 20 creates per 10 s per account
    poll_rate: float = 8.0  # status queries per second (the family allows about 10 per key)
    poll: PollSchedule = PollSchedule()
    forget_service: bool = False  # drop what earlier runs learned about the service (memory.py) first
    max_attempts: int = 3
    task_timeout: float = 1800.0
    retry_failed: bool = False
    reroll: bool = False  # also submit a new roll of every item rejected in review (rolls.py)
    adopt_ledger: bool = False  # continue a ledger that another manifest made
    limit: int | None = None
    max_runtime: float | None = None
    dry_run: bool = False
    callback_url: str | None = None
    callback_listen: str | None = None
    log_format: str = "text"
    quiet: bool = False
    verbose: bool = False
    progress: bool = True
    price: Decimal | None = None  # per image, any currency (--price / BATCHGEN_PRICE): estimates and spend
    name: str = "{id}"  # --name: the file-name template (names.py)
    metadata: str = "none"  # --metadata: none | sidecar | png (provenance.py)
    cards: Registry | None = None  # the model cards (--models-dir): None, the built-in ones
    prices: Prices | None = None  # --price: one amount (also `price`) or per model
    max_spend: Decimal | None = None  # --max-spend: no create that could take the run's spend past it
    max_image_bytes: int = 64 * 1024 * 1024  # a 2816x1536 PNG is under 13 MB uncompressed-ish; 64 MB is generous
    retry: RetryPolicy = RetryPolicy()
    timeouts: Timeouts = Timeouts()
    # The way to the service (proxies.py): --proxy / the *_PROXY variables, --ca-bundle or the system's CAs.
    proxy: ProxySettings = field(default_factory=ProxySettings)
    ca_bundle: Path | None = None

    def secrets(self) -> tuple[str, ...]:
        """Everything the masking boundary hides: the key and the proxies' credentials."""
        key = (self.api_key.value,) if self.api_key else ()
        return key + self.proxy.secrets()


def run_default(name: str) -> Any:
    """The default of one `RunSettings` field: the one place a run's defaults live. The parser (args.py), its
    --help and the generated docs (gendocs.py) read them from here."""
    (found,) = [f for f in fields(RunSettings) if f.name == name]
    return found.default


def format_rate(rate: tuple[int, float]) -> str:
    """(20, 10.0) -> '20/10': a create window as the command line writes it."""
    return f"{rate[0]}/{rate[1]:g}"


KEY_FILE_WAIT = 60.0  # seconds for a key file that is a pipe to give the key and end (a passphrase typed)
KEY_FILE_LIMIT = 4096  # bytes: a key is a few dozen characters; more is not a key file (or is /dev/zero)


def read_key(env: Mapping[str, str], key_file: str | None, warn: list[str]) -> Secret | None:
    """The API key from --api-key-file, else $BATCHGEN_API_KEY. Never from a flag value.

    The file may be a pipe (`--api-key-file <(pass show key)`), so it is read as a stream, but never more than
    KEY_FILE_LIMIT bytes: `/dev/zero` is a clear error, not all the memory of the machine."""
    if key_file:
        text = _read_key_file(key_file, warn)
        if not text:
            raise UsageError(f"--api-key-file {key_file} is empty")
        if problem := key_problem(text):
            raise UsageError(f"--api-key-file {key_file}: {problem}")
        return Secret(text)
    value = env.get("BATCHGEN_API_KEY", "").strip()
    if value and (problem := key_problem(value)):
        raise UsageError(f"BATCHGEN_API_KEY: {problem}")
    return Secret(value) if value else None


def _read_key_file(key_file: str, warn: list[str]) -> str:
    try:
        # A pipe too (`<(pass show key)`), waited for KEY_FILE_WAIT seconds at most: a FIFO nobody writes.
        data, mode = read_file(key_file, KEY_FILE_LIMIT, stream=True, wait=KEY_FILE_WAIT)
    except NotRegular:  # only a directory, when streaming
        raise UsageError(f"--api-key-file {key_file}: cannot read it: {os.strerror(errno.EISDIR)}") from None
    except TooLarge:
        raise UsageError(
            f"--api-key-file {key_file}: more than {KEY_FILE_LIMIT} bytes; a key file holds the key on one line"
        ) from None
    except OSError as exc:
        raise UsageError(f"--api-key-file {key_file}: cannot read it: {exc.strerror or exc}") from exc
    if stat.S_ISREG(mode) and mode & (stat.S_IRWXG | stat.S_IRWXO):
        warn.append(
            f"--api-key-file {key_file} can be read by others (mode {stat.S_IMODE(mode):o}); chmod 600 {key_file}"
        )
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise UsageError(f"--api-key-file {key_file}: not UTF-8 text; a key file holds the key on one line") from None


def key_problem(key: str) -> str | None:
    """Why a key cannot go in an HTTP header, or None: it must be one line of printable ASCII, no spaces."""
    for char in key:
        if not ("!" <= char <= "~"):
            what = "a line break" if char in "\r\n" else f"the character U+{ord(char):04X}"
            return f"the key holds {what}; a key is one line of printable ASCII without spaces"
    return None


def check_api_base(url: str) -> str:
    """The base URL without a trailing slash; refuses plain http to anything but loopback (the key goes there)."""
    url = url.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # a port out of range or not a number raises here, not in the middle of the run
    except ValueError:
        raise UsageError(f"--api-base: not a valid URL: {schema.describe(url)}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--api-base: expected an http(s) URL such as https://api.example.com; got {url!r}")
    if "@" in parts.netloc:  # never echo it: what is before the @ is a password
        raise UsageError(
            f"--api-base {parts.scheme}://…@{parts.hostname}: credentials in the URL are refused; the key goes in "
            "the Authorization header, from --api-key-file or BATCHGEN_API_KEY"
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise UsageError(
            f"--api-base {url}: refusing to send the API key over plain http to a host that is not "
            "this machine; use https://"
        )
    return url


def check_callback_url(url: str) -> str | None:
    """Why a callback URL is unacceptable, or None: https, or plain http to a loopback address only."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return f"not a valid URL: {schema.describe(url)}"
    if parts.scheme == "https" and host:
        return None
    if parts.scheme == "http" and host and is_loopback(host):
        return None
    if parts.scheme == "http" and host:
        return "must be https:// (plain http:// is allowed only to a loopback address)"
    return f"expected an https:// URL; got {schema.describe(url)}"


def is_loopback(host: str) -> bool:
    """Whether a host name or address is this machine's loopback."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
