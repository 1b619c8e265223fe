"""The only module that speaks aiohttp's client side: createTask, recordInfo, and streaming result files.

Every answer is read by both its HTTP status and its body `code` (some deployments answer HTTP 200 with
`"code": 500` in the body), in any of the three envelopes (business, gateway, task relay), and turned into
data or into one exception of the `errors` tree. aiohttp's own exceptions are translated here and nowhere else.

The key is sent only to the API origin, in the Authorization header of API calls; result files are fetched
without it (and API calls never follow redirects, so the header cannot be carried elsewhere).

This module is also the one masking boundary for what the service sends: every message, failCode, failMsg and
result URL leaves it with the key (and its URL-encoded forms) masked, so nothing from the service reaches the
ledger, a log line or a page with the key in it. A result URL that carries the key is flagged, never fetched.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from . import __version__, gone
from .answers import (
    TaskRecord,
    certificate_problem,
    host_of,
    is_html,
    is_json,
    page_kind,
    parse_record,
    parse_retry_after,
    task_id_in,
    text_of,
    unknown_record,
)
from .config import Secret, Timeouts, carries, redact
from .errors import (
    AuthError,
    BatchgenError,
    DownloadError,
    ModelUnavailable,
    QuotaError,
    RateLimited,
    RequestRejected,
    ServerError,
    ServiceError,
    TransportError,
    UsageError,
    WayRefused,
)
from .proxies import ProxySettings, proxy_for, shown, tls_context

USER_AGENT = f"batchgen/{__version__}"
NULL_RECORD = "recordInfo is null"
MAX_ANSWER = 8 * 1024 * 1024  # an API answer is a few KB; a body past this is never read to its end
MAX_REDIRECTS = 5  # a result URL may redirect (a CDN's edge); more is a loop
REDIRECTS = (301, 302, 303, 307, 308)


# A createTask never goes out on a connection idle for longer than this (SPEC §1a): a server or a gateway may
# close an idle keep-alive connection at any moment after ~1 s (nginx's keepalive_timeout can be that short), and
# a request written into a connection the other side is closing is lost after its bytes left: in doubt, perhaps
# paid. aiohttp reuses a pooled connection only if idle <= keepalive_timeout (TCPConnector._get), so status
# queries at 8/s still share connections, and an idle one is closed rather than reused.
KEEPALIVE = 0.9


@asynccontextmanager
async def open_session(timeouts: Timeouts, tls: ssl.SSLContext | None = None) -> AsyncIterator[aiohttp.ClientSession]:
    """The run's one ClientSession, with the run's one TLS context. No default headers: the key is added per API
    call only. trust_env stays False: with it aiohttp reads ~/.netrc (and a matching entry breaks every call);
    proxies are chosen per request from the run's settings instead (proxies.proxy_for)."""
    connector = aiohttp.TCPConnector(
        limit=64, ttl_dns_cache=300, keepalive_timeout=KEEPALIVE, ssl=tls if tls is not None else True
    )
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect, sock_read=timeouts.api_read)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers={"User-Agent": USER_AGENT}, trust_env=False
    ) as session:
        yield session


