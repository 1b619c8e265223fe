"""The simulated service: the jobs API on one origin, result files on a second one (aiohttp.web)."""

from __future__ import annotations

import asyncio
import heapq
import hmac
import json
import math
import random
import secrets
import signal
import socket
import time
from collections import Counter, deque
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web

from .. import models
from .answers import Answers
from .config import SimConfig
from .files import ResultFiles
from .model import MARK, POLICY_FAILURE, TRANSIENT_FAILURE, SimStats, Task, invalid, request_key


class Simulator(Answers):
    """The simulated jobs API. Use `async with Simulator(config) as sim:`; `sim.stats` holds counters."""

    def __init__(self, config: SimConfig | None = None, cards: models.Registry | None = None) -> None:
        self.config = config or SimConfig()
        self.cards = cards or models.builtin()  # the models it serves: the built-in cards, and a user's if given
        self.stats = SimStats()
        self._task_number = 0
        self.rng = random.Random(self.config.random_seed)
        self._secret = secrets.token_bytes(16)
        self._tasks: dict[str, Task] = {}
        self._finishing: list[float] = []  # heap of finish times of tasks in flight
        self._creates: deque[float] = deque()  # accepted creates in the current rate window
        self._polls: deque[float] = deque()  # status queries in the current poll window
        self._prompt_submissions: Counter[str] = Counter()
        self._last_id = 0
        self._last_task: str | None = None
        self._caller = ""  # the Bearer token of the latest API request (echo_token repeats it)
        self._envelope_turn = 0
        self._callbacks: set[asyncio.Task[None]] = set()
        self._callback_session: aiohttp.ClientSession | None = None
        self._runners: list[web.AppRunner] = []
        self._released = asyncio.Event()  # set (and cleared) each time held tasks are released
        self.api_url = ""
        self.files_url = ""

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        api = web.Application(client_max_size=self.config.body_limit * 4)
        api.router.add_post("/api/v1/jobs/createTask", self._create_task)
        api.router.add_get("/api/v1/jobs/recordInfo", self._record_info)
        api.router.add_get("/__sim/stats", self._stats)
        api.router.add_post("/__sim/release", self._release)
        files = web.Application()
        files.router.add_get("/r/{task_id}/{name}", ResultFiles(self).serve)
        self.api_url = await self._serve(api, self.config.port)
        self.files_url = await self._serve(files, self.config.files_port)

    async def _serve(self, app: web.Application, port: int) -> str:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.config.host, port))
        await web.SockSite(runner, sock).start()
        host, bound = sock.getsockname()[:2]
        return f"http://{host}:{bound}"

    async def close(self) -> None:
        for task in list(self._callbacks):
            task.cancel()
        await asyncio.gather(*self._callbacks, return_exceptions=True)
        if self._callback_session is not None:
            await self._callback_session.close()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()

    async def restart(self) -> None:
        """Stop listening and listen again on the same ports, keeping every task and counter: a redeploy of a
        service whose task records live in a database. Connections open meanwhile are dropped."""
        api_port = int(self.api_url.rsplit(":", 1)[1])
        files_port = int(self.files_url.rsplit(":", 1)[1])
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        self.config = replace(self.config, port=api_port, files_port=files_port)
        await self.start()

    def in_flight(self, now: float | None = None) -> int:
        """Tasks created and not yet in a terminal state."""
        now = time.time() if now is None else now
        while self._finishing and self._finishing[0] <= now:
            heapq.heappop(self._finishing)
        return len(self._finishing)

    async def _preamble(self, request: web.Request) -> web.StreamResponse | None:
        """Auth and injected faults, common to both API endpoints. A response means: answer with it."""
        if self.config.response_delay:
            await asyncio.sleep(self.config.response_delay)
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        self._caller = token
        if not token or (self.config.api_key is not None and not hmac.compare_digest(token, self.config.api_key)):
            return self._gateway(401, "invalid token" if token else "missing token")
        if self.config.drop_rate and self.rng.random() < self.config.drop_rate:
            self.stats.dropped += 1
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # aiohttp ends the handler quietly; the client sees a dropped connection
        if self.config.error_rate and self.rng.random() < self.config.error_rate:
            self.stats.errors_injected += 1
            return self._business(500, "internal error, please try again later")
        return None

    # ------------------------------------------------------------ API

    async def _create_task(self, request: web.Request) -> web.StreamResponse:
        self.stats.create_calls += 1
        if (early := await self._preamble(request)) is not None:
            return early
        raw = await request.read()
        if len(raw) > self.config.body_limit:
            return self._business(413, "request body too large")
        try:
            body = json.loads(raw)
        except ValueError:
            return self._business(400, "invalid request body: expected JSON")
        if not isinstance(body, dict):
            return self._business(400, "invalid request body: expected a JSON object")
        if body.get("model") in self.config.unsupported_models:
            return self._model_gone(str(body["model"]))
        if (message := invalid(body, self.cards)) is not None:
            return self._business(400, message)
        if self.config.quota is not None and self.stats.creates >= self.config.quota:
            return self._gateway(403, "用户额度不足 (insufficient user quota)", "insufficient_user_quota")

        now = time.time()
        if self.config.rate is not None:
            limit, window = self.config.rate
            while self._creates and self._creates[0] <= now - window:
                self._creates.popleft()
            if len(self._creates) >= limit:
                return self._saturated()
        if self.config.capacity is not None and self.in_flight(now) >= self.config.capacity:
            return self._saturated(full=True)
        prompt = body["input"]["prompt"]
        if MARK + "reject]" in prompt:
            return self._business(422, "upstream validation rejected the request")

        self._creates.append(now)
        task = self._new_task(body, now)
        self._tasks[task.task_id] = task
        heapq.heappush(self._finishing, now + task.duration)
        self.stats.creates += 1
        self.stats.creates_by_request[request_key(body)] += 1
        if not math.isinf(task.duration):
            self.stats.latency[task.task_id] = task.duration
        self.stats.max_in_flight = max(self.stats.max_in_flight, self.in_flight(now))
        if isinstance(body.get("callBackUrl"), str):
            self._schedule_callback(task)
        answered = task.task_id
        if self.config.reuse_id_rate and self._last_task and self.rng.random() < self.config.reuse_id_rate:
            answered = self._last_task
            self.stats.ids_reused += 1
        self._last_task = task.task_id
        if self.config.create_delay:
            await asyncio.sleep(self.config.create_delay)
        if self.config.lost_answer_rate and self.rng.random() < self.config.lost_answer_rate:
            self.stats.answers_lost += 1
            kind = self.config.lost_answer
            if kind == "mixed":
                kind = "504" if self.rng.random() < 0.5 else "drop"
            if kind == "drop":
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError  # the client sees the connection dropped
            page = "<html><head><title>504 Gateway Time-out</title></head><body>504 Gateway Time-out</body></html>"
            return web.Response(status=504, text=page, content_type="text/html")
        data = {} if self.config.misreport == "no_task_id" and self.stats.creates == 1 else {"taskId": answered}
        return web.json_response(
            {"code": self.config.create_code, "msg": "success", "data": data}, status=self.config.create_status
        )

    def _model_gone(self, model: str) -> web.Response:
        """How the Market answers for a model it no longer offers (SimConfig.unsupported_answer)."""
        self.stats.models_refused += 1
        if self.config.unsupported_answer == "503":  # new-api's distributor, when no channel serves the model
            message = f"当前分组 default 下对于模型 {model} 无可用渠道 (no channel available for model {model})"
            return self._gateway(503, message, "model_not_found")
        if self.config.unsupported_answer == "price":
            message = f"模型 {model} 倍率或价格未配置 (model {model} price not configured)"
            return self._gateway(400, message, "model_price_error")
        return self._business(400, f"unsupported model: {model}")

    def _new_task(self, body: dict[str, Any], now: float) -> Task:
        self._last_id = max(self._last_id + 1, int(now * 1000))
        task_id = f"task_{body['model']}_{self._last_id}"
        duration = max(0.01, self.config.latency + self.rng.uniform(-self.config.jitter, self.config.jitter))
        prompt: str = body["input"]["prompt"]
        self._prompt_submissions[prompt] += 1
        fail: tuple[str, str] | None = None
        if MARK in prompt:
            if MARK + "slow]" in prompt:
                duration *= 10
            if MARK + "hold]" in prompt:
                duration = math.inf
            if MARK + "fail-policy]" in prompt:
                fail = POLICY_FAILURE
            elif MARK + "fail-transient]" in prompt:
                fail = TRANSIENT_FAILURE
            elif (at := prompt.find(MARK + "fail-transient:")) >= 0:
                count = prompt[at + len(MARK + "fail-transient:") :].split("]", 1)[0]
                if count.isdigit() and self._prompt_submissions[prompt] <= int(count):
                    fail = TRANSIENT_FAILURE
        elif self.config.fail_rate and self.rng.random() < self.config.fail_rate:
            fail = TRANSIENT_FAILURE if self.rng.random() < self.config.transient_share else POLICY_FAILURE
        forgets = self.config.forget_after is not None and self.rng.random() < self.config.forget_rate
        self._task_number += 1
        return Task(task_id, body, now, duration, fail, forgets, self._task_number)

    async def _record_info(self, request: web.Request) -> web.StreamResponse:
        self.stats.polls += 1
        if (early := await self._preamble(request)) is not None:
            return early
        if self.config.poll_limit is not None:
            limit, window = self.config.poll_limit
            now = time.time()
            while self._polls and self._polls[0] <= now - window:
                self._polls.popleft()
            if len(self._polls) >= limit:
                self.stats.polls_rate_limited += 1
                return self._saturated()
            self._polls.append(now)
        task_id = request.query.get("taskId", "")
        if not task_id:
            return self._business(400, "taskId is required")
        self.stats.polls_by_task[task_id] += 1
        task = self._tasks.get(task_id)
        now = time.time()
        forgotten = (
            task is not None
            and task.forgets
            and self.config.forget_after is not None
            and now - task.created >= self.config.forget_after
        )
        if forgotten and self.config.forget_answer == "404":
            return self._business(404, "task not found")
        if task is None or forgotten or now - task.created < self.config.null_window:
            return self._business(422, "recordInfo is null")
        record = self._misreported(self._record(task, now), task_id)
        if record["state"] not in ("success", "fail"):
            self.stats.polls_unfinished += 1
        elif task_id not in self.stats.detection_delay:
            self.stats.detection_delay[task_id] = now - (task.created + task.duration)
        return web.json_response({"code": 200, "msg": "success", "data": record})

    def task(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def created(self) -> dict[str, dict[str, Any]]:
        """Every task created so far: its id -> the body of its createTask request (callBackUrl included)."""
        return {task_id: task.body for task_id, task in self._tasks.items()}

    def release(self) -> int:
        """Let every held task ([sim:hold]) finish now; returns how many were released."""
        now = time.time()
        released = [task for task in self._tasks.values() if math.isinf(task.duration)]
        for task in released:
            task.duration = max(0.01, now - task.created)
            self.stats.latency[task.task_id] = task.duration
        if released:
            self._finishing = [t for t in self._finishing if not math.isinf(t)]
            self._finishing.extend(task.created + task.duration for task in released)
            heapq.heapify(self._finishing)
            self._released.set()
            self._released.clear()
        return len(released)

    async def _release(self, request: web.Request) -> web.Response:
        return web.json_response({"released": self.release()})

    async def _stats(self, request: web.Request) -> web.Response:
        data = self.stats.as_dict()
        data["in_flight"] = self.in_flight()
        return web.json_response(data)

    # ------------------------------------------------------------ callbacks

    def _schedule_callback(self, task: Task) -> None:
        job = asyncio.get_running_loop().create_task(self._deliver_callback(task))
        self._callbacks.add(job)
        job.add_done_callback(self._callbacks.discard)

    async def _deliver_callback(self, task: Task) -> None:
        """POST the terminal recordInfo body to callBackUrl, retried briefly; a hint, never guaranteed."""
        while math.isinf(task.duration):
            await self._released.wait()
        await asyncio.sleep(max(0.0, task.created + task.duration - time.time()))
        if self._callback_session is None:
            self._callback_session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        body = {"code": 200, "msg": "success", "data": self._record(task, time.time())}
        for attempt in range(self.config.callback_attempts):
            try:
                async with self._callback_session.post(task.body["callBackUrl"], json=body) as response:
                    if 200 <= response.status < 300:
                        self.stats.callbacks_sent += 1
                        return
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.2 * 2**attempt)


async def serve_until_stopped(config: SimConfig, cards: models.Registry | None = None) -> None:
    """`batchgen sim`: serve until SIGINT or SIGTERM, after printing where (OSError if the port cannot be had)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with Simulator(config, cards) as sim:
        key = "any non-empty Bearer token" if config.api_key is None else "the --api-key given"
        print(
            f"batchgen sim: api={sim.api_url} files={sim.files_url} stats={sim.api_url}/__sim/stats "
            f"(accepts {key}; Ctrl-C to stop)",
            flush=True,
        )
        await stop.wait()
