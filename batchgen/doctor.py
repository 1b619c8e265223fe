"""`batchgen doctor`: the way to the service, checked step by step, one line per step with the fix when it fails.

    name resolution -> the proxy chosen (API host, a result host) -> TCP -> the proxy's tunnel -> TLS (who issued
    the certificate) -> the key (recordInfo for a made-up task id) -> the clock (the server's Date) -> the state
    folder -> DIR

Nothing is created, so nothing is paid. The first failing step of the way ends the network checks (the next
ones could only fail with it); the local checks always run. Exit 0 when every check passed, 3 when the way
(certificate, proxy) or the key is refused, 1 when the service cannot be reached or another check failed, 2 for
usage (no --api-base, a bad flag). Connections are made with the standard library's sockets and TLS; the key check
goes through client.py, the one aiohttp client, with the run's proxy and TLS settings.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import os
import socket
import ssl
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from . import memory
from .answers import certificate_problem
from .client import Client, open_session
from .config import Secret, Timeouts
from .errors import AuthError, QuotaError, ServiceError, TransportError, UsageError, WayRefused
from .escapes import visible
from .proxies import ProxySettings, proxy_for, shown

CONNECT_TIMEOUT = 10.0  # seconds for each network step
CLOCK_SKEW = 300.0  # seconds: beyond this, signed result URLs and TLS validity can be misjudged
PROBE_ID = "batchgen-doctor-0000000000"  # a task id no service has: recordInfo answers "unknown", nothing is paid
RESULT_HOST = "https://result-host.invalid/"  # where the proxy rules would send a result host unknown so far


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    exit_code: int = 0  # when it failed: 3 refused, 1 unreachable or broken, 2 usage

    def line(self) -> str:
        """One line; what a server sent (a certificate's names, a proxy's status line) shown escaped."""
        head = f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {visible(self.detail)}"
        return head if self.ok or not self.fix else f"{head} -> {self.fix}"


def exit_code(checks: list[Check]) -> int:
    """3 when the way or the key is refused, else 2 / 1 for the first other failure, else 0."""
    failed = [c.exit_code for c in checks if not c.ok]
    if not failed:
        return 0
    return 3 if 3 in failed else (2 if 2 in failed else 1)


async def diagnose(
    api_base: str,
    key: Secret | None,
    proxy: ProxySettings,
    tls: ssl.SSLContext,
    out: Path | None,
    env: Mapping[str, str],
) -> list[Check]:
    """Every check, in the order of the way."""
    checks: list[Check] = []
    await _the_way(checks, api_base, key, proxy, tls)
    checks.append(_state_folder(env, out))
    if out is not None:
        checks.append(_directory(out))
    return checks


async def _the_way(
    checks: list[Check], api_base: str, key: Secret | None, proxy: ProxySettings, tls: ssl.SSLContext
) -> None:
    parts = urlsplit(api_base)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    via = proxy_for(api_base, proxy)
    result_via = proxy_for(RESULT_HOST, proxy)
    source = f" (from {proxy.source})" if proxy.source and (via or result_via) else ""
    checks.append(
        Check(
            "proxy",
            True,
            f"API {host}:{port} {_route(via)}; a result host {_route(result_via)}{source}"
            + (f"; NO_PROXY {','.join(proxy.no_proxy)}" if proxy.no_proxy else ""),
        )
    )
    target = urlsplit(via) if via else None
    peer_host = (target.hostname or "") if target else host
    peer_port = (target.port or 80) if target else port
    what = f"the proxy {shown(via)}" if via else host
    try:
        infos = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(peer_host, peer_port, type=socket.SOCK_STREAM), CONNECT_TIMEOUT
        )
        addresses = sorted({str(info[4][0]) for info in infos})
        note = f" ({host} is resolved by the proxy)" if via else ""
        checks.append(Check("name resolution", True, f"{peer_host} -> {', '.join(addresses[:4])}{note}"))
    except (OSError, TimeoutError) as exc:
        fix = "check the proxy's host name" if via else "check the host name in --api-base, or this machine's DNS"
        checks.append(Check("name resolution", False, f"{peer_host}: {_reason(exc)}", fix, 1))
        return
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(peer_host, peer_port), CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        fix = "is the proxy running, and is its port right?" if via else "a firewall may need a proxy: set HTTPS_PROXY"
        checks.append(Check("tcp", False, f"{what} port {peer_port}: {_reason(exc)}", fix, 1))
        return
    try:
        checks.append(Check("tcp", True, f"connected to {what} ({peer_host}:{peer_port})"))
        if via and parts.scheme == "https" and not await _tunnel(checks, reader, writer, via, host, port, proxy):
            return
        if parts.scheme == "https" and not await _tls(checks, writer, host, port, tls, via, proxy):
            return
    finally:
        writer.close()
    await _key(checks, api_base, key, proxy, tls)


def _route(via: str | None) -> str:
    return f"via {shown(via)}" if via else "direct"


async def _tunnel(
    checks: list[Check],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    via: str,
    host: str,
    port: int,
    proxy: ProxySettings,
) -> bool:
    """CONNECT host:port through the proxy, with its credentials (Basic) when the URL carries them."""
    request = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    parts = urlsplit(via)
    if parts.username is not None:
        token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
        request += f"Proxy-Authorization: Basic {token}\r\n"
    writer.write((request + "\r\n").encode())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CONNECT_TIMEOUT)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        checks.append(Check("proxy tunnel", False, f"{shown(via)}: no answer to CONNECT ({_reason(exc)})", "", 1))
        return False
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    fields = status_line.split(" ", 2)
    status = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
    proxy_name, target = shown(via), f"{host}:{port}"
    if status == 200:
        checks.append(Check("proxy tunnel", True, f"{proxy_name} opened a tunnel to {target}"))
        return True
    if status == 407:
        fix = f"give the proxy's user and password in {proxy.source or 'HTTPS_PROXY'} (http://user:password@host:port)"
        checks.append(Check("proxy tunnel", False, f"{shown(via)} asks for credentials or refused them (407)", fix, 3))
    elif 400 <= status < 500:
        fix = "ask the proxy's administrator to allow this host and port, or add it to NO_PROXY"
        checks.append(Check("proxy tunnel", False, f"{proxy_name} refused the tunnel to {target} ({status})", fix, 3))
    else:
        checks.append(Check("proxy tunnel", False, f"{proxy_name} could not reach {target} ({status_line})", "", 1))
    return False


async def _tls(
    checks: list[Check],
    writer: asyncio.StreamWriter,
    host: str,
    port: int,
    tls: ssl.SSLContext,
    via: str | None,
    proxy: ProxySettings,
) -> bool:
    try:
        await asyncio.wait_for(writer.start_tls(tls, server_hostname=host), CONNECT_TIMEOUT)
    except ssl.SSLCertVerificationError as exc:
        names = await _unverified_names(host, port, via, proxy)
        problem = certificate_problem(f"{host}:{port}", exc)
        checks.append(Check("tls", False, f"{problem}{names}", "", 3))
        return False
    except (OSError, TimeoutError) as exc:
        checks.append(Check("tls", False, f"{host}:{port}: handshake failed ({_reason(exc)})", "", 1))
        return False
    cert = writer.get_extra_info("peercert") or {}
    checks.append(Check("tls", True, f"{host}:{port}: certificate {_names(cert)}, trusted"))
    return True


async def _unverified_names(host: str, port: int, via: str | None, proxy: ProxySettings) -> str:
    """Who the certificate that failed says it is: a second handshake that does not verify, only to read it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        target = urlsplit(via) if via else None
        peer = ((target.hostname or ""), target.port or 80) if target else (host, port)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*peer), CONNECT_TIMEOUT)
        try:
            if via:
                scratch: list[Check] = []
                if not await _tunnel(scratch, reader, writer, via, host, port, proxy):
                    return ""
            await asyncio.wait_for(writer.start_tls(context, server_hostname=host), CONNECT_TIMEOUT)
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        finally:
            writer.close()
        return f"; it is {_names(_decode(der))}"
    except (OSError, TimeoutError, ValueError, AttributeError):
        return ""


