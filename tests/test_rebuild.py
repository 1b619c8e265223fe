"""The ledger rebuilt (issue 19: one file for the theme): a damaged, hand-edited or deleted results.json is
rebuilt from the previous snapshot and the journal, kept aside, and nothing is paid again; a journal torn at its
end loses only its torn line; damage nothing can rebuild from is refused (exit 2) and changes nothing.

Real runs against the simulator on loopback, real files, the real CLI in a subprocess."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from batchgen import ledger, report
from batchgen.errors import LedgerError

from .helpers import BATCHGEN, KEY, batchgen, make_settings, manifest_of, results, run

# ---------------------------------------------------------------- 1. damaged or deleted: rebuilt, nothing paid again


async def _two_snapshots(sim_factory, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    async with sim_factory() as sim:
        await run(make_settings(manifest_of(tmp_path / "m.yaml", ["a", "b"]), out, sim))
        await run(make_settings(manifest_of(tmp_path / "m.yaml", ["a", "b", "c"]), out, sim))
    return out


@pytest.mark.parametrize("damage", ["truncate", "garbage", "hand-edit", "delete"])
async def test_a_damaged_results_json_is_rebuilt_from_the_journal_and_kept(sim_factory, tmp_path, damage):
    out = await _two_snapshots(sim_factory, tmp_path)
    good = results(out)["items"]
    original = (out / "results.json").read_bytes()
    if damage == "truncate":
        (out / "results.json").write_bytes(original[: len(original) // 2])
    elif damage == "garbage":
        (out / "results.json").write_bytes(b"\0\xff" * 100)
    elif damage == "hand-edit":
        doc = json.loads(original)
        doc["items"]["item-00"]["state"] = "done!"
        (out / "results.json").write_text(json.dumps(doc))
    else:
        (out / "results.json").unlink()
    status = subprocess.run([sys.executable, "-m", "batchgen", "status", str(out)], capture_output=True, text=True)
    assert status.returncode == 0 and "rebuilds it from the journal" in status.stdout
    async with sim_factory() as sim:
        stream = io.StringIO()
        outcome = await run(make_settings(tmp_path / "m.yaml", out, sim), stream)
        assert outcome.exit_code == 0 and sim.stats.create_calls == 0
    assert results(out)["items"] == good
    assert "rebuilt it from the previous snapshot and the journal" in stream.getvalue()
    kept = list(out.glob("results.json.damaged-*"))
    assert len(kept) == (0 if damage == "delete" else 1)


async def test_a_deleted_results_json_after_one_snapshot_is_rebuilt_never_paid_again(sim_factory, tmp_path):
    out = tmp_path / "out"
    path = manifest_of(tmp_path / "m.yaml", ["a", "b"])
    async with sim_factory(latency=0.05) as sim:
        assert (await run(make_settings(path, out, sim))).exit_code == 0  # one snapshot: at close
        assert not (out / ".batchgen" / "previous.json").exists()
        (out / "results.json").unlink()
        doc = report.status(out)
        assert doc["counts"]["succeeded"] == 2 and doc["damaged"]
        outcome = await run(make_settings(path, out, sim))
        assert outcome.exit_code == 0 and sim.stats.creates == 2  # nothing paid again
    assert results(out)["counts"]["succeeded"] == 2


def test_run_rebuilds_a_hand_edited_ledger_from_its_journals_and_pays_nothing_again(tmp_path):
    (tmp_path / "m.yaml").write_text("- id: a\n  prompt: a fox\n- id: b\n  prompt: an owl\n")
    first = batchgen("run", "m.yaml", "--out", "o", "--simulate", "--no-progress", "--log-format", "json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    results = tmp_path / "o" / "results.json"
    document = json.loads(results.read_text())
    document["not_in_manifest"] = 5
    document["items"]["a"]["files"] = 5
    results.write_text(json.dumps(document))

    assert batchgen("status", "o", cwd=tmp_path).returncode == 0  # rebuilt in memory, the damage named
    again = batchgen("run", "m.yaml", "--out", "o", "--simulate", "--no-progress", "--log-format", "json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stderr.strip().splitlines()[-1])
    assert summary["event"] == "summary" and summary["paid_creates"] == 0
    assert "not_in_manifest is 5" in again.stderr  # the run says why it rebuilt the ledger
    assert json.loads(results.read_text())["items"]["a"]["files"] == ["a.png"]
    assert len(list((tmp_path / "o").glob("results.json.damaged-*"))) == 1  # the edited file kept, not deleted


async def test_a_recovered_ledger_can_be_recovered_again(sim_factory, tmp_path):
    out = tmp_path / "out"
    path = manifest_of(tmp_path / "m.yaml", ["a"])
    async with sim_factory(latency=0.05) as sim:
        await run(make_settings(path, out, sim))
        for _ in range(2):
            (out / "results.json").write_text("{broken")
            assert (await run(make_settings(path, out, sim))).exit_code == 0
        assert sim.stats.creates == 1
    assert results(out)["items"]["item-00"]["state"] == "succeeded"


# ---------------------------------------------------------------- 2. the journal: torn end dropped, damage refused


def test_journal_replays_over_the_snapshot_and_a_torn_line_is_dropped(tmp_path):
    live, crashed = tmp_path / "live", tmp_path / "crashed"
    with ledger.Ledger.open(live, "m.yaml") as book:
        book.start_submit("a", {"model": "imagen4-ultra", "input": {"prompt": "p"}})
        book.submitted("a", "task_1")
        book.snapshot()
        book.start_submit("b", {"model": "imagen4-ultra", "input": {"prompt": "q"}})
        book.submitted("b", "task_2")
        journal = live / ".batchgen" / "journal.jsonl"
        whole = journal.read_bytes()
        # a kill mid-append: half a line after the whole ones
        with open(journal, "ab") as handle:
            handle.write(b'{"id":"a","record":{"state":"succ')
        loaded = ledger.load(live)
        assert loaded.items["a"]["task_id"] == "task_1" and loaded.items["b"]["task_id"] == "task_2"
        assert loaded.journal_bytes == len(whole)
        shutil.copytree(live, crashed)  # what a kill at this moment leaves: no snapshot at close
    with ledger.Ledger.open(crashed, "m.yaml") as book:  # the torn tail is cut before appending
        assert book.items["b"]["state"] == "submitted"
        book.succeeded("b", ["b.png"], ["0" * 64])
    doc = json.loads((crashed / "results.json").read_text())
    assert doc["items"]["b"]["state"] == "succeeded" and doc["counts"]["succeeded"] == 1


def test_a_journal_damaged_in_the_middle_is_refused(tmp_path):
    live, crashed = tmp_path / "live", tmp_path / "crashed"
    with ledger.Ledger.open(live, "m.yaml") as book:
        book.start_submit("a", {"model": "imagen4-ultra", "input": {"prompt": "p"}})
        book.snapshot()
        book.start_submit("b", {"model": "imagen4-ultra", "input": {"prompt": "q"}})
        book.start_submit("c", {"model": "imagen4-ultra", "input": {"prompt": "r"}})
        journal = live / ".batchgen" / "journal.jsonl"
        lines = journal.read_bytes().split(b"\n")
        journal.write_bytes(lines[0][:10] + b"\n" + b"\n".join(lines[1:]))
        shutil.copytree(live, crashed)  # what a kill at this moment leaves: no snapshot at close
    with pytest.raises(LedgerError, match="line 1 is damaged"):
        ledger.load(crashed)


# ---------------------------------------------------------------- 3. nothing to rebuild from: refused, nothing changed


async def test_a_ledger_whose_history_is_gone_is_refused_not_started_afresh(sim_factory, tmp_path):
    out = tmp_path / "out"
    async with sim_factory(latency=0.05) as sim:
        await run(make_settings(manifest_of(tmp_path / "m.yaml", ["a"]), out, sim))
        await run(make_settings(manifest_of(tmp_path / "m.yaml", ["a", "b"]), out, sim))  # a second snapshot
        (out / "results.json").unlink()
        (out / ".batchgen" / "previous.json").unlink()  # the journals left start after the first snapshot
        with pytest.raises(LedgerError, match="do not hold the whole history"):
            report.status(out)
        with pytest.raises(LedgerError):
            await run(make_settings(tmp_path / "m.yaml", out, sim))
        assert sim.stats.creates == 2


async def test_unrecoverable_damage_is_exit_2_and_changes_nothing(sim_factory, tmp_path):
    out = await _two_snapshots(sim_factory, tmp_path)
    (out / "results.json").write_text("{broken")
    (out / ".batchgen" / "previous.json").write_text("{also broken")
    before = sorted(p.name for p in out.rglob("*"))
    proc = subprocess.run(
        [*BATCHGEN, "run", str(tmp_path / "m.yaml"), "--out", str(out), "--api-base", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        env={**os.environ, "BATCHGEN_API_KEY": KEY},
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "results.json is not valid JSON" in proc.stderr and "Restore results.json from a backup" in proc.stderr
    assert sorted(p.name for p in out.rglob("*")) == before
    assert (out / "results.json").read_text() == "{broken"


def test_invalid_results_json_is_never_overwritten(tmp_path):
    (tmp_path / "results.json").write_text('{"version": 1, "items": {')
    with pytest.raises(LedgerError, match="not valid JSON"):
        ledger.Ledger.open(tmp_path, "m.yaml")
    assert (tmp_path / "results.json").read_text() == '{"version": 1, "items": {'
