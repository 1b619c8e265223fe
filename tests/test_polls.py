"""The throttle, the poll scheduler and the remembered service, as pure logic: a clock advanced by hand, no
simulator, no sleeping."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import time
from pathlib import Path

import pytest

from batchgen import memory
from batchgen.config import PollSchedule, RetryPolicy
from batchgen.latency import LatencyModel, Quantiles, kaplan_meier, quantile
from batchgen.limits import Hints, StatusBudget, Throttle
from batchgen.polls import GAP_SHARE, TAIL_GAP_SHARE, TAIL_GAP_SHARE_KNOWN, PollScheduler

from .helpers import Clock, accept, run_tasks, throttle


def scheduler(clock: Clock, *, prior: Quantiles | None = None, poll_rate: float = 8.0, **kw) -> PollScheduler:
    return PollScheduler(throttle(clock, poll_rate=poll_rate), PollSchedule(2.5), prior=prior, clock=clock, **kw)


def most_in_any_second(stamps: list[float], jitter: float = 0.0) -> int:
    """The largest number of stamps in any half-open window of 1 s (+ jitter)."""
    stamps = sorted(stamps)
    most = 0
    for i, start in enumerate(stamps):
        most = max(most, sum(1 for t in stamps[i:] if t < start + 1.0 + jitter))
    return most


REAL = Quantiles(low=21.25, median=32.5, high=43.75)  # 20-45 s per image, as the family publishes


# ---------------------------------------------------------------- the status budget


def test_status_budget_holds_in_every_one_second_window_and_a_429_halves_it():
    clock = Clock()
    budget = StatusBudget(8, clock=clock)
    stamps = []
    rng = random.Random(3)
    for _ in range(20000):  # callers asking at random moments, far more often than the budget allows
        clock.advance(rng.uniform(0, 0.002))
        while budget.take():
            stamps.append(clock.now)
    assert most_in_any_second(stamps) == 8  # used to the full, never above it
    assert most_in_any_second(stamps, StatusBudget.JITTER) == 9  # ... nor above 9 in any 1.25 s (network jitter)
    assert len(stamps) >= 7.1 * (stamps[-1] - stamps[0])
    budget.on_saturated()
    assert budget.rate == 4
    later = []
    for _ in range(500):
        clock.advance(0.01)
        while budget.take():
            later.append(clock.now)
    assert most_in_any_second(later) <= 4
    budget.on_saturated()  # within the same second: one cut per burst
    budget.on_saturated()
    assert budget.rate == 2
    for _ in range(1000):
        budget.on_success()
    assert budget.rate == 8  # back, never above the flag


def test_a_budget_below_one_per_second_spaces_single_queries():
    clock = Clock()
    budget = StatusBudget(0.5, clock=clock)
    assert budget.take() and not budget.take()
    clock.advance(1.99)
    assert not budget.take()
    clock.advance(0.01)
    assert budget.take()


# ---------------------------------------------------------------- the throttle


def test_throttle_counts_one_429_burst_once_and_pauses_only_when_rate_429s_go_on():
    clock = Clock()
    t = throttle(clock)
    accept(t, 20)  # the window (20/10 s) is full
    run_tasks(t, 5)
    sent_in = t.epoch
    verdict = t.on_create_saturated(sent_in)  # first signal, window full: rate; the limits learn, nobody pauses
    assert verdict is not None and verdict.kind == "rate" and verdict.pause == 0.0
    assert t.on_create_saturated(sent_in) is None  # same burst: answered already
    verdict = t.on_create_saturated(t.epoch)  # a call sent after the cut still meets 429: a second strike
    assert verdict is not None and verdict.kind == "rate"
    assert 1 <= verdict.pause <= 1.5  # the retry policy's first wait: 1 s + up to 0.5 s jitter
    assert t.cooldown.remaining == pytest.approx(verdict.pause)
    clock.advance(verdict.pause)
    assert t.cooldown.remaining == 0
    verdict = t.on_create_saturated(t.epoch)  # and again: the pause doubles
    assert verdict is not None and 2 <= verdict.pause <= 2.5
    clock.advance(verdict.pause)
    t.on_create_success()
    assert t.strikes == 0
    assert t.on_create_saturated(t.epoch).pause == 0.0  # after a success, a 429 is a first signal again
    assert t.on_create_saturated(t.epoch, retry_after=7).pause == 7  # Retry-After is always honoured


def test_cooldown_uses_the_one_backoff_formula():
    clock = Clock()
    t = throttle(clock)
    policy = t.cooldown.policy
    delays = []
    for pause in range(1, 6):
        delays.append(t.cooldown.trigger(pause))
        assert policy.delay(pause, 0) <= delays[-1] <= policy.delay(pause, 0.999999)
        # while a pause is on, another 429 does not lengthen it
        assert t.cooldown.trigger(pause + 1) == pytest.approx(delays[-1])
        clock.advance(delays[-1])
    assert delays[-1] <= policy.wait_max + policy.wait_jitter


def test_remembered_limits_are_where_the_limits_start_and_the_flags_cap_them():
    clock = Clock()
    warm = throttle(clock, concurrency=100, hints=Hints(create_count=12, in_flight=60))
    assert warm.limiter.limit == 60 and warm.limiter.maximum == 100
    assert warm.window.count == 12 and warm.window.maximum == 20
    capped = throttle(clock, concurrency=40, hints=Hints(create_count=500, in_flight=90))
    assert capped.limiter.limit == 40 and capped.window.count == 20


def test_rate_window_counts_from_the_answer_on_the_injected_clock():
    clock = Clock()
    window = throttle(clock).window
    slots = [window.take() for _ in range(20)]
    assert window.wait_time() is None  # all under way: a place frees only when an answer comes back
    for slot in slots:
        window.done(slot)
    clock.advance(9.99)
    assert window.wait_time() == pytest.approx(0.01)
    clock.advance(0.01)
    assert window.wait_time() == 0


# ---------------------------------------------------------------- the latency model


def test_kaplan_meier_without_censoring_is_the_plain_distribution():
    steps = kaplan_meier([float(n) for n in range(1, 21)], [])
    assert quantile(steps, 0.05) == 1 and quantile(steps, 0.5) == 10 and quantile(steps, 0.95) == 19
    assert quantile(steps, 1.0) == 20


def test_learned_quantiles_count_the_tasks_still_running():
    model = LatencyModel()
    for n in range(1, 11):  # ten tasks finished after 1..10 s
        model.finished(f"done-{n}", float(n))
    for n in range(10):  # ten more still running at 10 s: the median is not 5.5, as the finished alone say
        model.running(f"running-{n}", 10.0)
    learned = model.quantiles()
    assert learned is not None
    assert learned.low == 1 and learned.median == 10
    assert learned.high == 10  # not reached yet: the slowest finish seen stands in
    model.running("running-0", 30.0)  # seen running later: the estimate follows
    assert model.quantiles().median == 10 and model.quantiles().high >= 10


def test_a_remembered_estimate_serves_until_this_run_has_its_own():
    model = LatencyModel(prior=REAL)
    assert model.quantiles() == REAL
    for n in range(4):
        model.finished(f"t{n}", 25.0)
    assert model.quantiles() == REAL  # four tasks that agree with it are not enough to replace it
    model.finished("t4", 25.0)
    assert model.quantiles() == Quantiles(25.0, 25.0, 25.0)
    assert LatencyModel().quantiles() is None  # nothing known: cold


def test_a_wrong_remembered_estimate_is_overruled_by_this_runs_censored_data():
    """Memory said 40 +/- 35 s; today no task finished by 30 s, where it expected a third of them to."""
    prior = Quantiles(low=8.0, median=40.0, high=72.0)
    model = LatencyModel(prior=prior)
    for n in range(10):
        model.running(f"t{n}", 20.0)
    assert model.quantiles() == prior  # 20 s: it expects about 2 finished by now; too few to say
    for n in range(10):
        model.running(f"t{n}", 30.0)
    assert model.quantiles() is None and model.contradicted  # nothing finished: cold (probe), not yesterday
    model.finished("t0", 90.0)
    assert model.quantiles() == model.own() and model.own().low == 90.0


def test_a_faster_service_than_remembered_overrules_it_after_three_early_finishes():
    model = LatencyModel(prior=REAL)
    for n in range(2):
        model.finished(f"t{n}", 3.0)
    assert model.quantiles() == REAL
    model.finished("t2", 3.0)
    assert model.quantiles() == Quantiles(3.0, 3.0, 3.0)


def test_a_resumed_task_never_teaches_its_age_as_latency():
    """A task from an earlier run, seen finished with its createTime a day old and no completeTime."""
    clock = Clock()
    polls = scheduler(clock)
    polls.add("old", resumed=True)
    polls.ready("old")
    assert polls.grant() == ["old"]
    day_ago = time.time() - 86400
    polls.observe("old", True, created=day_ago, completed=None)
    polls.add("older", resumed=True)
    polls.observe("older", True, created=day_ago, completed=day_ago + 30)
    assert polls.model.finished_count == 0 and polls.model.quantiles() is None


# ---------------------------------------------------------------- the scheduler


def test_no_query_before_a_task_could_be_finished():
    clock = Clock()
    polls = scheduler(clock, prior=REAL)
    polls.add("t")
    polls.ready("t")
    first = REAL.low + GAP_SHARE * REAL.median  # the low end of the latencies, plus one gap
    clock.advance(first - 0.01)
    assert polls.grant() == []
    assert polls.next_wakeup() == pytest.approx(clock.now + 0.01)
    clock.advance(0.01)
    assert polls.grant() == ["t"]
    polls.observe("t", False)
    polls.ready("t")
    clock.advance(GAP_SHARE * REAL.median - 0.01)
    assert polls.grant() == []  # asked again only a gap later
    clock.advance(0.01)
    assert polls.grant() == ["t"]


async def test_when_the_service_is_full_and_items_wait_a_task_is_first_asked_at_the_low_end():
    """Under capacity a slot seen free is the next create: a task is first asked at the low end of the latencies
    (not a gap later) while the service is full and an item waits for a slot; otherwise as before."""
    clock = Clock()
    polls = scheduler(clock, prior=REAL)
    t = polls.throttle
    accept(t, 3)
    run_tasks(t, 3)
    assert t.on_create_saturated(t.epoch).kind == "capacity"  # full at 3 running
    waiting = asyncio.ensure_future(t.limiter.acquire())
    await asyncio.sleep(0)
    assert t.limiter.waiting == 1
    polls.add("t")
    polls.ready("t")
    clock.advance(REAL.low - 0.01)
    assert polls.grant() == []
    clock.advance(0.01)
    assert polls.grant() == ["t"]
    waiting.cancel()
    await asyncio.sleep(0)
    polls.add("u")  # nobody waits now: a gap after the low end
    polls.ready("u")
    clock.advance(REAL.low + 0.01)
    assert polls.grant() == []


def test_oldest_first_when_more_are_due_than_the_budget_allows():
    clock = Clock()
    polls = scheduler(clock, prior=REAL, poll_rate=2)
    for n in range(5):
        polls.add(f"t{n}")
        clock.advance(1)
    for n in (3, 1, 4, 0, 2):
        polls.ready(f"t{n}")
    clock.advance(60)  # all due
    assert polls.grant() == ["t0", "t1"]
    clock.advance(1.25)
    assert polls.grant() == ["t2", "t3"]
    polls.wake("t4")  # ... except that a callback's hint goes first
    polls.add("t5")
    polls.ready("t5")
    clock.advance(1.25)
    assert polls.grant() == ["t4"]  # (t5, just created, is not due)


def test_the_budget_holds_whatever_the_number_of_tasks_in_flight():
    clock = Clock()
    polls = scheduler(clock, prior=Quantiles(1.0, 2.0, 3.0))
    for n in range(500):
        polls.add(f"t{n}")
        polls.ready(f"t{n}")
    stamps = []
    for _ in range(3000):
        clock.advance(0.01)
        for task_id in polls.grant():
            stamps.append(clock.now)
            polls.observe(task_id, False)
            polls.ready(task_id)
    assert most_in_any_second(stamps) == 8


def simulate(
    polls: PollScheduler, clock: Clock, latencies: dict[str, float], *, step: float = 0.01, burst_gap: float = 10.0
) -> dict:
    """Drive the scheduler against tasks that finish after the given latencies, created 20 at a time every
    `burst_gap` seconds; at what age each was found finished, and how many queries each took."""
    created: dict[str, float] = {}
    found: dict[str, float] = {}
    asked = dict.fromkeys(latencies, 0)
    start = clock.now
    while len(found) < len(latencies) and clock.now < start + 600:
        for task_id in latencies:
            if task_id not in created and clock.now - start >= burst_of(task_id) * burst_gap:
                created[task_id] = clock.now
                polls.add(task_id)
                polls.ready(task_id)
        clock.advance(step)
        for task_id in polls.grant():
            asked[task_id] += 1
            age = clock.now - created[task_id]
            done = age >= latencies[task_id]
            # the service's createTime/completeTime, on a wall clock of its own
            times = (5000.0, 5000.0 + latencies[task_id]) if done else (5000.0, None)
            polls.observe(task_id, done, *times)
            if done:
                found[task_id] = age
                polls.remove(task_id)
            else:
                polls.ready(task_id)
    return {"found": found, "asked": asked}


def burst_of(task_id: str) -> int:
    """Tasks t0-t19 are created at once, t20-t39 a window later, ...: the create window's pace (20 per 10 s)."""
    return int(task_id[1:]) // 20


