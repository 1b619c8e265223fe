"""What the simulated service answers, in its shapes: the envelopes (business, gateway, the 429's many wrappings)
and a task's record as recordInfo and callbacks report it (result URLs signed and expiring, credits, the
`misreport` knob's wrong answers). Mixed into the Simulator (server.py), which owns the state read here."""

from __future__ import annotations

import hmac
import json
import random
import secrets
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from .. import models, schema
from .config import SimConfig
from .images import result_type
from .model import POLICY_FAILURE, SATURATED, SimStats, Task, ms


class Answers:
    """The answers' shapes; the state they read is the Simulator's."""

    config: SimConfig
    cards: models.Registry  # the model cards it serves
    stats: SimStats
    rng: random.Random
    files_url: str
    _secret: bytes
    _caller: str  # the Bearer token of the latest API request (echo_token repeats it)
    _envelope_turn: int

    # ------------------------------------------------------------ envelopes

    def _echo(self, msg: str) -> str:
        if not self.config.echo_token:
            return msg
        return f"{msg} (token {self._caller}, encoded {quote(self._caller, safe='')})"

    def _business(self, code: int, msg: str, status: int | None = None) -> web.Response:
        msg = self._echo(msg) if code != 200 else msg
        http = 200 if self.config.http200_errors and code != 200 else (status or code)
        return web.json_response({"code": code, "msg": msg, "data": None}, status=http)

    @staticmethod
    def _gateway(status: int, message: str, code: str = "") -> web.Response:
        request_id = secrets.token_hex(8)
        body = {"error": {"message": f"{message} (request id: {request_id})", "type": "new_api_error", "code": code}}
        return web.json_response(body, status=status)

    def _saturated(self, *, full: bool = False) -> web.Response:
        """A 429; `full`: for capacity (tasks running), wrapped as `capacity_envelope_429` when that is set."""
        self.stats.rate_limited += 1
        headers = {"Retry-After": f"{self.config.retry_after:g}"} if self.config.retry_after is not None else {}
        kind: str = (full and self.config.capacity_envelope_429) or self.config.envelope_429
        if kind == "mixed":
            kind = ("relay", "business", "gateway", "empty")[self._envelope_turn % 4]
            self._envelope_turn += 1
        if kind == "empty":
            return web.Response(status=429, headers=headers)
        if kind == "business":
            body: dict[str, Any] = {"code": 429, "msg": SATURATED, "data": None}
        elif kind == "gateway":
            body = {"error": {"message": SATURATED, "type": "new_api_error", "code": "429"}}
        else:
            body = {"code": "429", "message": SATURATED, "data": None}
        return web.json_response(body, status=429, headers=headers)

    def _record(self, task: Task, now: float) -> dict[str, Any]:
        state = task.state(now)
        done = state in ("success", "fail")
        finished = task.created + task.duration
        result_json = ""
        if state == "success":
            result_json = json.dumps({"resultUrls": self._result_urls(task, now)})
        update = finished if done else max(task.created, now - 0.5)
        return {
            "taskId": task.task_id,
            "model": task.body["model"],
            "state": state,
            "param": json.dumps(task.body, ensure_ascii=False),
            "resultJson": result_json,
            "failCode": task.fail[0] if state == "fail" and task.fail else "",
            "failMsg": self._echo(self.config.fail_message or task.fail[1]) if state == "fail" and task.fail else "",
            "costTime": ms(task.duration) if done else None,
            "createTime": ms(task.created - self.config.create_time_offset),
            "updateTime": ms(update),
            "completeTime": ms(finished) if done else None,
            **self._credits(task, done),
        }

    def _misreported(self, record: dict[str, Any], task_id: str) -> dict[str, Any]:
        """The `misreport` knob's wrong answers (see SimConfig)."""
        fault = self.config.misreport
        if fault == "wrong_task" and self.stats.polls_by_task[task_id] <= 2:
            record.update(
                taskId=f"task_{schema.MODEL}_someone_else",
                state="fail",
                failCode=POLICY_FAILURE[0],
                failMsg=POLICY_FAILURE[1],
                resultJson="",
            )
        elif fault == "no_urls" and record["state"] == "success":
            record["resultJson"] = json.dumps({"resultUrls": []})
        elif fault == "bad_result_json" and record["state"] == "success":
            record["resultJson"] = "{not json"
        return record

    def _credits(self, task: Task, done: bool) -> dict[str, float]:
        """The billing fields of a finished task (with SimConfig.credits_per_task): what it consumed, and the
        balance left after the account's creates up to and including it."""
        per = self.config.credits_per_task
        if per is None or not done:
            return {}
        return {"consumeCredits": per, "remainedCredits": self.config.credits_balance - per * task.number}

    def _result_urls(self, task: Task, now: float) -> list[str]:
        ext = "png" if self.config.wrong_extension else schema.EXTENSIONS[result_type(task.body, self.cards)]
        urls = []
        for n in range(1, self.config.results_per_task + 1):
            name = f"{n}.{ext}"
            if self.config.result_url is not None:
                urls.append(self.config.result_url.format(task_id=task.task_id, n=n, ext=ext))
                continue
            query: dict[str, str] = {}
            if self.config.url_ttl is not None:
                stale = self.config.expired_url_rate and self.rng.random() < self.config.expired_url_rate
                expires = str(int(now - 1 if stale else now + self.config.url_ttl))
                query = {"expires": expires, "sig": self.sign(task.task_id, name, expires)}
            if self.config.key_in_result_url:
                query["auth"] = self._caller
            suffix = f"?{urlencode(query)}" if query else ""
            base = self.config.files_public_url or self.files_url
            urls.append(f"{base}/r/{task.task_id}/{name}{suffix}")
        return urls

    def sign(self, task_id: str, name: str, expires: str) -> str:
        return hmac.new(self._secret, f"{task_id}/{name}/{expires}".encode(), "sha256").hexdigest()[:32]
