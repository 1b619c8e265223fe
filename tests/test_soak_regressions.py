"""Hangs and breaks the soak (benchmarks/soak.py) found, each pinned down with the real simulator and a real run."""

from __future__ import annotations

from dataclasses import replace

import pytest

from batchgen import ledger

from .helpers import KEY, cli, finish, manifest_of, run_args, start, until


@pytest.mark.parametrize("answer", ["404", "null"])
async def test_an_expired_url_of_a_forgotten_task_ends_the_run_at_once(sim_factory, tmp_path, answer):
    """Soak seed 2026, night 62 (capacity, expired URLs, forgetting): the run was still going after 120 s.

    A task succeeded with a result URL already expired; by the time the download asked recordInfo for a fresh one,
    the service had forgotten the task (404 / null). The engine kept retrying the same dead URL with backoff
    (1, 2, 4 ... 60 s, 8 tries: over 3 minutes). Now it leaves the item submitted, for the next run, at once."""
    path = manifest_of(tmp_path / "m.yaml", ["a forgotten cat"])
    out = tmp_path / "out"
    # Every URL handed out is expired; every task forgets (decided at creation), though only once told to. The
    # status budget (1 query/s) puts a second between the answer that gave the URL and the fresh query.
    async with sim_factory(expired_url_rate=1.0, forget_after=3600.0, forget_rate=1.0, forget_answer=answer) as sim:
        proc = await start(run_args(path, out, sim, "--poll-rate", "1", "--task-timeout", "30", "-v", "--no-progress"))
        await until(lambda: sim.stats.file_requests >= 1, what="no download of the expired URL")
        sim.config = replace(sim.config, forget_after=0.0)  # the service forgets the task now
        code, _, err = await finish(proc)
        assert "no longer knows the task" in err and KEY not in err, err
        assert sim.stats.file_requests == 1, "the dead URL was fetched again"
        assert code == 5, err  # the item stays submitted: not done, resumable
        assert [r["state"] for r in ledger.load(out).items.values()] == ["submitted"], err
        assert sim.stats.creates == 1
        # The next run resumes it (no new create): the unknown young task is polled to --task-timeout, not paid again.
        _, _, err = await cli(run_args(path, out, sim, "--task-timeout", "1", "--no-progress"))
        assert sim.stats.creates == 1, err