def test_cold_start_probes_the_oldest_one_at_a_time_and_the_quick_start_stays_quick():
    """The quick start: eight images of 3 +/- 1 s, found at 5 s as with the family's every-2.5-s polling."""
    clock = Clock()
    polls = scheduler(clock)
    rng = random.Random(5)
    latencies = {f"t{n}": rng.uniform(2.6, 4.0) for n in range(8)}
    seen = simulate(polls, clock, latencies)
    assert max(seen["found"].values()) <= 5.0 + 0.1  # the probe at 5 s finds one; the rest follow at once
    assert sum(seen["asked"].values()) <= 8 + 2  # one probe at 2.5 s, one at 5 s, then one query each


def test_cold_probes_take_one_task_per_interval():
    clock = Clock()
    polls = scheduler(clock)
    for n in range(20):
        polls.add(f"t{n}")
        polls.ready(f"t{n}")
    probes = []
    for _ in range(1510):  # 15 s, nothing finishes
        clock.advance(0.01)
        for task_id in polls.grant():
            probes.append(task_id)
            polls.observe(task_id, False)
            polls.ready(task_id)
    assert len(probes) == 6  # at 2.5, 5, ..., 15 s: the family's pace, not 20 tasks x 6
    assert len(set(probes)) == 6  # each probe asks the task least recently looked at


