"""The end actions' settings and what they are told (SPEC §3; run by finish.py): the hooks split once with
shlex, the notify and ping URLs as secrets, the run's summary (the JSON on a hook's stdin, the notification's
title and body), and the environments of the children — never the key, proxy credentials, notify or ping URLs.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from . import __version__, notify, records
from .config import Secret, carries
from .errors import UsageError
from .escapes import inert_line
from .progress import counts_text
from .proxies import ProxySettings

T = TypeVar("T")
NOTIFY_ON = ("problem", "always")
PING_OK = (0, 1, 5)  # exits a monitor should see as a night that ran: done, some failed for good, incomplete
FIRST_FAILURES = 10
STRIPPED = ("BATCHGEN_API_KEY", "BATCHGEN_PROXY", "BATCHGEN_NOTIFY", "BATCHGEN_PING")
_SEVERAL = re.compile(r"[\s,]+(?=[A-Za-z][A-Za-z0-9+.-]*://)")  # "url1, url2": split where a scheme follows
PROXY_VARS = re.compile(r"(?i)^(https?|all|ftp|no)_proxy$")


@dataclass(frozen=True, slots=True)
class Bounds:
    """Seconds the end actions may take together; a test makes them short."""

    total: float = 120.0
    after_signal: float = 10.0  # a systemd stop (TimeoutStopSec=60) must still fit after the engine's drain
    grace: float = 2.0  # SIGTERM this long before the limit, SIGKILL at it
    ping: float = 10.0  # one ping's own timeout (never more than what is left)


NOTIFY_ON_DEFAULT = "problem"


@dataclass(frozen=True, slots=True)
class EndActions:
    hooks: tuple[tuple[str, ...], ...] = ()
    notify: tuple[Secret, ...] = ()  # Apprise URLs (each may hold several, as Apprise accepts)
    notify_on: str = NOTIFY_ON_DEFAULT
    ping: Secret | None = None
    bounds: Bounds = Bounds()

    def urls(self) -> list[str]:
        """The notify and ping URLs whole: a variable of ours holding one is kept from every child."""
        return [u.value for u in self.notify] + ([self.ping.value] if self.ping else [])

    def secrets(self) -> list[str]:
        """Every text that must never reach a log line or a hook: the URLs, and their parts."""
        found = [part for url in self.notify for part in notify.url_secrets(url.value)]
        if self.ping is not None:
            found += notify.url_secrets(self.ping.value)
        return sorted(set(found), key=len, reverse=True)


def resolve(
    on_finish: list[str] | None,
    notify_urls: list[str] | None,
    notify_on: str | None,
    ping: str | None,
    env: Mapping[str, str],
    *,
    strict: bool = True,
    warn: Callable[[str], object] | None = None,
) -> EndActions:
    """The end actions from the flags, else the environment (BATCHGEN_NOTIFY, BATCHGEN_PING). `strict`: a hook
    that shlex cannot split, a ping URL that is not http(s), or --notify without Apprise is a UsageError;
    otherwise (the flags could not all be read) what is unusable is left out."""
    hooks: list[tuple[str, ...]] = []
    for text in on_finish or []:
        try:
            argv = tuple(shlex.split(text))
        except ValueError as exc:
            if strict:
                raise UsageError(
                    f"--on-finish {text!r}: {exc}; quote it as for a shell (it is never run by one)"
                ) from None
            continue
        if argv:
            hooks.append(argv)
        elif strict:
            raise UsageError("--on-finish: an empty command")
    if notify_urls and warn:
        warn("--notify on the command line is visible to other users (ps); prefer BATCHGEN_NOTIFY")
    if ping and warn:
        warn("--ping on the command line is visible to other users (ps); prefer BATCHGEN_PING")
    given = notify_urls or [env.get("BATCHGEN_NOTIFY", "")]
    urls = [u for text in given for u in _SEVERAL.split(text.strip()) if u.strip()]
    if urls and strict and not notify.available():
        raise UsageError("--notify needs Apprise: pip install 'batchgen[notify]'")
    ping_url = (ping or env.get("BATCHGEN_PING", "")).strip() or None
    if ping_url and urlsplit(ping_url).scheme not in ("http", "https"):
        if strict:
            raise UsageError("--ping: expected an http(s):// URL (BATCHGEN_PING too); the URL itself is not shown")
        ping_url = None
    return EndActions(
        hooks=tuple(hooks),
        notify=tuple(Secret(u.strip()) for u in urls),
        notify_on=notify_on if notify_on in NOTIFY_ON else NOTIFY_ON_DEFAULT,
        ping=Secret(ping_url) if ping_url else None,
    )


def mask_argv(argv: list[str]) -> list[str]:
    """argv with the values of --notify and --ping masked (for the crash log's head)."""
    masked: list[str] = []
    hide = False
    for arg in argv:
        if hide:
            masked.append("****")
        elif arg.startswith(("--notify=", "--ping=")):
            masked.append(arg.split("=", 1)[0] + "=****")
        else:
            masked.append(arg)
        hide = arg in ("--notify", "--ping")
    return masked


# ---------------------------------------------------------------- the run's summary


@dataclass(slots=True)
class Summary:
    """What the end actions are told of the run."""

    code: int
    meaning: str
    manifest: str | None  # the path as given
    directory: str | None
    counts: dict[str, int] | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)

    def document(self) -> dict[str, Any]:
        """The JSON a hook reads on stdin."""
        directory = os.path.abspath(self.directory) if self.directory else None
        sheet = os.path.join(directory, "index.html") if directory else None
        f = self.figures
        return {
            "batchgen": __version__,
            "exit_code": self.code,
            "exit_meaning": self.meaning,
            "manifest": os.path.abspath(self.manifest) if self.manifest else None,
            "dir": directory,
            "ledger": os.path.join(directory, "results.json") if directory else None,
            "contact_sheet": sheet if sheet and os.path.isfile(sheet) else None,
            "counts": self.counts,
            "paid_creates": f.get("paid_creates"),
            "price": f.get("price"),
            "spend": f.get("spend"),
            "spend_total": f.get("spend_total"),
            "first_failures": self.failures[:FIRST_FAILURES],
        }


