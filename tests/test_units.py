"""Pure logic, no network: envelope reading, failure classes, backoff and limiter arithmetic, the journal."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from batchgen import client, failures, ledger
from batchgen.config import PollSchedule, RetryPolicy
from batchgen.errors import (
    AuthError,
    QuotaError,
    RateLimited,
    RequestRejected,
    ServerError,
)
from batchgen.limits import Cooldown, InFlightLimiter, RateWindow

from .helpers import until

SATURATED = "当前分组上游负载已饱和，请稍后再试"


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        (200, {}, '{"code":200,"msg":"success","data":{"taskId":"t1"}}', {"taskId": "t1"}),
        (200, {}, '{"code":"200","message":"ok","data":null}', None),
        (400, {}, '{"code":400,"msg":"input.prompt is required","data":null}', RequestRejected),
        (200, {}, '{"code":400,"msg":"input.prompt is required","data":null}', RequestRejected),
        (200, {}, '{"code":500,"msg":"internal error","data":null}', ServerError),
        (200, {}, '{"code":"500","message":"internal error"}', ServerError),
        (401, {}, '{"error":{"message":"invalid token (request id: x)","type":"new_api_error","code":""}}', AuthError),
        (403, {}, '{"error":{"message":"quota","type":"new_api_error","code":"insufficient_user_quota"}}', QuotaError),
        (413, {}, "", RequestRejected),
        (422, {}, '{"code":422,"msg":"upstream validation rejected","data":null}', RequestRejected),
        (429, {}, f'{{"code":"429","message":"{SATURATED}","data":null}}', RateLimited),
        (429, {}, "", RateLimited),
        (429, {}, f'{{"error":{{"message":"{SATURATED}","type":"new_api_error","code":"429"}}}}', RateLimited),
        (200, {}, f'{{"code":"429","message":"{SATURATED}","data":null}}', RateLimited),
        (502, {}, "<html>Bad Gateway</html>", ServerError),
        (503, {}, "", ServerError),
        (200, {}, "not json at all", ServerError),
        (200, {}, "", ServerError),
        (404, {}, "Not Found", RequestRejected),  # whether --api-base is wrong is the caller's to say
        (413, {}, "<html><head><title>413 Request Entity Too Large</title></head></html>", RequestRejected),
        (403, {}, "<html><body>Request blocked</body></html>", QuotaError),
        (401, {}, "<html><body>Unauthorized</body></html>", AuthError),
    ],
)
def test_every_envelope_maps_to_data_or_one_error(status, headers, body, expected):
    if isinstance(expected, type):
        with pytest.raises(expected):
            client.interpret(status, headers, body)
    else:
        assert client.interpret(status, headers, body) == expected


def test_retry_after_is_honoured_in_seconds_or_as_a_date():
    with pytest.raises(RateLimited) as info:
        client.interpret(429, {"Retry-After": "7"}, "")
    assert info.value.retry_after == 7
    assert (
        25 < client.parse_retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))) <= 30
    )
    assert client.parse_retry_after("soon") is None


@pytest.mark.parametrize(
    ("result_json", "urls", "problem"),
    [
        ('{"resultUrls":["https://cdn/x.png"]}', ("https://cdn/x.png",), None),
        ({"resultUrls": ["https://cdn/x.png", "https://cdn/y.png"]}, ("https://cdn/x.png", "https://cdn/y.png"), None),
        ("{not json", (), "resultJson is not valid JSON"),
        ('{"resultUrls":[]}', (), "the task succeeded but its resultJson has no resultUrls"),
        ("", (), "the task succeeded but its resultJson has no resultUrls"),
    ],
)
def test_result_json_is_a_string_or_an_object(result_json, urls, problem):
    record = client.parse_record("t", {"taskId": "t", "state": "success", "resultJson": result_json})
    assert record.result_urls == urls and record.result_error == problem


def test_record_tolerates_missing_and_null_fields():
    record = client.parse_record("t", {"state": "fail", "failCode": None, "failMsg": ""})
    assert record.finished and record.fail_code is None and record.fail_message is None
    assert client.parse_record("t", {}).state == "waiting"


@pytest.mark.parametrize(
    ("code", "message", "kind"),
    [
        ("500", "Internal Error, Please try again later.", "task_transient"),
        (None, "upstream timeout", "task_transient"),
        ("400", "Your prompt was flagged as violating content policies.", "task_policy"),
        ("", "safety filter triggered", "task_policy"),
        ("422", "invalid aspect ratio", "task_invalid"),
        ("E123", "something new", "task_unknown"),
    ],
)
def test_failure_classification_table(code, message, kind):
    assert failures.classify(code, message) == kind


def test_backoff_is_capped_exponential_with_bounded_jitter():
    policy = RetryPolicy(wait_initial=1, wait_max=10, wait_jitter=0.5)
    assert [policy.delay(n, 0) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert policy.delay(1, 0.999) < 1.5


def test_cold_start_schedule_follows_the_published_advice():
    schedule = PollSchedule(2.5)
    assert schedule.interval(0) == 2.5 and schedule.interval(29) == 2.5  # every 2-3 s for the first 30 s
    assert 5 <= schedule.interval(31) <= 10 and 5 <= schedule.interval(119) <= 10
    assert 15 <= schedule.interval(121) <= 30


async def test_in_flight_limiter_never_lets_more_than_the_limit_run():
    limiter = InFlightLimiter(3)
    running = peak = 0

    async def work(n: int) -> None:
        nonlocal running, peak
        await limiter.acquire()
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001 * (n % 3))
        running -= 1
        limiter.release()

    await asyncio.gather(*(work(n) for n in range(50)))
    assert 0 < peak <= 3 and limiter.in_flight == 0


async def settle() -> None:
    """Let every ready callback and task run (a few turns of the loop; no time passes)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_limiter_cut_takes_effect_for_new_slots():
    limiter = InFlightLimiter(4)
    for _ in range(4):
        await limiter.acquire()
    limiter.on_saturated()  # the limit is now 2, with 4 in flight
    waiter = asyncio.ensure_future(limiter.acquire())
    for in_flight in (3, 2):
        limiter.release()
        await settle()
        assert not waiter.done(), f"started with {in_flight} in flight and a limit of 2"
    limiter.release()
    await settle()
    assert waiter.done() and limiter.in_flight == 2
    waiter.result()