def test_at_the_real_pace_a_task_costs_about_two_queries_and_is_found_within_ten_seconds():
    clock = Clock()
    polls = scheduler(clock, prior=REAL)
    rng = random.Random(9)
    latencies = {f"t{n}": rng.uniform(20, 45) for n in range(40)}
    seen = simulate(polls, clock, latencies, step=0.05)
    delays = sorted(seen["found"][t] - latencies[t] for t in latencies)
    assert len(delays) == 40
    assert sum(seen["asked"].values()) / 40 <= 3.0
    assert delays[int(0.95 * 40) - 1] <= 10.0


def test_with_callbacks_polling_is_the_fallback():
    clock = Clock()
    polls = scheduler(clock, prior=REAL)
    polls.add("cb", fallback=True)
    polls.ready("cb")
    clock.advance(REAL.high)
    assert polls.grant() == []  # the callback should come: no query by the slowest latency seen
    polls.wake("cb")
    assert polls.grant() == ["cb"]  # the callback came: asked at once


def test_in_the_tail_the_idle_budget_goes_to_the_last_tasks():
    def gap_after_first(in_tail: bool) -> float:
        clock = Clock()
        polls = scheduler(clock, prior=REAL, in_tail=lambda: in_tail)
        polls.add("t")
        polls.ready("t")
        clock.advance(30)  # due either way (low + gap = 29.4 s), not yet an outlier (high = 43.75 s)
        assert polls.grant() == ["t"]
        polls.observe("t", False)
        polls.ready("t")
        return polls.next_wakeup() - clock.now

    assert gap_after_first(False) == pytest.approx(GAP_SHARE * REAL.median)
    # In the tail, a memory that agrees with the run: a ninth of the median (an eighth without one, below).
    assert gap_after_first(True) == pytest.approx(TAIL_GAP_SHARE_KNOWN * REAL.median)