async def _bounded_text(response: aiohttp.ClientResponse, path: str) -> str:
    """The answer's text, read up to MAX_ANSWER bytes: one that keeps coming (a broken gateway, a stream) would
    otherwise fill memory, and with only a read timeout between chunks never end. Past it, the answer is lost
    (TransportError: a createTask stays in doubt)."""
    body = bytearray()
    async for chunk in response.content.iter_chunked(65536):
        body += chunk
        if len(body) > MAX_ANSWER:
            raise TransportError(f"{path}: the answer was longer than {MAX_ANSWER // 1024 // 1024} MiB; not read")
    try:
        return body.decode(response.charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", errors="replace")


class Client:
    """The jobs API and its result hosts, over one session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_base: str,
        key: Secret,
        timeouts: Timeouts,
        proxy: ProxySettings | None = None,
    ) -> None:
        self._session = session
        self._base = api_base.rstrip("/")
        self._key = key
        self._timeouts = timeouts
        self._proxy = proxy or ProxySettings()
        self._secrets = (key.value, *self._proxy.secrets())
        self.json_seen = False  # a JSON answer came from this base: a 404 is about an item, not --api-base
        self.answered = False  # any HTTP answer came from the API (else: the service was never reached)
        self.last_failure: str | None = None  # the last transport failure, for "never reached" at the end
        self.server_date: str | None = None  # the last answer's Date header (doctor compares the clocks)

    # ------------------------------------------------------------ the API

    async def create_task(self, request: Mapping[str, Any], callback_url: str | None = None) -> str:
        """Submit one task; returns its id. Raises a ServiceError or a TransportError.

        An answer that carries a taskId is a created task, whatever its HTTP status or body code (201, `code: 0`,
        even an error status): the service has it, and it is paid. The caller decides what a failure without a
        taskId means for money (a 5xx or a lost answer may still have created one).
        """
        body = dict(request)
        if callback_url:
            body["callBackUrl"] = callback_url
        bound = aiohttp.ClientTimeout(total=self._timeouts.create, sock_connect=self._timeouts.connect)
        seen_before = self.json_seen
        status, headers, text = await self._request("POST", "/api/v1/jobs/createTask", json_body=body, bound=bound)
        task_id = task_id_in(text)
        if task_id is not None and carries(task_id, self._key.value):
            # Keeping it would write the key into the ledger; it may be paid, so the caller marks it in doubt.
            raise ServerError(f"createTask answered a task id carrying the API key: {self._mask(task_id)!r}")
        if task_id is not None:
            return task_id
        model = str(request.get("model") or "")
        if (gone_message := gone.classify(status, text, model)) is not None:  # about the model, not the run
            raise ModelUnavailable(self._mask(gone_message), model=model, status=status)
        if status in (404, 405):  # the API is not there, or this one request was refused by its path
            if not seen_before:
                raise UsageError(f"createTask answered HTTP {status}{page_kind(headers, text)}: is --api-base right?")
            raise RequestRejected(_brief(status, headers, text, self._secrets), status=status, code=str(status))
        data = interpret(status, headers, text, secret=self._secrets)  # raises for every error answer
        raise ServerError(self._mask(f"createTask answered success without a taskId ({str(data)[:100]!r})"))

    async def record_info(self, task_id: str) -> TaskRecord:
        """The task's record. A task the service does not know (recordInfo is null, or a 404 about the task)
        comes back with state UNKNOWN: just created and not visible yet, or forgotten. Only a 404 that shows
        the API itself is missing (an HTML page) is a UsageError."""
        seen_before = self.json_seen
        status, headers, text = await self._request("GET", "/api/v1/jobs/recordInfo", params={"taskId": task_id})
        if status == 404 and not seen_before and not self.json_seen:  # an HTML or empty 404: no API here
            raise UsageError(f"recordInfo answered HTTP 404{page_kind(headers, text)}: is --api-base right?")
        if status == 404:
            return unknown_record(task_id)
        try:
            data = interpret(status, headers, text, secret=self._secrets)
        except RequestRejected as exc:
            if exc.code in ("422", "404") and (NULL_RECORD in exc.message or exc.code == "404"):
                return unknown_record(task_id)
            raise
        if not isinstance(data, dict):
            return unknown_record(task_id)
        record = parse_record(task_id, data, secret=self._secrets)
        if record.task_id != task_id:
            raise ServerError(f"recordInfo for {task_id} answered about another task ({record.task_id})")
        return record

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        bound: aiohttp.ClientTimeout | None = None,
    ) -> tuple[int, Mapping[str, str], str]:
        """One API call: (status, headers, body text). Transport failures become TransportError, masked."""
        headers = {"Authorization": f"Bearer {self._key.value}", "Accept": "application/json"}
        url = self._base + path
        limit = self._timeouts.create if bound is not None else self._timeouts.api_read
        try:
            async with self._session.request(
                method,
                url,
                json=json_body,
                params=params,
                headers=headers,
                allow_redirects=False,
                timeout=bound or self._session.timeout,
                proxy=proxy_for(url, self._proxy),
            ) as response:
                text = await _bounded_text(response, path)
                self.answered = True
                self.server_date = response.headers.get("Date")
                if response.status == 407:
                    raise self._proxy_refused(url, 407)
                if is_json(text):
                    self.json_seen = True
                return response.status, response.headers, text
        except (aiohttp.ClientError, TimeoutError) as exc:
            failure = self._translate(exc, url, f"{path}: no answer within {limit:g} s")
            self.last_failure = str(failure)
            raise failure from exc

    def _translate(self, exc: BaseException, url: str, timeout: str) -> BatchgenError:
        """aiohttp's exception for a call to `url`, in the errors tree: the way refused us (WayRefused), or
        the network failed (TransportError; `sent` False when no connection to the service was made)."""
        host = host_of(url)
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            return WayRefused(self._mask(certificate_problem(host, exc.certificate_error)), host=host)
        if isinstance(exc, aiohttp.ClientHttpProxyError):
            if 400 <= exc.status < 500:
                return self._proxy_refused(url, exc.status)
            return TransportError(
                self._mask(f"the proxy {self._proxy_shown(url)} could not reach {host} (HTTP {exc.status})"), sent=False
            )
        if isinstance(exc, aiohttp.ClientProxyConnectionError):
            return TransportError(
                self._mask(f"cannot connect to the proxy {self._proxy_shown(url)}: {exc.os_error or exc}"), sent=False
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            return TransportError(self._mask(f"cannot connect to {host}: {exc.os_error or exc}"), sent=False)
        if isinstance(exc, TimeoutError):  # before ClientError: aiohttp's socket timeouts are both
            return TransportError(timeout)
        return TransportError(self._mask(f"{urlsplit(url).path}: {type(exc).__name__}: {exc}"))

    def _proxy_shown(self, url: str) -> str:
        return shown(proxy_for(url, self._proxy)) or "(none)"

    def _proxy_refused(self, url: str, status: int) -> WayRefused:
        proxy = self._proxy_shown(url)
        # 407 is the standard answer; tinyproxy, among others, answers a wrong password with 401
        what = (
            f"asks for credentials or refused them (HTTP {status})"
            if status in (401, 407)
            else f"refused the tunnel (HTTP {status})"
        )
        source = self._proxy.source or "the proxy setting"
        return WayRefused(
            f"the proxy {proxy} {what} for {host_of(url)}: check the user and password in {source} "
            "(http://user:password@host:port), or whether the proxy allows this host and port",
            host=host_of(url),
            proxy=True,
        )

    def _mask(self, text: str) -> str:
        return redact(text, self._secrets)

    # ------------------------------------------------------------ result files

    @asynccontextmanager
    async def open_result(self, url: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET a result URL, without the key. Errors while reading the body are translated here too.

        A URL that cannot be parsed, is not http(s), or carries the key fails for good (DownloadError permanent):
        one bad answer fails one item, never the run.
        """
        shown = self._mask(url[:200])
        if carries(url, self._key.value):
            raise DownloadError(f"result URL carries the API key; not fetched: {shown!r}", permanent=True)
        try:
            parts = urlsplit(url)
            hostname, _ = parts.hostname, parts.port  # .port raises ValueError for a bad port
        except ValueError as exc:
            raise DownloadError(f"result URL is malformed ({exc}): {shown!r}", permanent=True) from exc
        if parts.scheme not in ("http", "https") or not hostname:
            raise DownloadError(f"result URL is not http(s): {shown!r}", permanent=True)
        timeout = aiohttp.ClientTimeout(
            total=self._timeouts.download_total,
            sock_connect=self._timeouts.connect,
            sock_read=self._timeouts.download_read,
        )
        try:
            async with self._follow(url, timeout) as response:
                yield response
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientHttpProxyError) as exc:
            failure = self._translate(exc, url, "")
            if isinstance(failure, WayRefused):  # a result host refusing us stops new creates
                raise failure from exc
            raise DownloadError(str(failure), unreachable=True) from exc
        except TimeoutError as exc:  # before ClientError: aiohttp's socket timeouts are both
            raise DownloadError(
                f"download stalled: no data for {self._timeouts.download_read:g} s, or not "
                f"complete within {self._timeouts.download_total:g} s"
            ) from exc
        except aiohttp.TooManyRedirects as exc:
            raise DownloadError("result URL redirected too many times") from exc
        except _BadRedirect as exc:
            raise DownloadError(self._mask(f"download failed: redirected to {exc}; not followed")) from exc
        except (aiohttp.InvalidURL, ValueError) as exc:  # InvalidURL is a ClientError too: first
            raise DownloadError(self._mask(f"result URL is malformed: {exc}"), permanent=True) from exc
        except aiohttp.ClientConnectorError as exc:
            raise DownloadError(
                self._mask(f"result host unreachable: {exc.os_error or exc}"), unreachable=True
            ) from exc
        except aiohttp.ClientError as exc:
            raise DownloadError(self._mask(f"download failed: {type(exc).__name__}: {exc}")) from exc

    @asynccontextmanager
    async def _follow(self, url: str, bound: aiohttp.ClientTimeout) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET `url`, following up to MAX_REDIRECTS redirects ourselves: each hop gets its own proxy decision (a
        CDN may send us to a host that NO_PROXY lists), and no hop may carry the key or leave http(s)."""
        for _ in range(MAX_REDIRECTS + 1):
            async with self._session.get(
                url, timeout=bound, allow_redirects=False, proxy=proxy_for(url, self._proxy)
            ) as response:
                if response.status == 407:
                    raise self._proxy_refused(url, 407)
                location = response.headers.get("Location")
                if response.status not in REDIRECTS or not location:
                    yield response
                    return
            url = urljoin(url, location)
            if carries(url, self._secrets) or urlsplit(url).scheme not in ("http", "https"):
                raise _BadRedirect(url[:200])
        raise aiohttp.TooManyRedirects(response.request_info, response.history)


def _brief(status: int, headers: Mapping[str, str], text: str, secrets: tuple[str, ...]) -> str:
    """What an error answer said, short: its message if JSON, else the status and the kind of body."""
    if is_json(text):
        try:
            interpret(status, headers, text, secret=secrets)
        except ServiceError as exc:
            return exc.message
    return f"HTTP {status}{page_kind(headers, text)}"


class _BadRedirect(Exception):
    """Internal: a result host redirected to a URL that carries the key or is not http(s)."""


def interpret(status: int, headers: Mapping[str, str], text: str, *, secret: str | Sequence[str] | None = None) -> Any:
    """Turn one API answer into its `data`, or raise the error it means.

    The body's `code` wins over an HTTP 200 (some gateways say 200 and mean 500); otherwise the HTTP status
    decides. `code` may be an int or a string, `msg` may be spelled `message`, the gateway nests both under
    `error`, and a body may be empty or not JSON at all.
    """
    body: Any = None
    if text.strip():
        try:
            body = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: a body nested thousands deep
            body = None
    code: str | None = None
    message = ""
    if isinstance(body, dict):
        gateway = body.get("error")
        if isinstance(gateway, dict):
            code = text_of(gateway.get("code"))
            message = str(gateway.get("message") or "")
        else:
            code = text_of(body.get("code"))
            message = str(body.get("msg") or body.get("message") or "")
    if status == 200 and code in ("200", None) and isinstance(body, dict) and "data" in body:
        return body["data"]
    effective = status
    if status == 200:
        effective = int(code) if code is not None and code.isdigit() else 502
        if not message:
            message = "the answer could not be read" if body is None else "the answer had no data"
    if not message:  # a gateway's or a proxy's own page says nothing the user can act on: its kind only
        message = f"HTTP {status}{page_kind(headers, text)}" if body is None else f"HTTP {status}"
        if body is None and text.strip() and not is_html(headers, text):
            message += f": {text.strip()[:200]}"
    message = redact(message[:500], secret)  # a careless gateway may echo the caller's token
    retry_after = parse_retry_after(headers.get("Retry-After"))
    if effective == 429 or code == "429":
        raise RateLimited(message, status=status, code=code or "429", retry_after=retry_after)
    if effective == 401:
        raise AuthError(f"the service refused the API key (401): {message}", status=status, code=code)
    if effective == 403 or code == "insufficient_user_quota":
        raise QuotaError(f"the service refused the account (403, quota or access): {message}", status=status, code=code)
    if effective == 407:  # a proxy's answer in the API's place (plain http through a proxy)
        raise WayRefused(f"the proxy refused us (407): {message}", host="the proxy", proxy=True)
    if 400 <= effective < 500:  # 400, 404/405 (the caller knows whether --api-base is wrong), 413, 422, ...
        raise RequestRejected(message, status=status, code=str(effective))
    if effective >= 500:
        raise ServerError(message, status=status, code=code or str(effective))
    raise ServiceError(f"unexpected answer (HTTP {status}): {message}", status=status, code=code)


# ---------------------------------------------------------------- monitoring pings (finish.py)


PING_BODY = 64 * 1024


async def ping(url: str, *, seconds: float, proxy: str | None = None, ca_bundle: str | None = None) -> int:
    """One GET to a monitoring URL (healthchecks-style `--ping`); returns the HTTP status.

    Its own short-lived session: no key, no cookies, never ~/.netrc (trust_env is off), the proxy (already chosen
    for the ping's host: proxies.proxy_for) and the CA bundle given by the caller. A ping URL is a secret: no
    message raised here holds it (TransportError names only what went wrong)."""
    try:
        context = tls_context(Path(ca_bundle) if ca_bundle else None)
    except UsageError as exc:
        raise TransportError(f"the CA bundle cannot be read: {exc}", sent=False) from None
    bound = aiohttp.ClientTimeout(total=seconds)
    try:
        async with (
            aiohttp.ClientSession(timeout=bound, headers={"User-Agent": USER_AGENT}, trust_env=False) as session,
            session.get(url, proxy=proxy, ssl=context, allow_redirects=True, max_redirects=3) as response,
        ):
            await response.content.read(PING_BODY)  # a monitor's answer is a word; one that never ends is not read
            return response.status
    except aiohttp.InvalidURL:
        raise TransportError("not a valid URL", sent=False) from None
    except TimeoutError:
        raise TransportError(f"no answer within {seconds:g} s") from None
    except aiohttp.ClientSSLError as exc:
        raise TransportError(f"TLS failed ({type(exc).__name__})") from None
    except aiohttp.ClientConnectorError as exc:
        raise TransportError(f"cannot connect ({exc.os_error.strerror or type(exc.os_error).__name__})") from None
    except aiohttp.ClientError as exc:
        raise TransportError(f"the request failed ({type(exc).__name__})") from None