def test_rate_window_spaces_events():
    clock = [0.0]
    window = RateWindow(3, 0.2, adaptive=False, clock=lambda: clock[0])
    starts = []
    while len(starts) < 7:
        if window.wait_time() == 0:
            window.done(window.take())  # answered at once
            starts.append(clock[0])
        else:
            clock[0] = round(clock[0] + 0.01, 2)
    assert starts == [0, 0, 0, 0.2, 0.2, 0.2, 0.4]  # events 4-6 waited one window, event 7 a second one


def test_rate_window_counts_a_call_from_its_answer_and_forgets_dropped_ones():
    clock = [0.0]
    window = RateWindow(2, 0.1, adaptive=False, clock=lambda: clock[0])
    first, second = window.take(), window.take()
    clock[0] = 0.15
    assert window.wait_time() is None  # both calls are still under way: they count however long they take
    window.forget(first)  # dropped with a 429: it takes no place
    assert window.wait_time() == 0
    third = window.take()
    window.done(second)
    window.done(third)
    assert window.wait_time() == pytest.approx(0.1)  # a full window after the answers came back
    clock[0] = 0.25
    assert window.wait_time() == 0


async def test_rate_window_learns_from_429_and_recovers():
    window = RateWindow(100, 1.0)
    window.learn(window.accepted())  # a rate 429 with nothing accepted yet: halve
    assert window.count == 50
    for _ in range(20):
        window.done(await window.acquire())
    window.learn(window.accepted())  # the service took 20 in this window and refused the 21st: 20 is its limit
    assert window.count == 20
    for _ in range(5000):
        window.on_success()
    assert window.count == 100


