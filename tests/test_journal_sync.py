"""The journal's fsync has a thread of its own: work held in the event loop's default executor — where asyncio
runs every DNS lookup (loop.getaddrinfo, aiohttp's resolver) — cannot hold it. A hung lookup once could: the
"submitting" record of the next createTask, or a task id, waited behind it for as long as it hung."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from batchgen import manifest
from batchgen.ledger import Ledger

from .helpers import manifest_of, results


async def test_a_journal_fsync_is_not_held_by_hung_work_in_the_default_executor(tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a", "b"])
    items = manifest.load(path)
    out = tmp_path / "out"
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=2))
    release = threading.Event()
    hung = [loop.run_in_executor(None, release.wait) for _ in range(2)]  # two lookups that never answer
    try:
        with Ledger.open(out, path.name) as ledger:
            ledger.track(items)
            ledger.start_submit(items[0].id, dict(items[0].request))
            await asyncio.wait_for(ledger.durable(), 30)  # a deadline, not a timing: before, this never returned
            ledger.submitted(items[0].id, "task-1")
            await asyncio.wait_for(ledger.durable(), 30)
            assert not any(job.done() for job in hung)  # the executor was held all along
    finally:
        release.set()
        await asyncio.gather(*hung)
    assert results(out)["items"][items[0].id]["task_id"] == "task-1"