def test_a_resumed_task_is_asked_at_once_and_aged_by_the_service():
    clock = Clock()
    wall = Clock(1_800_000_000.0)
    polls = PollScheduler(throttle(clock), PollSchedule(2.5), prior=REAL, clock=clock, wall=wall)
    polls.add("old", resumed=True)
    polls.ready("old")
    assert polls.grant() == ["old"]
    polls.observe("old", False, created=wall.now - 40.0)  # the service says it was created 40 s ago
    polls.ready("old")
    clock.advance(GAP_SHARE * REAL.median)
    assert polls.grant() == ["old"]  # old enough: asked again a gap later, not at low + gap from now


# ---------------------------------------------------------------- the remembered service


MODEL = "imagen4-ultra"


def remembered(
    base: str, *, at: float | None = None, rate: int | None = 14, tasks: int | None = 60
) -> memory.ServiceMemory:
    at = time.time() if at is None else at
    return memory.ServiceMemory(
        memory.service_of(base),
        MODEL,
        at,
        rate=memory.Rate(rate, 10.0, memory.RATE_429, at) if rate else None,
        capacity=memory.Capacity(tasks, memory.CAPACITY_429, at) if tasks else None,
        latency=memory.Latency(REAL, 120, "complete_time", at),
    )


def test_memory_round_trip_keeps_the_service_never_the_key(tmp_path):
    base = "https://user:sk-secret-123@api.example.com/v1/?key=sk-secret-123#x"
    kept = remembered(base)
    assert memory.save(tmp_path, base, kept)
    (path,) = tmp_path.glob("service-*.json")
    assert "sk-secret" not in path.read_text() and "user" not in path.read_text()
    loaded = memory.load(tmp_path, base, MODEL)
    assert loaded is not None and loaded.service == "https://api.example.com/v1"
    assert loaded.rate == dataclasses.replace(kept.rate, learned_at=loaded.rate.learned_at)
    assert loaded.capacity.tasks == 60 and loaded.latency.quantiles == REAL
    assert loaded.hints((20, 10.0), 100) == Hints(create_count=14, in_flight=60)
    assert loaded.hints((20, 60.0), 100).create_count is None  # learned for another window length
    assert loaded.hints((10, 10.0), 40) == Hints(create_count=10, in_flight=40)  # the flags cap them
    other = memory.load(tmp_path, base, "nano-banana-pro")  # capacity and latency are the model's
    assert other is not None and other.rate is not None and other.capacity is None and other.latency is None
    assert memory.load(tmp_path, "https://other.example.com", MODEL) is None
    assert memory.forget(tmp_path, base) and memory.load(tmp_path, base, MODEL) is None