def test_cooldown_grows_and_honours_retry_after():
    clock = [0.0]
    cooldown = Cooldown(RetryPolicy(wait_initial=1, wait_max=8, wait_jitter=0), clock=lambda: clock[0])
    delays = []
    for pause in range(1, 6):
        delays.append(cooldown.trigger(pause))
        clock[0] += delays[-1]  # that pause is over
    assert delays == [1, 2, 4, 8, 8]
    first = cooldown.trigger(1)
    assert cooldown.trigger(2) == first  # a pause under way is not lengthened by the burst that caused it
    assert cooldown.trigger(1, retry_after=30) == 30  # ... unless the server asks for longer


# ---------------------------------------------------------------- the ledger


def test_snapshot_is_replaced_atomically_and_no_temp_files_remain(tmp_path):
    with ledger.Ledger.open(tmp_path, "m.yaml") as book:
        for n in range(3):
            book.start_submit(f"i{n}", {"model": "imagen4-ultra", "input": {"prompt": str(n)}})
            book.snapshot()
    assert sorted(p.name for p in (tmp_path / ".batchgen").iterdir()) == [
        "journal.jsonl",
        "lock",
        "previous-journal.jsonl",
        "previous.json",
    ]
    assert json.loads((tmp_path / "results.json").read_text())["counts"]["pending"] == 3


def test_in_flight_limit_is_cut_by_429_and_climbs_back():
    from batchgen.limits import InFlightLimiter

    limiter = InFlightLimiter(8, calm=3600)
    limiter.on_saturated()  # nothing known: halve
    assert limiter.limit == 4
    limiter.on_saturated(running=2)  # the service runs 2 of ours and refuses a third: 2 is what it takes
    assert limiter.limit == 2
    limiter.on_saturated(running=5)  # never raised by a 429
    assert limiter.limit == 2
    limiter.cap = 2.0  # the service said "full" at 2 twice: a confirmed level
    for _ in range(2):
        limiter.on_success()
    assert limiter.limit == 2  # while 429s are recent, one slot per `limit` successes
    for _ in range(40):
        limiter.on_success()
    assert limiter.limit == 8  # back, and never above the maximum
    limiter.on_saturated(running=3)
    limiter.cap = 6.0
    limiter.calm = 0  # long after the last 429, below the level of the last "full": a whole slot per success
    limiter.on_success()
    assert limiter.limit == 4
    limiter.cap = None  # no confirmed level (a first "full" may be a rate's doing): a whole slot per success
    limiter.calm = 3600
    limiter.on_success()
    assert limiter.limit == 5


async def test_a_cancelled_download_waits_for_its_thread_before_the_descriptor_is_closed(tmp_path):
    """The end of a download (write, sync, verify, rename) runs in a thread on the file descriptor the download
    closes when it ends. Cancelled (a stop, SIGTERM), it must not close that descriptor under the thread: the
    number could be another file's by then. The cancellation waits for the thread, then goes on."""
    import os
    import threading

    from batchgen.download import _holding_fd

    release = threading.Event()
    entered = threading.Event()
    fd = os.open(tmp_path / "part", os.O_WRONLY | os.O_CREAT)

    def work(descriptor: int) -> int:
        entered.set()
        release.wait(10)
        return os.write(descriptor, b"late bytes")  # still this file's descriptor

    job = asyncio.ensure_future(_holding_fd(work, fd))
    await until(entered.is_set, 5.0, what="the thread never started")
    job.cancel()
    await asyncio.sleep(0)
    assert not job.done()  # the cancellation waits for the thread
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await job
    os.close(fd)
    assert (tmp_path / "part").read_bytes() == b"late bytes"
