"""The only module that speaks aiohttp's client side: createTask, recordInfo, and streaming result files.

Every answer is read by both its HTTP status and its body `code` (some deployments answer HTTP 200 with
`"code": 500` in the body), in any of the three envelopes (business, gateway, task relay), and turned into
data or into one exception of the `errors` tree. aiohttp's own exceptions are translated here and nowhere else.

The key is sent only to the API origin, in the Authorization header of API calls; result files are fetched
without it (and API calls never follow redirects, so the header cannot be carried elsewhere).
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from . import __version__
from .config import Secret, Timeouts, redact
from .errors import (
    AuthError,
    DownloadError,
    QuotaError,
    RateLimited,
    RequestRejected,
    ServerError,
    ServiceError,
    TransportError,
    UsageError,
)

USER_AGENT = f"batchgen/{__version__}"
NULL_RECORD = "recordInfo is null"


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """What recordInfo says of one task, with its JSON strings already parsed."""

    task_id: str
    state: str  # waiting | queuing | generating | success | fail (or what the service invents next)
    result_urls: tuple[str, ...]
    fail_code: str | None
    fail_message: str | None
    result_error: str | None = None  # set when a success carried no readable resultJson
    created: float | None = None  # createTime, Unix seconds (the poll scheduler learns latencies from these)
    completed: float | None = None  # completeTime, Unix seconds

    @property
    def finished(self) -> bool:
        return self.state in ("success", "fail")


@asynccontextmanager
async def open_session(timeouts: Timeouts) -> AsyncIterator[aiohttp.ClientSession]:
    """The run's one ClientSession. No default headers: the key is added per API call only."""
    connector = aiohttp.TCPConnector(limit=64, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect, sock_read=timeouts.api_read)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers={"User-Agent": USER_AGENT}, trust_env=False
    ) as session:
        yield session