def test_each_value_ages_out_on_its_own_date_and_resaving_does_not_refresh_it(tmp_path):
    base = "https://api.example.com"
    old = time.time() - 40 * 86400
    doc = remembered(base).as_json()
    doc["models"][MODEL]["latency"]["learned_at"] = old  # re-saved by later runs, never learned again
    memory.path_for(tmp_path, base).write_text(json.dumps(doc))
    loaded = memory.load(tmp_path, base, MODEL)
    assert loaded is not None and loaded.latency is None and loaded.capacity is not None and loaded.rate is not None


@pytest.mark.parametrize(
    ("fact", "value"),
    [("latency", {"p05": 1e8, "p50": 1e8, "p95": 1e8}), ("latency", {"p05": 0.001, "p50": 0.002, "p95": 0.003})],
)
def test_absurd_latencies_are_clamped_to_half_a_second_and_the_task_timeout(tmp_path, fact, value):
    base = "https://api.example.com"
    doc = remembered(base).as_json()
    doc["models"][MODEL][fact].update(value)
    memory.path_for(tmp_path, base).write_text(json.dumps(doc))
    prior = memory.load(tmp_path, base, MODEL).prior(task_timeout=1800.0)
    assert prior is not None
    assert all(memory.MIN_LATENCY <= v <= 1800.0 for v in (prior.low, prior.median, prior.high))


def test_a_value_of_unknown_origin_is_not_trusted(tmp_path):
    base = "https://api.example.com"
    doc = remembered(base).as_json()
    doc["create_rate"]["learned_from"] = "first_429"  # an in-flight level taken for a rate: not ours to trust
    doc["models"][MODEL]["latency"]["learned_from"] = "age"
    memory.path_for(tmp_path, base).write_text(json.dumps(doc))
    loaded = memory.load(tmp_path, base, MODEL)
    assert loaded is not None and loaded.rate is None and loaded.latency is None and loaded.capacity is not None


