"""What the simulated service knows: its tasks (each one's life on the service's own clock), the faults a
prompt can ask for, the counters tests and benchmarks read, and which requests each model's card refuses. No I/O:
server.py serves it over HTTP."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import models, schema

SATURATED = "当前分组上游负载已饱和，请稍后再试"  # the task relay's own words: "upstream load is saturated"

# Failures a task can end in: (failCode, failMsg, transient). Modelled on the API family's published ones.
TRANSIENT_FAILURE = ("500", "Internal Error, Please try again later.")
POLICY_FAILURE = ("400", "Your prompt was flagged as violating content policies.")

# Prompt markers for tests that need a fault on one item, deterministically:
#   [sim:fail-policy]        the task ends in fail with a content-policy failure
#   [sim:fail-transient]     the task ends in fail with a transient failure, every time
#   [sim:fail-transient:N]   ... only the first N times this prompt is submitted
#   [sim:reject]             createTask answers 422 (upstream validation rejected)
#   [sim:slow]               the task takes ten times the configured latency
#   [sim:hold]               the task stays `generating` until `Simulator.release()` (or POST /__sim/release):
#                            holds a run open by construction, never by a sleep
MARK = "[sim:"


@dataclass(slots=True)
class SimStats:
    """What the simulator saw. Tests read it directly, or as JSON from GET /__sim/stats."""

    creates: int = 0  # paid: createTask calls that created a task (whether or not its answer arrived)
    models_refused: int = 0  # creates answered "this model is not offered" (SimConfig.unsupported_models)
    answers_lost: int = 0  # creates whose answer was then lost (504 or dropped): the client cannot know
    ids_reused: int = 0  # creates answered with an earlier task's id
    create_calls: int = 0
    polls: int = 0
    rate_limited: int = 0  # 429 answers, any endpoint
    errors_injected: int = 0
    dropped: int = 0
    max_in_flight: int = 0
    file_requests: int = 0
    file_bytes: int = 0
    file_auth_headers: int = 0  # file requests that carried an Authorization header (never acceptable)
    callbacks_sent: int = 0
    creates_by_request: Counter[str] = field(default_factory=Counter)  # first 12 hex of sha256 of the request
    polls_by_task: Counter[str] = field(default_factory=Counter)
    # Per task: seconds from its finish to the first recordInfo that saw it finished (how late a client found it).
    detection_delay: dict[str, float] = field(default_factory=dict)
    latency: dict[str, float] = field(default_factory=dict)  # per task: creation to finish (held ones: once released)
    polls_rate_limited: int = 0  # 429 answers to recordInfo (of `rate_limited`)
    polls_unfinished: int = 0  # recordInfo answers for a task not finished yet (queries a perfect client saves)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["creates_by_request"] = dict(self.creates_by_request)
        data["polls_by_task"] = dict(self.polls_by_task)
        return data


@dataclass(slots=True)
class Task:
    task_id: str
    body: dict[str, Any]
    created: float  # time.time()
    duration: float  # math.inf while held ([sim:hold])
    fail: tuple[str, str] | None
    forgets: bool = False  # recordInfo forgets it after SimConfig.forget_after
    number: int = 0  # the account's nth paid create (for remainedCredits)

    def state(self, now: float) -> str:
        if math.isinf(self.duration):
            return "generating"  # held until released
        age = now - self.created
        if age >= self.duration:
            return "fail" if self.fail else "success"
        if age < 0.1 * self.duration:
            return "waiting"
        if age < 0.25 * self.duration:
            return "queuing"
        return "generating"


def request_key(body: dict[str, Any]) -> str:
    """The same key batchgen derives an item id from: sha256 of the canonical {model, input}."""
    request = {"model": body.get("model"), "input": body.get("input")}
    return hashlib.sha256(json.dumps(request, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def ms(seconds: float) -> int:
    """The API's times are Unix milliseconds."""
    return int(seconds * 1000)


def invalid(body: dict[str, Any], cards: models.Registry) -> str | None:
    """The service's 400 message for a malformed request, or None: each model by its card."""
    model = body.get("model")
    if not model:
        return "model is required"
    card = cards.get(model) if isinstance(model, str) else None
    if card is None:
        return f"unsupported model: {model}"
    callback = body.get("callBackUrl")
    if callback is not None and not (isinstance(callback, str) and callback.startswith(("https://", "http://"))):
        return "callBackUrl must be an http(s) URL"
    data = body.get("input")
    if not isinstance(data, dict):
        return "input is required"
    if not isinstance(data.get("prompt"), str) or not data["prompt"].strip():
        return "input.prompt is required"
    for name, value in data.items():
        spec = card.fields.get(name)
        if spec is None:
            return f"input.{name} is not a supported parameter"
        try:
            spec.normalise(value)
        except schema.FieldError as exc:
            return f"input.{name}: {exc}"
        if spec.kind == "int" and not isinstance(value, int):
            return f"input.{name} must be an integer"
    for name, message in card.problems(data):
        return f"input.{name}: {message}"
    return None
