"""Saturation that is capacity, not rate: the 429 classifier and the in-flight limiter on a clock advanced by hand
(no sleeps), and over real loopback HTTP a simulator whose 429 means "full"."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json

import pytest

from batchgen import memory, runner
from batchgen.config import PollSchedule, RetryPolicy
from batchgen.limits import Hints, InFlightLimiter, Throttle
from batchgen.progress import Reporter

from .helpers import Clock, accept, make_settings, manifest_of, run_tasks, throttle, until


def test_a_first_429_with_the_window_not_full_is_capacity_and_keeps_the_window():
    clock = Clock()
    t = throttle(clock)  # create window 20/10 s
    accept(t, 8)
    run_tasks(t, 8)
    verdict = t.on_create_saturated(t.epoch)
    assert verdict is not None and verdict.kind == "capacity"
    assert (verdict.accepted, verdict.running) == (8, 8)
    assert t.limiter.limit == 8  # what the service runs for us is what it takes
    assert t.window.count == 20 and t.learned_count is None  # the window is kept
    assert verdict.pause == 0.0 and t.strikes == 0  # nobody pauses: a slot frees when a task finishes
    # Capacity 429s go on: never a pause, never a window cut.
    for _ in range(3):
        verdict = t.on_create_saturated(t.epoch)
        assert verdict is not None and verdict.kind == "capacity" and verdict.pause == 0.0
    assert t.window.count == 20 and t.cooldown.remaining == 0


def test_a_429_with_few_tasks_running_and_a_full_window_is_rate():
    clock = Clock()
    t = throttle(clock)
    accept(t, 8)
    run_tasks(t, 8)
    t.on_create_saturated(t.epoch)  # capacity at 8 running
    clock.advance(11)  # a new window; most tasks finished
    t.limiter.running = 2
    accept(t, 8)
    verdict = t.on_create_saturated(t.epoch)  # the window at the level it was refused at, 2 tasks running
    assert verdict is not None and verdict.kind == "rate"
    assert t.window.count == 8 and t.learned_count == 8  # the window learns the rate
    assert t.cap_level is None  # fewer running than at the "full": it was the window's doing


def test_both_at_once_cuts_both():
    clock = Clock()
    t = Throttle(concurrency=100, create_rate=(30, 10.0), poll_rate=8, retry=RetryPolicy(), clock=clock)
    accept(t, 12)
    run_tasks(t, 12)
    assert t.on_create_saturated(t.epoch).kind == "capacity"  # the window not full: the service is full at 12
    clock.advance(11)
    accept(t, 29)  # the window full, and as many running as at the "full": both at once
    verdict = t.on_create_saturated(t.epoch)
    assert verdict is not None and verdict.kind == "both"
    assert t.limiter.limit == 12 and t.window.count == 29 and t.learned_count == 29 and t.cap_level == 12


def first_full(clock: Clock, level: int, concurrency: int = 100) -> Throttle:
    """A throttle cut at a first "full" with `level` tasks running: unconfirmed (a rate limit's looks the same)."""
    t = throttle(clock, concurrency=concurrency)
    accept(t, level)
    run_tasks(t, level)
    t.on_create_saturated(t.epoch)
    assert t.limiter.limit == level and t.limiter.cap is None
    return t


def test_the_first_429_cap_is_probed_quickly_a_confirmed_one_one_slot_per_generation():
    clock = Clock()
    t = first_full(clock, 10)
    clock.advance(2)  # calm: a whole slot per success
    accept(t, 3)
    assert t.limiter.limit == 13
    t.on_create_saturated(t.epoch)  # full again at 10 running: confirmed
    assert t.limiter.cap == 10 and t.limiter.limit == 10
    clock.advance(5)
    accept(t, 9)
    assert t.limiter.limit == 10  # above a confirmed cap: one slot per `limit` successes
    accept(t, 2)
    assert t.limiter.limit == 11


def test_after_a_first_full_a_refill_below_its_level_does_not_raise_the_limit_a_create_sent_at_it_does():
    clock = Clock()
    t = first_full(clock, 10)  # unconfirmed: a whole slot per create sent at the level
    clock.advance(2)
    t.limiter.running = t.limiter.in_flight = 4  # six seen finished at once: their slots refilled
    for held in range(4, 10):  # each refill leaves with the earlier ones at the service (running or being asked)
        t.limiter.in_flight += 1
        t.limiter.started()
        t.on_create_success(held_when_sent=held)
    assert t.limiter.limit == 10  # the refills show the service had room below its "full", nothing above it
    t.limiter.in_flight += 1
    t.limiter.started()
    t.on_create_success(held_when_sent=10)  # sent with 10 running, taken: the service took one more
    assert t.limiter.limit == 11
    t.on_create_saturated(t.epoch)  # "full" again at 11 running: confirmed at 10
    assert t.limiter.cap == 10
    t.on_create_success(held_when_sent=3)  # a confirmed level: one slot per `limit` creates, refills too
    assert t.limiter._limit > 10


def test_a_limit_above_a_wrong_full_climbs_though_a_slot_is_always_being_created():
    """A first "full" at 8 that was a moment's: the service now takes anything, and its createTask answers are slow,
    so one of the slots is always in a create call and every answer finds 8 running of 9; each refill leaves with 7
    running and one being created. Counting a create only when every slot's task was running (or only the tasks
    running when it left) left the limit at 9 for good (a hostile test: a night at a quarter of its pace); the
    service had 8 of ours as the refill left, the level: it is one past it."""
    clock = Clock()
    t = first_full(clock, 8, concurrency=40)
    clock.advance(2)
    t.limiter._limit += 1.0  # what the probe once calm does
    t.limiter.in_flight = 9
    for _ in range(40):
        clock.advance(0.1)
        t.limiter.ended()  # a task seen finished: its slot refilled while another slot's create is under way
        held = t.limiter.running + 1  # what the service has of ours as the refill leaves
        t.limiter.started()
        t.on_create_success(held_when_sent=held)
    assert t.limiter.limit >= 20 or t.cap_level is None


def test_a_cap_the_service_went_past_without_a_429_is_no_cap():
    clock = Clock()
    t = throttle(clock)
    accept(t, 10)
    run_tasks(t, 10)
    t.on_create_saturated(t.epoch)
    assert t.cap_level == 10
    run_tasks(t, 3)
    accept(t, 1)  # a create accepted with 14 running: 10 was not the service's capacity (nor our lag)
    assert t.cap_level is None and t.rate_level == 10  # that 429 came with 10 accepted in the window


def test_a_remembered_capacity_is_a_start_that_is_re_probed_not_a_ceiling():
    clock = Clock()
    t = throttle(clock, concurrency=100, hints=Hints(in_flight=30))
    assert t.limiter.limit == 30 and t.limiter.maximum == 100 and t.limiter.cap == 30
    accept(t, 31)
    assert t.limiter.limit == 31  # above it one slot per generation, never stuck below


def test_tasks_finished_there_and_not_seen_here_do_not_refute_a_full_level():
    """Our count of tasks running includes the ones the service finished and we have not asked about yet: the
    service "running 20" with a full level of 10 is no evidence while only 10 of them are young enough to be
    surely running. Once more than that are, the level was the window's doing (see the next test)."""
    clock = Clock()
    t = throttle(clock)
    young = 10
    t.young = lambda: young
    accept(t, 10)
    run_tasks(t, 10)
    assert t.on_create_saturated(t.epoch).kind == "capacity" and t.cap_level == 10
    clock.advance(11)  # the next window
    run_tasks(t, 10)  # 20 running by our count
    accept(t, 1)
    assert t.cap_level == 10  # the old reading (21 > 10 + lag) dropped it and learned a create rate of 10
    young = 13  # 14 surely running with the one just created
    accept(t, 1)
    assert t.cap_level is None
    # That 429 came with 10 creates accepted in the window: the rate, learned now (kept for the next night too),
    # not at the next burst of 429s.
    assert t.rate_level == 10 and t.window.count == 10 and t.learned_count == 10


def test_a_full_level_read_before_its_bursts_accepts_were_handled_allows_them():
    """A burst of creates at once: the service takes 20 and refuses the rest, but under a loaded loop the first
    429 is handled before three of the accepted answers — "full at 17". The other 429s of that burst come with 20
    running: 20 running later is no evidence against the level (the young rule read 19 as proof before), 23 is."""
    clock = Clock()
    t = Throttle(concurrency=100, create_rate=(100, 1.0), poll_rate=8, retry=RetryPolicy(), clock=clock)
    young = 0
    t.young = lambda: young
    burst = t.epoch
    accept(t, 17)
    run_tasks(t, 17)
    assert t.on_create_saturated(burst).kind == "capacity" and t.cap_level == 17
    accept(t, 3)  # the burst's last accepted answers, handled after its first 429
    run_tasks(t, 3)
    assert t.on_create_saturated(burst) is None  # the same burst: no new reading ...
    assert t.full_level() == 22  # ... but 20 ran at it
    clock.advance(1.0)
    young = 20
    accept(t, 1)  # 21 surely running: no more than that burst had
    assert t.cap_level == 17
    young = 22
    accept(t, 1)
    assert t.cap_level is None and t.corrected is not None and "23 surely running since" in t.corrected


def test_a_full_level_refuted_gives_the_in_flight_limit_back_and_learns_the_rate():
    """rate_unknown's first 429: told 100 creates/s, refused at 20 accepted with the window not full — capacity,
    by the rule. When the next 429 comes with fewer tasks running than that "full", it was a rate: the in-flight
    limit goes back to where it was, and the window learns what the service accepted."""
    clock = Clock()
    t = Throttle(concurrency=100, create_rate=(100, 1.0), poll_rate=8, retry=RetryPolicy(), clock=clock)
    accept(t, 20)
    run_tasks(t, 20)
    assert t.on_create_saturated(t.epoch).kind == "capacity" and t.limiter.limit == 20
    clock.advance(1.5)
    t.limiter.running = 8  # most finished
    accept(t, 20)
    verdict = t.on_create_saturated(t.epoch)
    assert verdict is not None and verdict.kind == "rate"
    assert t.limiter.limit >= 99  # given back (it stayed at 20 and climbed one slot per create)
    assert t.window.count == 20 and t.learned_count == 20 and t.cap_level is None


def test_a_rate_429_is_read_against_the_window_its_call_was_sent_into():
    """rate_unknown's windows: the service takes 20 creates a second; the window, climbed back to 21, sends a 21st
    as the oldest of the last 20 leaves it. Its 429 is handled 60 ms later (a busy loop): by then six more of those
    20 have left the window counted from the answer — read so, the service "accepted 14" (a window cut to 14, or
    with no level known yet, a "full"). Read against the window the call met, it accepted 20: the rate, learned."""
    clock = Clock(1000.0)
    t = Throttle(concurrency=100, create_rate=(21, 1.0), poll_rate=8, retry=RetryPolicy(), clock=clock)
    for _ in range(20):  # the last window's 20, answered 10 ms apart
        accept(t, 1)
        clock.advance(0.01)
    run_tasks(t, 20)
    clock.now = 1001.001  # the oldest (1000.00) has left the window: two calls may go
    assert t.window.wait_time() == 0
    taken, refused = t.window.take(), t.window.take()
    t.window.leaving(taken)
    clock.advance(0.001)
    t.window.leaving(refused)  # the service: 19 of the last window and `taken` — full
    clock.advance(0.001)
    t.window.done(taken)
    t.on_create_success()
    clock.advance(0.06)  # the 429's answer is handled late
    t.window.forget(refused)
    verdict = t.on_create_saturated(t.epoch, slot=refused)
    assert verdict is not None and verdict.kind == "rate" and verdict.accepted == 20
    assert t.window.count == 20 and t.learned_count == 20


async def test_an_unconfirmed_full_level_is_probed_once_calm_without_waiting_for_a_finish():
    """Cut at a first "full" (a rate limit's looks the same), the limiter tries one more create once calm, even
    though none of its tasks was seen finished: a window that moved on is found without waiting for a latency."""
    limiter = InFlightLimiter(100, calm=0.05)
    for _ in range(20):
        await limiter.acquire()
    limiter.on_saturated(running=20)
    assert limiter.limit == 20
    waiter = asyncio.ensure_future(limiter.acquire())
    await until(lambda: waiter.done(), 5.0, what="no probe once calm")
    assert limiter.limit == 21 and limiter.in_flight == 21
    limiter.cap = 20.0  # a confirmed level: no probe without a finish
    limiter.on_saturated(running=21)
    assert limiter._probe is None


async def test_requeue_gives_the_slot_back_and_waits_for_one_to_free():
    clock = Clock()
    limiter = InFlightLimiter(2, clock=clock)
    await limiter.acquire()
    await limiter.acquire()
    limiter.on_saturated(running=1)  # full at one running: the limit is 1, two slots held
    waiter = asyncio.ensure_future(limiter.requeue())
    await asyncio.sleep(0)
    assert not waiter.done() and limiter.in_flight == 1
    limiter.release()  # a task seen finished: its slot goes to the refused item at once
    await asyncio.wait_for(waiter, 5)
    assert limiter.in_flight == 1
    limiter.in_flight += 1  # another holder: two held, room for one
    cancelled = asyncio.ensure_future(limiter.requeue())
    await asyncio.sleep(0)
    assert not cancelled.done() and limiter.in_flight == 1
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert limiter.in_flight == 2  # still counted as held: its owner releases it


async def test_a_capacity_429_drops_the_in_flight_limit_and_keeps_the_create_window(sim_factory, tmp_path, state_home):
    """Real loopback: the simulator is full at 3 tasks (its 429 in the task relay's envelope); the run is told
    a create window of 50/1 s and 12 in flight. The 429s are read as capacity: the limit drops to 3, the window
    stays, and the memory keeps a capacity, never a rate."""
    path = manifest_of(tmp_path / "m.yaml", [f"p{n}" for n in range(12)])
    async with sim_factory(capacity=3, rate=None, latency=0.3, jitter=0.0, envelope_429="gateway") as sim:
        stream = io.StringIO()
        settings = make_settings(path, tmp_path / "out", sim, concurrency=12, create_rate=(50, 1.0))
        outcome = await runner.run(settings, Reporter(stream=stream, progress=False, verbose=True))
        log = stream.getvalue()
        assert outcome.exit_code == 0 and sim.stats.rate_limited > 0
        assert "taken for capacity (the service is full)" in log
        assert "create window 50/1 s (kept)" in log
        assert "taken for rate" not in log
        assert sim.stats.max_in_flight <= 3
        kept = json.loads(memory.path_for(state_home / "batchgen", sim.api_url).read_text())
        assert kept["create_rate"] is None
        (entry,) = kept["models"].values()
        assert entry["capacity"]["tasks"] == 3 and entry["capacity"]["learned_from"] == "capacity_429"


async def test_a_full_service_is_remembered_as_full_not_as_a_create_rate(sim_factory, tmp_path, state_home):
    """Real loopback, the capacity_c64 night made small: the simulator is full at 10 tasks of 0.5 s (no rate
    limit, its 429 in every envelope in turn), the run told 32 in flight and 1000 creates/s. Tasks the service
    finished and the run has not seen yet keep the run's count of tasks running above 10 — that is no evidence
    that the service ran more than 10 without refusing. What is remembered is a capacity, not a create rate."""
    path = manifest_of(tmp_path / "m.yaml", [f"p{n}" for n in range(80)])
    async with sim_factory(capacity=10, rate=None, latency=0.5, jitter=0.0, envelope_429="mixed") as sim:
        stream = io.StringIO()
        settings = make_settings(path, tmp_path / "out", sim, concurrency=32, poll_rate=80.0, poll=PollSchedule(0.125))
        outcome = await runner.run(settings, Reporter(stream=stream, progress=False, verbose=True))
        log = stream.getvalue()
        assert outcome.exit_code == 0 and sim.stats.rate_limited > 0
        assert "taken for capacity (the service is full)" in log
        kept = json.loads(memory.path_for(state_home / "batchgen", sim.api_url).read_text())
        assert kept["create_rate"] is None, log
        (entry,) = kept["models"].values()
        assert entry["capacity"]["learned_from"] == "capacity_429" and 8 <= entry["capacity"]["tasks"] <= 16


async def test_a_full_service_gets_no_second_burst_past_its_level(sim_factory, tmp_path, state_home):
    """Real loopback, capacity made small: full at 10 tasks of 0.5 s, all finishing together (no jitter), the run
    told 32 in flight. The first burst meets 22 refusals; that first "full" is unconfirmed, and the creates that
    refill the slots seen free must not raise the limit above it. Counted per refill, the first batch seen
    finished raised the limit by ten, and a second burst went past the full service (33-34 refusals in all
    here; 25 now, under load too)."""
    path = manifest_of(tmp_path / "m.yaml", [f"p{n}" for n in range(60)])
    async with sim_factory(capacity=10, rate=None, latency=0.5, jitter=0.0, envelope_429="mixed") as sim:
        stream = io.StringIO()
        settings = make_settings(path, tmp_path / "out", sim, concurrency=32, poll_rate=80.0, poll=PollSchedule(0.125))
        outcome = await runner.run(settings, Reporter(stream=stream, progress=False, verbose=True))
        assert outcome.exit_code == 0 and sim.stats.creates == 60 and sim.stats.max_in_flight <= 10
        assert 22 <= sim.stats.rate_limited <= 22 + 6, stream.getvalue()


async def test_a_full_of_a_moment_with_slow_create_answers_does_not_hold_the_run_at_its_level(
    sim_factory, tmp_path, state_home
):
    """Real loopback (a hostile test's): the service is full at 8 for its first second, then takes anything; its
    createTask answers take 0.8 s (the task is made at once), its tasks 1 s; the run is told 40 in flight. A slot
    is nearly always in a create call, so no answer finds every slot's task running: counting only those held
    the limit at 9 for the whole night (a third of the pace). The refills leave with 8 at the service: past."""
    path = manifest_of(tmp_path / "m.yaml", [f"p{n}" for n in range(80)])
    async with sim_factory(capacity=8, rate=None, latency=1.0, jitter=0.3, create_delay=0.8) as sim:
        settings = make_settings(path, tmp_path / "out", sim, concurrency=40, poll_rate=80.0, poll=PollSchedule(0.125))

        async def room() -> None:
            await asyncio.sleep(1.0)
            sim.config = dataclasses.replace(sim.config, capacity=None)

        opened = asyncio.ensure_future(room())
        outcome = await runner.run(settings, Reporter(stream=io.StringIO(), progress=False))
        await opened
        assert outcome.exit_code == 0 and sim.stats.creates == 80
        assert sim.stats.max_in_flight > 20  # the limit climbed past the moment's "full" (9-10 when it stuck)


async def test_a_rate_limit_first_read_as_full_is_corrected(sim_factory, tmp_path, state_home):
    """Real loopback, rate_unknown made small: the service takes 8 creates a second (no capacity limit, 1 s per
    image), the run is told 100/1 s. Its first 429 comes with the window not full: capacity, by the rule. The
    tasks surely running then go past that "full" level without a refusal: `-v` says the reading was the window's,
    and the service is remembered with a create rate and no capacity."""
    path = manifest_of(tmp_path / "m.yaml", [f"p{n}" for n in range(48)])
    async with sim_factory(rate=(8, 1.0), latency=1.0, jitter=0.2) as sim:
        stream = io.StringIO()
        told = dict(concurrency=40, create_rate=(100, 1.0), poll_rate=80.0, poll=PollSchedule(0.125))
        settings = make_settings(path, tmp_path / "out", sim, **told)
        outcome = await runner.run(settings, Reporter(stream=stream, progress=False, verbose=True))
        log = stream.getvalue()
        assert outcome.exit_code == 0 and sim.stats.rate_limited > 0
        assert "taken for capacity (the service is full)" in log
        assert "was the create window's" in log, log
        kept = json.loads(memory.path_for(state_home / "batchgen", sim.api_url).read_text())
        assert kept["create_rate"]["learned_from"] == "rate_429" and 6 <= kept["create_rate"]["count"] <= 8, log
        (entry,) = kept["models"].values()
        assert entry["capacity"] is None, log


async def test_a_rate_limit_read_as_full_is_found_out_by_asking_before_any_task_finishes(
    sim_factory, tmp_path, state_home
):
    """Real loopback: the service takes 6 creates a second (no capacity limit) and its tasks run until released;
    the run is told 100/1 s. Its first 429 comes with the window not full: "full at 6", by the rule. A second
    later the service takes the other 6 without a refusal. No task finishes, so none is *surely* running by its
    age; the run asks the tasks it holds instead, finds more running than a "full" of 6 allows, and says so in
    `-v` — before any task finished. The service is remembered with a create rate of 6/1 s, not a capacity."""
    path = manifest_of(tmp_path / "m.yaml", [f"p{n} [sim:hold]" for n in range(12)])
    async with sim_factory(rate=(6, 1.0), latency=0.3, jitter=0.0) as sim:
        stream = io.StringIO()
        told = dict(concurrency=40, create_rate=(100, 1.0), poll_rate=80.0, poll=PollSchedule(0.125))
        settings = make_settings(path, tmp_path / "out", sim, **told)
        job = asyncio.ensure_future(runner.run(settings, Reporter(stream=stream, progress=False, verbose=True)))
        try:
            await until(lambda: "seen running at once" in stream.getvalue(), 15.0, what="the reading was not refuted")
            assert sim.stats.creates >= 8 and not any(sim.stats.latency.values()), "a task finished"
        finally:
            await until(lambda: sim.release() >= 0 and job.done(), 30.0, what="the run did not end")
        outcome = job.result()
        log = stream.getvalue()
        assert outcome.exit_code == 0
        assert "taken for capacity (the service is full): 6 tasks running" in log
        assert "the 429 taken for capacity at 6 tasks running was the create window's" in log, log
        kept = json.loads(memory.path_for(state_home / "batchgen", sim.api_url).read_text())
        assert kept["create_rate"]["learned_from"] == "rate_429" and kept["create_rate"]["count"] == 6, log
        (entry,) = kept["models"].values()
        assert entry["capacity"] is None, log