class Client:
    """The jobs API and its result hosts, over one session."""

    def __init__(self, session: aiohttp.ClientSession, api_base: str, key: Secret, timeouts: Timeouts) -> None:
        self._session = session
        self._base = api_base.rstrip("/")
        self._key = key
        self._timeouts = timeouts

    # ------------------------------------------------------------ the API

    async def create_task(self, request: Mapping[str, Any], callback_url: str | None = None) -> str:
        """Submit one task; returns its id. Raises a ServiceError or a TransportError."""
        body = dict(request)
        if callback_url:
            body["callBackUrl"] = callback_url
        data = await self._call("POST", "/api/v1/jobs/createTask", json_body=body)
        task_id = data.get("taskId") if isinstance(data, dict) else None
        if not isinstance(task_id, str) or not task_id:
            # The service said success: it may have created (and charged for) a task we cannot name.
            raise TransportError("createTask answered success without a taskId", sent=True)
        return task_id

    async def record_info(self, task_id: str) -> TaskRecord | None:
        """The task's record, or None while the service says "recordInfo is null" (not visible yet)."""
        try:
            data = await self._call("GET", "/api/v1/jobs/recordInfo", params={"taskId": task_id})
        except RequestRejected as exc:
            if exc.code == "422" and NULL_RECORD in exc.message:
                return None
            raise
        if not isinstance(data, dict):
            return None
        record = parse_record(task_id, data)
        if record.task_id != task_id:
            raise ServerError(f"recordInfo for {task_id} answered about another task ({record.task_id})")
        return record

    async def _call(
        self, method: str, path: str, *, json_body: Any = None, params: Mapping[str, str] | None = None
    ) -> Any:
        headers = {"Authorization": f"Bearer {self._key.value}", "Accept": "application/json"}
        url = self._base + path
        try:
            async with self._session.request(
                method, url, json=json_body, params=params, headers=headers, allow_redirects=False
            ) as response:
                text = await response.text(errors="replace")
                return interpret(response.status, response.headers, text, secret=self._key.value)
        except aiohttp.ClientConnectorError as exc:
            raise TransportError(f"cannot connect to {self._base}: {exc.os_error or exc}", sent=False) from exc
        except TimeoutError as exc:  # before ClientError: aiohttp's socket timeouts are both
            raise TransportError(f"{path}: no answer within {self._timeouts.api_read:g} s") from exc
        except aiohttp.ClientError as exc:
            raise TransportError(f"{path}: {type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------ result files

    @asynccontextmanager
    async def open_result(self, url: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET a result URL, without the key. Errors while reading the body are translated here too."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DownloadError(f"result URL is not http(s): {url[:100]!r}", permanent=True)
        timeout = aiohttp.ClientTimeout(
            total=self._timeouts.download_total,
            sock_connect=self._timeouts.connect,
            sock_read=self._timeouts.download_read,
        )
        try:
            async with self._session.get(url, timeout=timeout, max_redirects=5) as response:
                yield response
        except TimeoutError as exc:  # before ClientError: aiohttp's socket timeouts are both
            raise DownloadError(
                f"download stalled: no data for {self._timeouts.download_read:g} s, or not "
                f"complete within {self._timeouts.download_total:g} s"
            ) from exc
        except aiohttp.TooManyRedirects as exc:
            raise DownloadError("result URL redirected too many times") from exc
        except aiohttp.ClientError as exc:
            raise DownloadError(f"download failed: {type(exc).__name__}: {exc}") from exc


def parse_record(task_id: str, data: Mapping[str, Any]) -> TaskRecord:
    """recordInfo's `data`: `resultJson` is a JSON string (or an object); empty strings mean none."""
    state = str(data.get("state") or "").strip().lower() or "waiting"
    urls: tuple[str, ...] = ()
    problem = None
    raw = data.get("resultJson")
    if state == "success":
        parsed: Any = raw
        if isinstance(raw, str):
            try:
                parsed = json.loads(raw) if raw.strip() else None
            except ValueError:
                parsed, problem = None, "resultJson is not valid JSON"
        found = parsed.get("resultUrls") if isinstance(parsed, dict) else None
        if isinstance(found, list):
            urls = tuple(u for u in found if isinstance(u, str) and u)
        if not urls and problem is None:
            problem = "the task succeeded but its resultJson has no resultUrls"
    return TaskRecord(
        task_id=str(data.get("taskId") or task_id),
        state=state,
        result_urls=urls,
        fail_code=_text(data.get("failCode")),
        fail_message=_text(data.get("failMsg")),
        result_error=problem,
        created=_seconds(data.get("createTime")),
        completed=_seconds(data.get("completeTime")),
    )


def _seconds(millis: Any) -> float | None:
    """A Unix-milliseconds time (an int, or digits in a string) in seconds; None when missing or not a time."""
    try:
        value = float(millis)
    except (TypeError, ValueError):
        return None
    return value / 1000 if 0 < value < 1e14 else None  # NaN, infinities and nonsense are no time


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def interpret(status: int, headers: Mapping[str, str], text: str, *, secret: str | None = None) -> Any:
    """Turn one API answer into its `data`, or raise the error it means.

    The body's `code` wins over an HTTP 200 (some gateways say 200 and mean 500); otherwise the HTTP status
    decides. `code` may be an int or a string, `msg` may be spelled `message`, the gateway nests both under
    `error`, and a body may be empty or not JSON at all.
    """
    body: Any = None
    if text.strip():
        try:
            body = json.loads(text)
        except ValueError:
            body = None
    code: str | None = None
    message = ""
    if isinstance(body, dict):
        gateway = body.get("error")
        if isinstance(gateway, dict):
            code = _text(gateway.get("code"))
            message = str(gateway.get("message") or "")
        else:
            code = _text(body.get("code"))
            message = str(body.get("msg") or body.get("message") or "")
    if status == 200 and code in ("200", None) and isinstance(body, dict) and "data" in body:
        return body["data"]
    effective = status
    if status == 200:
        effective = int(code) if code is not None and code.isdigit() else 502
        if not message:
            message = "the answer could not be read" if body is None else "the answer had no data"
    if not message:
        message = text.strip()[:200] or f"HTTP {status} with an empty body"
    message = redact(message[:500], secret)  # a careless gateway may echo the caller's token
    retry_after = parse_retry_after(headers.get("Retry-After"))
    if effective == 429 or code == "429":
        raise RateLimited(message, status=status, code=code or "429", retry_after=retry_after)
    if effective == 401:
        raise AuthError(f"the service refused the API key (401): {message}", status=status, code=code)
    if effective == 403 or code == "insufficient_user_quota":
        raise QuotaError(f"the service refused the account (403, quota or access): {message}", status=status, code=code)
    if effective in (404, 405):
        raise UsageError(f"the service answered {effective} ({message}): is --api-base right?")
    if effective in (400, 413, 422) or 400 <= effective < 500:
        raise RequestRejected(message, status=status, code=str(effective))
    if effective >= 500:
        raise ServerError(message, status=status, code=code or str(effective))
    raise ServiceError(f"unexpected answer (HTTP {status}): {message}", status=status, code=code)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: a number of seconds, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