@pytest.mark.parametrize(
    "damage",
    ["not json", "[]", "truncated", "future", "other_service", "older", "bad_latency", "bad_rate", "huge"],
)
def test_a_damaged_or_foreign_memory_is_ignored(tmp_path, damage):
    base = "https://api.example.com"
    good = remembered(base).as_json()
    doc: object = dict(good)
    if damage == "future":
        doc = {**good, "saved_at": "tomorrow"}
    elif damage == "other_service":  # a file copied from another service's name
        doc = {**good, "service": "https://other.example.com"}
    elif damage == "older":
        doc = {**good, "version": 1}
    elif damage == "bad_latency":
        doc = {**good, "models": {MODEL: {"latency": {"p05": 40, "p50": 30, "p95": "x", "n": 1}}}}
    elif damage == "bad_rate":
        doc = {**good, "create_rate": [-3, 10]}
    elif damage == "[]":
        doc = []
    path = memory.path_for(tmp_path, base)
    text = json.dumps(doc)
    if damage == "huge":
        text = text[:-1] + ', "pad": "' + "x" * (memory.MAX_BYTES + 1) + '"}'
    path.write_text({"not json": "{nope", "truncated": text[: len(text) // 2]}.get(damage, text))
    loaded = memory.load(tmp_path, base, MODEL)
    if damage in ("bad_latency", "bad_rate"):  # the rest of the file stands; the bad value is left out
        assert loaded is not None and (loaded.latency if damage == "bad_latency" else loaded.rate) is None
    else:
        assert loaded is None


def test_memory_lives_in_xdg_state_else_home_else_the_output_directory(tmp_path):
    out = tmp_path / "out"
    assert memory.directory({"XDG_STATE_HOME": str(tmp_path / "xdg")}, out) == tmp_path / "xdg" / "batchgen"
    home = tmp_path / "home"
    assert memory.directory({"HOME": str(home)}, out) == home / ".local" / "state" / "batchgen"
    assert memory.directory({}, out) == out / ".batchgen"  # cron under `env -i`: no home at all
    if os.geteuid() != 0:  # root writes anywhere: a read-only home cannot be made for it
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert memory.directory({"HOME": str(locked)}, out) == out / ".batchgen"


def test_what_a_run_learned_replaces_what_it_contradicts(tmp_path):
    clock = Clock()
    before = remembered("https://api.example.com", tasks=30)
    t = throttle(clock, hints=before.hints((20, 10.0), 100))
    polls = PollScheduler(t, PollSchedule(2.5), prior=before.prior(1800.0), clock=clock)
    for _ in range(40):  # this run went past the remembered capacity without a 429
        t.limiter.started()
    for n in range(6):
        polls.model.finished(f"t{n}", 3.0 + n, exact=True)
    after = memory.learned(before, "https://api.example.com", MODEL, t, polls, (20, 10.0))
    assert after.capacity is None  # no longer holds
    assert after.rate == before.rate  # the window never went past 14 in this run: still the best guess, old date
    assert after.latency is not None and after.latency.quantiles == polls.model.own()
    assert after.latency.tasks == 6 and after.latency.learned_from == "complete_time"
    t.window.done(t.window.take())
    t.on_create_saturated(t.epoch)  # now a 429 at 40 tasks running, the window not full: capacity
    after = memory.learned(before, "https://api.example.com", MODEL, t, polls, (20, 10.0))
    assert after.capacity is not None and after.capacity.tasks == 40 and after.capacity.learned_from == "capacity_429"
    assert after.rate == before.rate  # a capacity 429 teaches no rate


def test_status_lists_what_is_remembered_for_the_services_dir_used(tmp_path):
    base = "https://api.example.com"
    env = {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    folder = memory.directory(env, tmp_path / "out")
    memory.save(folder, base, remembered(base))
    memory.save(folder, "https://elsewhere.example.com", remembered("https://elsewhere.example.com"))
    assert memory.describe(env, tmp_path / "out", []) == []  # DIR used no service yet
    (tmp_path / "out").mkdir()
    memory.note_used(tmp_path / "out", base)
    entries = memory.describe(env, Path(tmp_path / "out"), memory.used(tmp_path / "out"))
    assert [e["service"] for e in entries] == [base]  # not every file in the state folder
    text = memory.describe_text(entries)
    assert "accepted 14 creates/10 s (rate_429)" in text and "full at 60 tasks running (capacity_429)" in text
    assert "21.2/32.5/43.8" in text


def test_a_run_that_cannot_keep_its_memory_goes_on_without(tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the state folder should be")
    assert memory.save(blocked, "https://api.example.com", remembered("https://api.example.com")) is False
    assert memory.load(blocked, "https://api.example.com", MODEL) is None


def test_status_creates_no_state_folder(tmp_path):
    env = {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    assert memory.describe(env, tmp_path / "out", ["https://api.example.com"]) == []
    assert not (tmp_path / "xdg").exists()


def test_tasks_older_than_every_finish_are_no_outliers_while_most_still_run():
    """A slow night: one task finished at 62 s, 59 still run. The stand-in high end (62 s) does not make the
    bulk of them outliers that back off: a task is asked once a gap, whatever its age."""
    clock = Clock()
    polls = scheduler(clock)
    polls.add("old")
    polls.ready("old")
    polls.model.finished("first", 62.0, exact=True)
    for n in range(59):
        polls.model.running(f"r{n}", 100.0)
    known = polls.model.quantiles()
    assert known is not None and not known.high_known
    clock.advance(150.0)
    task = polls._tasks["old"]
    task.asked = clock.now  # asked at 150 s of age, still running
    gap = max(polls.floor, GAP_SHARE * known.median)
    assert polls.due(task, known) == pytest.approx(clock.now + gap)  # not (150 - high) / 2 later


def test_cold_with_nothing_left_to_create_the_probe_goes_faster_with_more_tasks():
    """A slow night, cold: every task is created and none has been seen finished; each finished one waits for the
    first to be found. The probe goes faster with the tasks in flight (2/3 of the square root)."""

    def probe_gap(in_tail: bool, tasks: int) -> float:
        clock = Clock()
        polls = scheduler(clock, in_tail=lambda: in_tail)
        for n in range(tasks):
            polls.add(f"t{n}")
            polls.ready(f"t{n}")
        clock.advance(2.5)
        assert len(polls.grant()) == 1  # one probe at a time, always
        return polls.next_wakeup() - clock.now

    assert probe_gap(False, 36) == pytest.approx(2.5)
    assert probe_gap(True, 36) == pytest.approx(2.5 / (35**0.5 / 1.5))  # 35 others wait: sqrt(35) / 1.5
    assert probe_gap(True, 3) == pytest.approx(2.5)  # a few tasks: the family's pace (sqrt(2) / 1.5 < 1)


SLOW = Quantiles(low=66.0, median=120.0, high=174.0)  # a slow night: 120 +/- 60 s per image


def test_a_slow_nights_first_queries_do_not_overrule_a_right_memory():
    """Yesterday's slow night is remembered right: today 31 tasks are first seen running just past its low end
    (it expects a tenth of them finished: 3.1 in all, so none finished is a 1-in-26 chance), and 3 of 63 tasks
    finish below the low end (what it expects of 60). Neither says it is wrong; a service truly slower or
    faster still does."""
    model = LatencyModel(prior=SLOW)
    for n in range(31):
        model.running(f"r{n}", 72.0)
    assert model.quantiles() == SLOW and not model.contradicted
    for n in range(31, 60):
        model.running(f"r{n}", 66.0)
    for n in range(3):
        model.finished(f"f{n}", 62.0, exact=True)  # below the low end, three of 63
    assert model.quantiles() == SLOW and not model.contradicted
    slower = LatencyModel(prior=SLOW)
    for n in range(29):
        slower.running(f"r{n}", 100.0)  # a third of them should have finished: none did
    assert slower.quantiles() is None and slower.contradicted
    faster = LatencyModel(prior=SLOW)
    for n in range(4):
        faster.finished(f"f{n}", 30.0)  # four of four far below the low end
    assert faster.quantiles() == Quantiles(30.0, 30.0, 30.0) and faster.contradicted


def slow_tail(prior: Quantiles | None) -> tuple[float, float]:
    """In a slow night's tail, a task's first query (its age) and the gap after it."""
    clock = Clock()
    polls = scheduler(clock, prior=prior, in_tail=lambda: True)
    if prior is None:  # a cold night with its own estimate of the same latencies, the median known
        for n in range(40):
            polls.model.finished(f"f{n}", 60.0 + 3 * n, exact=True)
        known = polls.model.quantiles()
        assert known is not None and known.median_known and known.median == pytest.approx(117.0)
    polls.add("t")
    task = polls._tasks["t"]
    assert task.created is not None
    clock.advance(100.0)
    known = polls.model.quantiles()
    assert known is not None
    first = polls.due(task, known, polls._tail_gap(clock.now, known)) - task.created
    task.asked = task.created + first
    return first, polls.due(task, known, polls._tail_gap(clock.now, known)) - task.asked


def test_in_a_slow_nights_tail_a_right_memory_places_the_queries_tighter():
    """Issue 18: a slow night found its tasks a gap of an eighth of the median late at most (15 s at 120 s), the
    p95 target's edge; the tasks that finish below the low end were found a whole gap after it. With a
    remembered service that today's tasks agree with: the first query half a gap after the low end, then a
    ninth of the median. A cold night (its own estimate) keeps an eighth and a whole gap: its queries pay the
    probe that found the first finish."""
    first, gap = slow_tail(SLOW)
    assert gap == pytest.approx(TAIL_GAP_SHARE_KNOWN * SLOW.median)
    assert first == pytest.approx(SLOW.low + gap / 2)
    first, gap = slow_tail(None)
    assert gap == pytest.approx(TAIL_GAP_SHARE * 117.0)
    assert first == pytest.approx(63.0 + gap)  # its low end: the second of 40 finishes, 60, 63, ... 177 s


def test_a_slow_night_with_a_right_memory_finds_its_tasks_within_15_s_at_the_p95():
    """Issue 18's slow night on the hand clock: 60 tasks of 120 +/- 60 s created 20 per 10 s, the remembered
    service right. Over six such nights the p95 of the detection delay is 12.5-15.1 s (14.3-26.2 s before the
    tail's rules for a sure memory: an eighth of the median, the first query a whole gap after the low end, a
    right memory overruled by chance), at under 5.5 queries per task."""
    p95s, queries = [], []
    for seed in range(6):
        clock = Clock()
        start = clock.now
        polls = scheduler(clock, prior=SLOW, in_tail=lambda clock=clock, start=start: clock.now >= start + 20)
        rng = random.Random(seed)
        latencies = {f"t{n}": rng.uniform(60, 180) for n in range(60)}
        seen = simulate(polls, clock, latencies, step=0.05)
        delays = sorted(seen["found"][t] - latencies[t] for t in latencies)
        p95s.append(delays[int(0.95 * 60) - 1])
        queries.append(sum(seen["asked"].values()) / 60)
    assert sorted(p95s)[2] <= 14.0 and max(p95s) <= 15.5  # before: the third of six 15.6 s, the worst 26.2 s
    assert max(queries) <= 5.5


def test_a_task_counts_as_surely_running_from_when_its_create_left_not_when_the_answer_came():
    """`young` (the tasks the 429 reading may count as surely running at the service) stamps a task from when its
    createTask left: under a loaded loop the answer is handled late, and a task the service already finished was
    counted as running — a true "full" was then taken for the create window's, and a create rate remembered."""
    clock = Clock()
    polls = scheduler(clock)
    for n in range(12):  # this run's own latencies: every task 0.5 s
        polls.model.finished(f"done-{n}", 0.5, exact=True)
    assert polls.model.own() is not None and polls.model.own().low == pytest.approx(0.5, abs=0.01)
    polls.add("late", sent_ago=0.4)  # its answer was handled 0.4 s after the request left
    polls.add("prompt", sent_ago=0.0)
    clock.advance(0.2)
    assert polls.young() == 1  # "late" is 0.6 s old at the service at least: maybe finished, not surely running


# ---------------------------------------------------------------- a "full" level checked by asking


def full_night(clock: Clock) -> tuple[PollScheduler, Throttle]:
    """rate_unknown's first second on a hand clock: told 100 creates/s, the service took 20 and refused the rest
    with the window not full — "full at 20", by the rule. Nothing is known of latencies yet."""
    t = Throttle(concurrency=100, create_rate=(100, 1.0), poll_rate=80, retry=RetryPolicy(), clock=clock)
    polls = PollScheduler(t, PollSchedule(0.25), clock=clock)
    t.young = polls.young
    accept(t, 20)
    run_tasks(t, 20)
    for n in range(20):
        polls.add(f"old-{n:02d}")
        polls.ready(f"old-{n:02d}")
        clock.advance(0.001)
    assert t.on_create_saturated(t.epoch).kind == "capacity" and t.limiter.limit == 20 and t.limiter.cap is None
    clock.advance(1.0)
    return polls, t


def three_more(polls: PollScheduler, t: Throttle) -> None:
    """A second later the service took 3 more, none of the first 20 seen finished: 23 tasks held, more than the
    level allows (20 and a tenth)."""
    for n in range(3):
        accept(t, 1)
        run_tasks(t, 1)
        polls.add(f"new-{n}")
        polls.ready(f"new-{n}")


def test_a_full_level_is_checked_by_asking_the_tasks_held_and_refuted_when_more_still_run():
    """Before a first finish no task is *surely* running by its age, so nothing refuted the reading for ~1.5 s
    (the cold start asks one task at a time). Holding more than the level allows, the run asks the tasks it holds
    at once: a task found running after that moment was running at it. 23 of them are more than a "full" of 20
    allows: its 429 was the window's — the in-flight limit is given back and the window learns the rate."""
    clock = Clock()
    polls, t = full_night(clock)
    three_more(polls, t)
    granted = polls.grant()
    assert sorted(granted) == sorted([f"old-{n:02d}" for n in range(20)] + [f"new-{n}" for n in range(3)])
    for task_id in granted[:-1]:
        polls.observe(task_id, False)
    assert t.cap_level == 20  # 22 seen running: no more than the level allows
    polls.observe(granted[-1], False)
    assert t.cap_level is None and t.limiter.limit == 100
    assert t.window.count == 20 and t.learned_count == 20  # that 429 came with 20 accepted in the window
    assert t.corrected is not None and "23 seen running at once" in t.corrected


def test_a_true_full_level_survives_its_check_and_the_check_costs_a_query_per_task_at_most():
    """The same night against a service that is full at 20: the first 20 had finished there, unseen. Asked, they
    say so (slots seen free: under capacity, the next creates); the level holds. Only answers to queries granted
    after the check opened count, and a task the service does not know is no proof that it runs."""
    clock = Clock()
    polls, t = full_night(clock)
    assert polls.grant() == ["old-00"]  # the cold probe, before the check: its answer comes after it opened
    clock.advance(0.001)
    three_more(polls, t)
    granted = polls.grant()
    assert polls.check.open and len(granted) == 22 and "old-00" not in granted
    polls.observe("old-00", False)  # running — but asked before the check opened: it proves nothing then
    assert polls.check.running == 0
    polls.ready("old-00")
    assert polls.grant() == ["old-00"]  # asked again by the check
    for task_id in ("new-0", "new-1"):
        polls.observe(task_id, False)
    assert polls.check.running == 2
    polls.observe("new-2", False, unknown=True)  # the service does not know it (yet): no proof that it runs
    assert not polls.check.open and t.cap_level == 20  # 2 + the 20 old ones can no longer go past 22
    assert polls.check.said is not None and "of the 23 tasks held, 1 had finished" in polls.check.said  # for -v
    for task_id in [f"old-{n:02d}" for n in range(20)]:
        polls.observe(task_id, True)
        polls.remove(task_id)
        t.limiter.ended()
    assert t.cap_level == 20 and t.corrected is None
    clock.advance(0.01)
    assert polls.grant() == []  # the check is over: the tasks held are not asked again at once
    accept(t, 1)
    run_tasks(t, 1)
    polls.add("new-3")
    polls.ready("new-3")
    assert polls.grant() == [] and not polls.check.open  # 4 held: fewer than the level allows, nothing to check