def first_failures(items: Mapping[str, records.Record], ids: Iterable[str] | None) -> list[dict[str, Any]]:
    """The run's first failed items (in the ledger's order; only this manifest's, when `ids` says which), with
    their reasons."""
    wanted = ids if ids is None or isinstance(ids, AbstractSet) else set(ids)  # a frozenset is not copied (4 MB)
    found: list[dict[str, Any]] = []
    for item_id, record in items.items():
        if record["state"] != "failed" or (wanted is not None and item_id not in wanted):
            continue
        error = record["error"]
        kind, code, message = (error["kind"], records.error_code(error), error["message"]) if error else (None,) * 3
        found.append({"id": item_id, "kind": kind, "code": code, "message": message})
        if len(found) == FIRST_FAILURES:
            break
    return found


def message(summary: Summary) -> tuple[str, str]:
    """The notification's title and body."""
    doc = summary.document()
    name = Path(summary.manifest).name if summary.manifest else "(no manifest)"
    title = f"batchgen: {inert_line(name, 100)}: {summary.meaning}"
    lines = [f"exit {summary.code}: {summary.meaning}", f"DIR: {inert_line(doc['dir'] or '(unknown)')}"]
    if summary.counts is not None:
        lines.append(counts_text(summary.counts))
    if doc["paid_creates"] is not None:
        spent = f"; spent {doc['spend']:g} ({doc['spend_total']:g} so far)" if doc["spend"] is not None else ""
        lines.append(f"{doc['paid_creates']} paid creates{spent}")
    if summary.failures:
        lines.append("first failures:")
        for failure in summary.failures[:FIRST_FAILURES]:
            why = ": ".join(str(p) for p in (failure.get("kind"), failure.get("code"), failure.get("message")) if p)
            lines.append(f"- {inert_line(failure['id'], 100)}: {inert_line(why, 200)}")
    if doc["contact_sheet"]:
        lines.append(f"contact sheet: {inert_line(doc['contact_sheet'])}")
    return title, "\n".join(lines)


def should_notify(code: int, notify_on: str) -> bool:
    return notify_on == "always" or code in (1, 2, 3, 4, 70) or code > 128


def ping_url(url: str, suffix: str) -> str:
    """URL with `/suffix` added to its path (its query kept): `https://hc/uuid` -> `https://hc/uuid/start`."""
    if not suffix:
        return url
    split = urlsplit(url)
    return urlunsplit(split._replace(path=split.path.rstrip("/") + "/" + suffix))


# ---------------------------------------------------------------- environments


def hook_env(env: Mapping[str, str], summary: Summary, secrets: list[str]) -> dict[str, str]:
    """The hook's environment: ours without the key, proxy credentials, notify or ping URLs (nightly.sh
    exports every line of its env file), plus BATCHGEN_EXIT, BATCHGEN_DIR, BATCHGEN_MANIFEST."""
    kept = {}
    for name, value in env.items():
        if name in STRIPPED or any(carries(value, s) or s in value for s in secrets if s):
            continue
        if PROXY_VARS.match(name) and "@" in value:
            continue  # a proxy URL with credentials
        kept[name] = value
    doc = summary.document()
    kept["BATCHGEN_EXIT"] = str(summary.code)
    kept["BATCHGEN_DIR"] = doc["dir"] or ""
    kept["BATCHGEN_MANIFEST"] = doc["manifest"] or ""
    return kept


def child_env(
    env: Mapping[str, str], secrets: list[str], proxy: ProxySettings | None, ca_bundle: str | None
) -> dict[str, str]:
    """The notifier's environment: no key, no URLs (they come on stdin); the run's proxies (its --proxy or
    environment, resolved: proxies.py), NO_PROXY and CA; no ~/.netrc."""
    kept = {k: v for k, v in env.items() if k not in STRIPPED and not any(s in v for s in secrets if s)}
    if proxy is not None:
        for name in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY"):
            kept.pop(name, None)
            kept.pop(name.lower(), None)
        if proxy.https:
            kept.update(HTTPS_PROXY=proxy.https, https_proxy=proxy.https)
        if proxy.http:
            kept.update(HTTP_PROXY=proxy.http, http_proxy=proxy.http)
        if proxy.no_proxy:
            kept.update(NO_PROXY=",".join(proxy.no_proxy), no_proxy=",".join(proxy.no_proxy))
    if ca_bundle:
        kept.update(REQUESTS_CA_BUNDLE=ca_bundle, SSL_CERT_FILE=ca_bundle)
    kept["NETRC"] = os.devnull
    return kept
