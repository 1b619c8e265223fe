"""A key written twice in results.json or a journal line makes the ledger damaged (ATTACKS 1 "money", 8 "learned
state"): json.loads would keep the later value silently, and a paid item written again as `pending` — by a hand
edit, a merge tool, a hostile file — would be created (paid for) again by the next run. Instead the damaged
results.json is rebuilt from the journals when they hold the whole history (kept beside as
results.json.damaged-<time>), or the run is refused (exit 2) naming the file and the key, nothing submitted.

Real runs of the CLI in a subprocess against the simulator on loopback, real files; the simulator's count of
createTask calls is the proof that nothing was paid again."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from batchgen.records import new_record

from .helpers import BATCHGEN, batchgen, cli, manifest_of, no_traceback, results, run_args

PAID = "item-00"
PENDING_AGAIN = dict(new_record(None))  # a record as a new item's, never created


async def _finished(sim, tmp_path: Path, *, snapshots: int) -> Path:
    """A ledger of finished, paid items: one run (one snapshot, nothing to rebuild from) or two (the journals
    since previous.json hold the whole history)."""
    out = tmp_path / "out"
    prompts = ["a fox in the snow", "an owl at dusk"]
    for n in range(snapshots):
        code, _, err = await cli(run_args(manifest_of(tmp_path / "m.yaml", prompts[: n + 1]), out, sim))
        assert code == 0, err
    assert results(out)["items"][PAID]["task_id"]  # created, paid
    return out


def _record_text(record: dict[str, object]) -> str:
    """A record as the snapshot writer lays it out inside "items" (one space per level, two levels in)."""
    return json.dumps(record, indent=1).replace("\n", "\n  ")


def _paid_again_as_pending(results_json: Path, layout: str) -> None:
    """The paid item written a second time, later in "items", as pending: the writer's layout kept (the ledger is
    read in pieces), or the whole file on one line (read whole)."""
    text = results_json.read_text()
    if layout == "writer":
        end = text.index("\n  }\n }", text.index('\n "items": {'))  # the last record's end and the items''
        twice = f',\n  "{PAID}": {_record_text(PENDING_AGAIN)}'
        results_json.write_text(text[: end + 4] + twice + text[end + 4 :])
    else:
        items = json.dumps(json.loads(text)["items"])[1:-1]
        body = json.dumps({**json.loads(text), "items": {}}).replace('"items": {}', '"items": {' + items + ", %s}")
        results_json.write_text(body % f'"{PAID}": {json.dumps(PENDING_AGAIN)}')


def _run_again(tmp_path: Path, out: Path, sim) -> list[str]:
    return run_args(tmp_path / "m.yaml", out, sim)


@pytest.mark.parametrize("layout", ["writer", "one-line"])
async def test_a_paid_item_written_again_as_pending_is_rebuilt_and_never_paid_again(sim_factory, tmp_path, layout):
    async with sim_factory() as sim:
        out = await _finished(sim, tmp_path, snapshots=2)
        created = sim.stats.create_calls
        _paid_again_as_pending(out / "results.json", layout)
        edited = (out / "results.json").read_bytes()
        assert json.loads(edited)["items"][PAID]["state"] == "pending"  # what json.loads alone would read

        code, status, _ = await cli([*BATCHGEN, "status", str(out)])  # every command reads the ledger one way
        assert code == 0 and "rebuilds it from the journal" in status
        assert f'the key "{PAID}" appears twice in "items"' in status

        code, _, err = await cli(_run_again(tmp_path, out, sim))
        assert code == 0, err
        assert sim.stats.create_calls == created  # the paid item was not created again
    assert f'the key "{PAID}" appears twice in "items" (the same item id twice' in err
    if layout == "writer":
        line = edited[: edited.rindex(f'\n  "{PAID}":'.encode())].count(b"\n") + 2
        assert f"(line {line})" in err
    assert results(out)["items"][PAID]["state"] == "succeeded"
    kept = list(out.glob("results.json.damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == edited  # the edited file kept beside, never deleted


async def test_a_paid_item_written_again_with_nothing_to_rebuild_from_is_refused(sim_factory, tmp_path):
    async with sim_factory() as sim:
        out = await _finished(sim, tmp_path, snapshots=2)
        (out / ".batchgen" / "previous.json").unlink()  # the journals left start after the first snapshot
        created = sim.stats.create_calls
        _paid_again_as_pending(out / "results.json", "writer")
        edited = (out / "results.json").read_bytes()
        before = sorted(p.name for p in out.rglob("*"))

        for args in (_run_again(tmp_path, out, sim), [*BATCHGEN, "status", str(out)], [*BATCHGEN, "report", str(out)]):
            code, _, err = await cli(args)
            assert code == 2 and "Traceback" not in err, err
            assert f'{out / "results.json"} is damaged: the key "{PAID}" appears twice in "items"' in err
            assert "do not hold the whole history" in err and "batchgen has changed nothing" in err
        assert sim.stats.create_calls == created  # nothing submitted
    assert (out / "results.json").read_bytes() == edited
    assert sorted(p.name for p in out.rglob("*")) == before


async def test_a_second_items_object_is_damage_not_the_ledger(sim_factory, tmp_path):
    async with sim_factory() as sim:
        out = await _finished(sim, tmp_path, snapshots=2)
        created = sim.stats.create_calls
        path = out / "results.json"
        text = path.read_text()
        second = f'\n "items": {{\n  "{PAID}": {_record_text(PENDING_AGAIN)}\n }}'
        path.write_text(text.rstrip()[:-1].rstrip() + "," + second + "\n}\n")  # a later "items", at the end
        assert json.loads(path.read_text())["items"] == {PAID: PENDING_AGAIN}  # json.loads: the paid items gone

        code, _, err = await cli(_run_again(tmp_path, out, sim))
        assert code == 0, err
        assert sim.stats.create_calls == created
    assert 'the key "items" appears twice at the top level (line ' in err
    assert results(out)["items"][PAID]["state"] == "succeeded"


@pytest.mark.parametrize("layout", ["writer", "one-line"])
async def test_a_field_written_twice_in_a_record_is_damage(sim_factory, tmp_path, layout):
    async with sim_factory() as sim:
        out = await _finished(sim, tmp_path, snapshots=2)
        created = sim.stats.create_calls
        path = out / "results.json"
        text = path.read_text()
        if layout == "writer":
            end = text.index("\n  }", text.index(f'\n  "{PAID}": {{'))  # the paid record's end
            text = text[:end] + ',\n   "state": "pending",\n   "task_id": null' + text[end:]
        else:
            document = json.loads(text)
            record = json.dumps(document["items"][PAID])
            text = json.dumps(document).replace(record, record[:-1] + ', "state": "pending", "task_id": null}', 1)
        path.write_text(text)
        assert json.loads(text)["items"][PAID]["state"] == "pending"  # json.loads: the later fields win, unpaid
        assert json.loads(text)["items"][PAID]["task_id"] is None

        code, _, err = await cli(_run_again(tmp_path, out, sim))
        assert code == 0, err
        assert sim.stats.create_calls == created
    assert f'the key "state" appears twice in item "{PAID}"\'s record' in err
    assert results(out)["items"][PAID]["task_id"]


async def test_a_journal_line_with_a_key_twice_is_a_damaged_line(sim_factory, tmp_path):
    async with sim_factory() as sim:
        out = await _finished(sim, tmp_path, snapshots=1)
        created = sim.stats.create_calls
        paid = results(out)["items"][PAID]
        journal = out / ".batchgen" / "journal.jsonl"
        line = f'{{"id": "{PAID}", "record": {json.dumps(paid)}, "record": {json.dumps(PENDING_AGAIN)}}}'
        assert json.loads(line)["record"]["state"] == "pending"  # json.loads: the later record wins
        with journal.open("a") as handle:
            handle.write(line + "\n")
        number = journal.read_text().count("\n")
        before = journal.read_bytes()

        for args in (_run_again(tmp_path, out, sim), [*BATCHGEN, "status", str(out)]):
            code, _, err = await cli(args)
            assert code == 2 and "Traceback" not in err, err
            assert f'{journal}: line {number} is damaged (the key "record" appears twice at the top level)' in err
        assert sim.stats.create_calls == created  # nothing submitted
    assert journal.read_bytes() == before
    assert results(out)["items"][PAID] == paid


def test_the_key_named_is_shown_as_data_never_as_control(tmp_path):
    """The duplicated key comes from the file (ATTACKS 6): an id with an escape sequence, a carriage return and a
    right-to-left override is named escaped, one line, in every command's message."""
    hostile = "fox\x1b]0;owned\x07\r\u202e"
    record = json.dumps(PENDING_AGAIN)
    item = json.dumps(hostile, ensure_ascii=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text(
        f'{{"version": 1, "items": {{{item}: {record}, {item}: {record}}}}}', encoding="utf-8"
    )
    (tmp_path / "m.yaml").write_text("- id: a\n  prompt: a fox\n")
    for args in (["status", str(out)], ["run", str(tmp_path / "m.yaml"), "--out", str(out), "--simulate"]):
        proc = batchgen(*args, stdout=subprocess.PIPE)
        assert proc.returncode == 2, proc.stderr
        no_traceback(proc)
        assert 'appears twice in "items"' in proc.stderr and "\\u202e" in proc.stderr
        assert not any(c in proc.stderr + proc.stdout for c in ("\x1b", "\x07", "\r", "\u202e"))
        assert len([line for line in proc.stderr.splitlines() if "appears twice" in line]) == 1


async def test_only_the_file_its_writer_stamped_skips_the_key_by_key_check(sim_factory, tmp_path):
    # The writer's stamp (inode, size, mtime ns) in the journal's header lets a 100,000-item resume skip the check
    # on the file batchgen wrote. An edit that keeps the inode and the size — one id made another's, in place —
    # changes the time, so it is read key by key: compared on inode and size alone, the id twice went unseen.
    from batchgen import snapshots
    from batchgen.records import LEDGER_LIMIT

    async with sim_factory() as sim:
        out = await _finished(sim, tmp_path, snapshots=2)
    path = out / "results.json"
    header = json.loads((out / ".batchgen" / "journal.jsonl").read_text().splitlines()[0])
    assert header["snapshot"] == snapshots.stamp(path)  # the file as its writer left it
    assert set(snapshots.read(path, LEDGER_LIMIT, header["snapshot"])["items"]) == {"item-00", "item-01"}
    before = path.stat()
    with path.open("r+b") as handle:  # in place: the same inode, the same size
        data = handle.read()
        handle.seek(0)
        handle.write(data.replace(b'"item-01": {', b'"item-00": {'))
    assert path.stat().st_ino == before.st_ino and path.stat().st_size == before.st_size
    with pytest.raises(snapshots.DuplicateKey, match='"item-00" appears twice'):
        snapshots.read(path, LEDGER_LIMIT, header["snapshot"])


async def test_a_record_edited_in_place_keeping_the_size_is_checked_again(sim_factory, tmp_path):
    # The file still bearing its writer's stamp skips the record check too (its records passed on their way in);
    # an edit in place that keeps the inode and the size changes the time, so the record is checked: damaged.
    from batchgen import records

    async with sim_factory() as sim:
        out = await _finished(sim, tmp_path, snapshots=2)
    assert records.load(out).damaged is None
    path = out / "results.json"
    with path.open("r+b") as handle:
        data = handle.read()
        handle.seek(0)
        handle.write(data.replace(b'"state": "succeeded"', b'"state": "succeedex"', 1))
    assert 'state is "succeedex"' in (records.load(out).damaged or "")