def _decode(der: bytes) -> dict[str, Any]:
    """A certificate's fields from its DER bytes, through the ssl module's own decoder."""
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as handle:
        handle.write(ssl.DER_cert_to_PEM_cert(der))
        handle.flush()
        decoded: dict[str, Any] = ssl._ssl._test_decode_cert(handle.name)  # type: ignore[attr-defined]
        return decoded


def _names(cert: Mapping[str, Any]) -> str:
    """ "subject CN=..., issued by CN=..., O=..., valid until ..." from getpeercert()'s dict."""

    def name(field: str) -> str:
        pairs = [f"{k}={v}" for rdn in cert.get(field, ()) for k, v in rdn if k in ("commonName", "organizationName")]
        return ", ".join(p.replace("commonName", "CN").replace("organizationName", "O") for p in pairs) or "?"

    until = cert.get("notAfter")
    return f"subject {name('subject')}, issued by {name('issuer')}" + (f", valid until {until}" if until else "")


async def _key(
    checks: list[Check], api_base: str, key: Secret | None, proxy: ProxySettings, tls: ssl.SSLContext
) -> None:
    if key is None:
        fix = "set BATCHGEN_API_KEY or pass --api-key-file PATH"
        checks.append(Check("key", False, "no API key", fix, 2))
        return
    timeouts = Timeouts(connect=CONNECT_TIMEOUT, api_read=CONNECT_TIMEOUT)
    async with open_session(timeouts, tls) as session:
        client = Client(session, api_base, key, timeouts, proxy)
        try:
            await client.record_info(PROBE_ID)
            checks.append(Check("key", True, "accepted (recordInfo for a made-up task id; nothing created)"))
        except (AuthError, QuotaError) as exc:
            fix = "check the key (BATCHGEN_API_KEY or --api-key-file) and the account's quota"
            checks.append(Check("key", False, f"refused: {exc}", fix, 3))
        except WayRefused as exc:
            checks.append(Check("key", False, str(exc), "", 3))
        except UsageError as exc:
            checks.append(Check("key", False, str(exc), "check --api-base (the base URL, without /api/v1)", 2))
        except TransportError as exc:
            checks.append(Check("key", False, f"no answer: {exc}", "", 1))
        except ServiceError as exc:  # the service answered, and did not refuse the key: it is accepted
            checks.append(Check("key", True, f"not refused (the service answered: {exc})"))
        checks.append(_clock(client.server_date))


