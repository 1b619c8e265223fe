"""The simulator's knobs: one frozen value object, also filled from `batchgen sim` flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Misreport = Literal["no_task_id", "wrong_task", "no_urls", "bad_result_json"]
Envelope429 = Literal["relay", "business", "gateway", "empty", "mixed"]
LostAnswer = Literal["504", "drop", "mixed"]
ForgetAnswer = Literal["null", "404"]
PngTrailer = Literal["none", "garbage", "double_iend"]
GoneAnswer = Literal["400", "price", "503"]


@dataclass(frozen=True, slots=True)
class SimConfig:
    """How the simulated service behaves. Times are seconds; rates are fractions from 0 to 1."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    files_port: int = 0  # result files are served from this second origin (0: a free port)
    api_key: str | None = None  # None: any non-empty Bearer token is accepted

    # Task lifecycle: waiting -> queuing -> generating -> success|fail, on the server's own clock.
    latency: float = 30.0  # creation to terminal state (Imagen 4 Ultra takes 20-45 s)
    jitter: float = 5.0  # +/- uniformly around latency
    results_per_task: int = 1
    # The service's billing fields in recordInfo: each task consumes this many credits of the account's
    # balance (consumeCredits, remainedCredits); None: recordInfo carries only costTime.
    credits_per_task: float | None = None
    credits_balance: float = 1000.0
    c2pa: bool = False  # served PNGs carry a (dummy) C2PA manifest: a `caBX` chunk after IHDR
    # Served PNGs are whole, and Pillow reads them, but something follows IEND: bytes (as some encoders and
    # CDNs append) or a second IEND chunk.
    png_trailer: PngTrailer = "none"
    image_scale: float = 1.0  # 1.0: real 2K sizes (2816x1536 for 16:9); tests use small images

    # Limits of the API family: 20 creates per 10 s per account, 429 beyond (the request is dropped).
    rate: tuple[int, float] | None = (20, 10.0)
    capacity: int | None = None  # 429 beyond this many tasks in flight
    poll_limit: tuple[int, float] | None = None  # 429 beyond N status queries per window (the family: ~10 per s)
    quota: int | None = None  # paid creates allowed before 403 insufficient_user_quota
    body_limit: int = 1024 * 1024  # 413 beyond this many bytes of request body

    # Faults.
    fail_rate: float = 0.0  # share of tasks that end in `fail`
    transient_share: float = 0.5  # of those, the share that are transient (worth resubmitting)
    error_rate: float = 0.0  # API requests answered 500
    drop_rate: float = 0.0  # API requests whose connection is dropped without an answer
    truncate_rate: float = 0.0  # downloads cut short (the connection closes mid-body)
    html_rate: float = 0.0  # downloads answered 200 with an HTML error page
    null_window: float = 0.0  # recordInfo says "recordInfo is null" this long after creation
    url_ttl: float | None = 3600.0  # result URLs expire this long after recordInfo hands them out
    files_public_url: str | None = None  # result URLs start with this (a gateway or CDN in front of the files origin)
    result_url: str | None = None  # hand out this URL instead ({task_id}, {n}, {ext}): a hostile result host
    expired_url_rate: float = 0.0  # share of result URLs handed out already expired (a slow client's fate)
    http200_errors: bool = False  # business errors come with HTTP 200 and the code only in the body
    envelope_429: Envelope429 = "relay"
    capacity_envelope_429: Envelope429 | None = None  # a "full" 429 (capacity) wrapped so; None: as envelope_429
    retry_after: float | None = None  # send Retry-After on 429 (the real service does not)
    response_delay: float = 0.0  # added to every API answer

    # Money faults: createTask calls whose outcome the client cannot be sure of.
    create_delay: float = 0.0  # the task is created at once, its answer sent this much later
    lost_answer_rate: float = 0.0  # share of creates where the task is created, then the answer is lost ...
    lost_answer: LostAnswer = "504"  # ... as a 504 gateway page, a dropped connection, or either at random
    create_status: int = 200  # the HTTP status of a successful create's answer (201 happens) ...
    create_code: int | str = 200  # ... and its body code (some deployments say 0)
    reuse_id_rate: float = 0.0  # share of creates answered with the task id of the create before (a bug)

    # Forgetting: the service keeps task records for weeks, not forever.
    forget_after: float | None = None  # recordInfo answers as for an unknown task this long after creation ...
    forget_rate: float = 1.0  # ... for this share of tasks (decided at creation) ...
    forget_answer: ForgetAnswer = "404"  # ... with a 404 "task not found", or 422 "recordInfo is null"
    create_time_offset: float = 0.0  # createTime is reported this many seconds in the past (an old task)

    # A careless service that repeats the caller's token: in error messages and failMsg (as sent and
    # URL-encoded), and, with key_in_result_url, in the result URLs it hands out (`?auth=<url-encoded token>`).
    echo_token: bool = False
    fail_message: str | None = None  # every failed task's failMsg is this text (a hostile one: escape sequences)
    key_in_result_url: bool = False
    # Answers that are wrong in shape: the first create answers success with no taskId (the task is created and
    # paid all the same); the first two recordInfo answers of a task are about another task (and say it failed);
    # a success whose resultJson has no URLs, or is not JSON.
    misreport: Misreport | None = None

    # Models the service no longer offers: a create for one is answered 400 "unsupported model", 400
    # model_price_error ("price not configured"), or the gateway's 503 "no channel available for model X".
    unsupported_models: tuple[str, ...] = ()
    unsupported_answer: GoneAnswer = "400"
    wrong_extension: bool = False  # result URLs and Content-Type say PNG whatever the bytes are

    callback_attempts: int = 3  # callbacks are retried briefly, then given up
    random_seed: int | None = None  # for repeatable faults
