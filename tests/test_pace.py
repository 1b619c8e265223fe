"""The pace of a real run: defaults from the published limits, the remembered service, the simulator's view of
how late each task was found. In-process runs over real HTTP against the simulator on loopback."""

from __future__ import annotations

import io
import json
from pathlib import Path

import aiohttp
import pytest

from batchgen import cli, commands, memory, runner
from batchgen.config import PollSchedule, RunSettings

from . import helpers
from .helpers import KEY, make_settings, manifest_of


async def run(settings) -> tuple[runner.Outcome, str]:
    """A run and its log (no debug lines)."""
    stream = io.StringIO()
    outcome = await helpers.run(settings, stream, verbose=False)
    return outcome, stream.getvalue()


def test_defaults_follow_the_published_limits():
    args = cli.build_parser().parse_args(["run", "m.yaml", "--out", "d"])
    assert args.concurrency == 100 == RunSettings.__dataclass_fields__["concurrency"].default
    assert args.create_rate == "20/10" and args.poll_rate == 8.0 and args.poll_interval == 2.5
    assert not args.forget_service


def remembered_file(state_home: Path, sim) -> Path:
    return memory.path_for(state_home / "batchgen", sim.api_url)


async def test_the_next_run_starts_warm_from_what_this_one_learned(sim_factory, tmp_path, state_home):
    prompts = [f"p{n}" for n in range(10)]
    path = manifest_of(tmp_path / "m.yaml", prompts)
    # 20 status queries/s for 10 tasks: the tail has no idle budget to spend, so every query is the schedule's.
    async with sim_factory(latency=0.5, jitter=0.05) as sim:
        cold, _ = await run(make_settings(path, tmp_path / "night-1", sim, poll=PollSchedule(0.05), poll_rate=20.0))
        assert cold.exit_code == 0
        cold_early = sim.stats.polls_unfinished
        assert cold_early >= 8  # the cold start probed the oldest task every 0.05 s until the first finished
        kept = json.loads(remembered_file(state_home, sim).read_text())
        latency = kept["models"]["imagen4-ultra"]["latency"]
        assert kept["service"] == sim.api_url and latency["n"] == 10 and latency["learned_from"] == "complete_time"
        assert 0.4 <= latency["p05"] <= latency["p50"] <= latency["p95"] <= 0.6
        # The next night writes to a new folder: it starts from what the first one learned, with no cold probes.
        warm, _ = await run(make_settings(path, tmp_path / "night-2", sim, poll=PollSchedule(0.05), poll_rate=20.0))
        assert warm.exit_code == 0
        warm_early = sim.stats.polls_unfinished - cold_early
        assert warm_early < cold_early / 2, (cold_early, warm_early)  # no task asked before its low end
        # --forget-service: cold again, and what this run learns is kept anew.
        again, log = await run(
            make_settings(path, tmp_path / "night-3", sim, poll=PollSchedule(0.05), poll_rate=20.0, forget_service=True)
        )
        assert again.exit_code == 0 and "--forget-service: forgot" in log
        assert sim.stats.polls_unfinished - cold_early - warm_early >= 8  # probing again
        assert json.loads(remembered_file(state_home, sim).read_text())["saved_at"] > kept["saved_at"]


async def test_a_damaged_memory_is_ignored_and_replaced(sim_factory, tmp_path, state_home):
    path = manifest_of(tmp_path / "m.yaml", [f"p{n}" for n in range(6)])
    async with sim_factory() as sim:
        damaged = remembered_file(state_home, sim)
        damaged.parent.mkdir(parents=True, exist_ok=True)
        damaged.write_text('{"version": 1, "service": "' + sim.api_url + '", "latency": {"p05": ')
        outcome, _ = await run(make_settings(path, tmp_path / "out", sim))
        assert outcome.exit_code == 0
        assert memory.load(damaged.parent, sim.api_url, "imagen4-ultra") is not None  # whole again, this run's


async def test_a_429_is_remembered_and_the_next_run_starts_below_it(sim_factory, tmp_path, state_home):
    path = manifest_of(tmp_path / "m.yaml", [f"p{n}" for n in range(12)])
    async with sim_factory(capacity=3, latency=0.2) as sim:
        outcome, _ = await run(make_settings(path, tmp_path / "a", sim, concurrency=6))
        assert outcome.exit_code == 0 and sim.stats.rate_limited > 0
        kept = json.loads(remembered_file(state_home, sim).read_text())
        capacity = kept["models"]["imagen4-ultra"]["capacity"]
        assert capacity["tasks"] == 3 and capacity["learned_from"] == "capacity_429"
        assert kept["create_rate"] is None  # a service that is full is no create rate
        limited = sim.stats.rate_limited
        outcome, _ = await run(make_settings(manifest_of(tmp_path / "n.yaml", ["x", "y"]), tmp_path / "b", sim))
        assert outcome.exit_code == 0
        assert sim.stats.rate_limited == limited  # started at 3 in flight: no 429 to learn it again


@pytest.mark.slow  # the built-in simulator's own pace: 3 +/- 1 s per image
async def test_simulate_keeps_no_memory(tmp_path, state_home):
    path = manifest_of(tmp_path / "m.yaml", ["a lighthouse"])
    settings = RunSettings(
        manifest=path, out=tmp_path / "out", api_base="", api_key=None, simulate=True, progress=False
    )
    outcome, _ = await run(settings)
    assert outcome.exit_code == 0
    assert not list(state_home.rglob("*.json")) and not list((tmp_path / "out" / ".batchgen").glob("service-*"))


async def test_status_shows_the_remembered_service(sim_factory, tmp_path, capsys):
    path = manifest_of(tmp_path / "m.yaml", [f"p{n}" for n in range(6)])
    async with sim_factory() as sim:
        await run(make_settings(path, tmp_path / "out", sim))
    capsys.readouterr()
    assert cli.main(["status", str(tmp_path / "out")]) == 0
    assert f"remembered {sim.api_url}" in capsys.readouterr().out
    assert cli.main(["status", str(tmp_path / "out"), "--json"]) == 0
    (service,) = json.loads(capsys.readouterr().out)["services"]
    assert service["service"] == sim.api_url and service["models"]["imagen4-ultra"]["latency"]["n"] == 6


async def test_the_simulator_reports_how_late_each_task_was_found(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", [f"p{n}" for n in range(5)])
    async with sim_factory(latency=0.2, jitter=0.05) as sim:
        outcome, _ = await run(make_settings(path, tmp_path / "out", sim))
        assert outcome.exit_code == 0
        assert set(sim.stats.detection_delay) == set(sim.stats.latency) and len(sim.stats.latency) == 5
        assert all(delay >= 0 for delay in sim.stats.detection_delay.values())
        assert all(0.15 <= latency <= 0.25 for latency in sim.stats.latency.values())
        first = dict(sim.stats.detection_delay)
        task_id = next(iter(first))
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session:
            url = f"{sim.api_url}/api/v1/jobs/recordInfo?taskId={task_id}"
            async with session.get(url) as response:
                assert (await response.json())["data"]["state"] == "success"
        assert sim.stats.polls_by_task[task_id] >= 2
        assert sim.stats.detection_delay == first  # measured at the first query that saw it finished, only


def test_the_forget_flag_reaches_the_settings(tmp_path):
    args = cli.build_parser().parse_args(["run", "m.yaml", "--out", str(tmp_path), "--simulate", "--forget-service"])
    assert commands.settings_from(args, {}, []).forget_service