def _clock(date: str | None) -> Check:
    if not date:
        return Check("clock", True, "the service sent no Date header; not compared")
    try:
        server = email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return Check("clock", True, f"the service's Date header is not a date ({date[:40]!r}); not compared")
    skew = time.time() - server
    if abs(skew) > CLOCK_SKEW:
        fix = "set this machine's clock (NTP: timedatectl set-ntp true)"
        return Check("clock", False, f"this machine is {skew:+.0f} s off the service's clock", fix, 1)
    return Check("clock", True, f"within {abs(skew):.0f} s of the service's clock")


def _state_folder(env: Mapping[str, str], out: Path | None) -> Check:
    folder = memory.directory(env, out or Path("."), create=False)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.is_dir() and os.access(probe, os.W_OK | os.X_OK):
        return Check("state folder", True, f"{folder} (what runs learn about the service)")
    fix = "set XDG_STATE_HOME to a writable folder"
    return Check("state folder", False, f"{folder}: {probe} is not a writable folder", fix, 1)


def _directory(out: Path) -> Check:
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return Check("DIR", False, f"{out}: {probe} is not a folder", "choose another --out", 1)
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        return Check("DIR", False, f"{out}: cannot write in {probe}: {exc.strerror or exc}", "fix its permissions", 1)
    made = "" if probe == out else f" (to be created in {probe})"
    return Check("DIR", True, f"{out} is writable{made}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT:g} s"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the name ({exc.strerror or exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
