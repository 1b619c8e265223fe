"""The ledger keeps its counts of states as records change (a progress tick reads them without walking 100,000
records): whatever happened — a real run with failures and resubmissions, a resume, a manifest that dropped
items, in-doubt creates settled at open — they must equal a count made from the records."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from batchgen import manifest
from batchgen.ledger import STATES, Ledger, error_record

from .helpers import make_settings, manifest_of, results, run


def _recount(ledger: Ledger, ids: frozenset[str] | None = None) -> dict[str, int]:
    tally = Counter(r["state"] for i, r in ledger.items.items() if ids is None or i in ids)
    return {state: tally[state] for state in STATES}


def _agrees(ledger: Ledger) -> None:
    assert ledger.counts() == _recount(ledger)
    if ledger.manifest_ids is not None:
        assert ledger.counts(ledger.manifest_ids) == _recount(ledger, ledger.manifest_ids)
        some = frozenset(sorted(ledger.manifest_ids)[::2])  # other ids are counted as asked
        assert ledger.counts(some) == _recount(ledger, some)


async def test_counts_kept_through_a_real_run_and_its_resume_equal_a_recount(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", [f"A harbour, study {n}" for n in range(12)])
    out = tmp_path / "out"
    async with sim_factory(fail_rate=0.5, transient_share=0.5) as sim:
        await run(make_settings(path, out, sim))
    doc = results(out)  # written from the kept counts of the manifest's items
    tally = Counter(r["state"] for r in doc["items"].values())
    assert doc["counts"] == {state: tally[state] for state in STATES}
    assert doc["counts"]["failed"] and doc["counts"]["succeeded"]  # the run moved items to more than one state

    items = manifest.load(path)
    with Ledger.open(out, "m.yaml") as ledger:  # a resume: counted from the records loaded
        _agrees(ledger)
        ledger.track(items[:8])  # the manifest dropped four items: they are no longer its counts
        _agrees(ledger)
        assert sum(ledger.counts(ledger.manifest_ids).values()) == 8
        assert sum(ledger.counts().values()) == 12
        failed = next(i for i in ledger.manifest_ids if ledger.record(i)["state"] == "failed")
        ledger.start_submit(failed, ledger.record(failed)["request"] or {})
        _agrees(ledger)
        ledger.submitted(failed, "task-again")
        _agrees(ledger)
        ledger.requeue(failed, error_record("transient", None, "again"))
        _agrees(ledger)
        ledger.start_submit(failed, ledger.record(failed)["request"] or {})  # killed inside createTask
        retired = next(i for i in ledger.items if i not in ledger.manifest_ids)
        ledger.failed(retired, error_record("permanent", None, "gone"))  # an item not listed changes too
        _agrees(ledger)
    with Ledger.open(out, "m.yaml") as ledger:  # the in-doubt create is settled at open: still one count each
        _agrees(ledger)
        ledger.track(items)  # and brought back
        _agrees(ledger)
        assert ledger.counts(ledger.manifest_ids) == ledger.counts()


def test_a_fresh_ledger_counts_the_manifests_new_pending_items(tmp_path: Path):
    path = manifest_of(tmp_path / "m.yaml", ["one", "two", "three"])
    out = tmp_path / "out"
    out.mkdir()
    with Ledger.open(out, "m.yaml") as ledger:
        assert ledger.counts() == dict.fromkeys(STATES, 0)
        ledger.track(manifest.load(path))
        _agrees(ledger)
        assert ledger.counts(ledger.manifest_ids)["pending"] == 3
