"""`run --reroll` (SPEC §4 "Rolls") against the simulator: seeds, dry-run counts, the real re-roll and its
lineage, a second --reroll that creates nothing, and a re-roll killed after createTask that pays nothing twice."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
from pathlib import Path

from batchgen import decisions, manifest, report, rolls, runner, sheet
from batchgen.ledger import Ledger, error_record, load
from batchgen.progress import Reporter
from batchgen.sim.model import request_key

from .helpers import env, finish, make_settings, results, run, run_args, start, until

COUNTED = (
    "- id: fox\n  prompt: a fox in the snow\n  seed: 7\n  count: 3\n- id: owl\n  prompt: an owl at night\n  seed: 12\n"
)


def _manifest(tmp_path: Path) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(COUNTED, encoding="utf-8")
    return path


def _reject(out: Path, item: str) -> None:
    decisions.append(out, item, "rejected", results(out)["items"][item]["task_id"])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_roll_seed_is_above_the_highest_and_used_by_no_other_item(tmp_path):
    items = manifest.load(_manifest(tmp_path))
    assert [(i.id, i.input["seed"]) for i in items] == [("fox", 7), ("fox-2", 8), ("fox-3", 9), ("owl", 12)]
    taken = {7, 8, 9, 12}
    record = {"rolls": []}
    assert rolls.next_seed(items[0], record, taken) == 10  # not 8: that is fox-2's request
    assert rolls.next_seed(items[2], record, taken | {10}) == 11
    assert rolls.next_seed(items[3], {"rolls": [{"seed": 12}, {"seed": 13}]}, taken) == 14
    no_seed = manifest.load(_write(tmp_path / "n.yaml", "- id: a\n  prompt: x\n"))[0]
    assert rolls.next_seed(no_seed, record, taken) is None  # the service draws again from the same request


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


async def test_reroll_dry_run_real_roll_lineage_and_a_second_reroll(sim_factory, tmp_path, capsys):
    path = _manifest(tmp_path)
    out = tmp_path / "out"
    async with sim_factory() as sim:
        assert (await run(make_settings(path, out, sim))).exit_code == 0
        assert sim.stats.creates == 4
        before = results(out)["items"]["fox"]
        old_sha = _sha(out / "fox.png")
        _reject(out, "fox")
        # --dry-run counts the re-roll as a paid create, with its cost; it writes nothing.
        code = runner.dry_run(make_settings(path, out, sim, reroll=True, dry_run=True, price=2), Reporter())
        printed = capsys.readouterr().out
        assert code == 0 and "1 rejected to re-roll" in printed and "paid creates: 1" in printed, printed
        assert "estimated cost: 1 × 2 = 2" in printed
        # Without --reroll a rejected item is left as it is.
        assert (await run(make_settings(path, out, sim))).exit_code == 0
        assert sim.stats.creates == 4 and _sha(out / "fox.png") == old_sha
        # The re-roll: one create, the new seed in the request sent, the manifest's request kept.
        assert (await run(make_settings(path, out, sim, reroll=True))).exit_code == 0
        assert sim.stats.creates == 5
        sent = {"model": "imagen4-ultra", "input": {**before["request"]["input"], "seed": 10}}
        assert sim.stats.creates_by_request[request_key(sent)] == 1
        doc = results(out)
        fox = doc["items"]["fox"]
        assert doc["version"] == 2
        assert fox["state"] == "succeeded" and fox["request"] == before["request"]
        assert fox["task_id"] != before["task_id"] and "decision" not in fox and "roll" not in fox
        assert [r["n"] for r in fox["rolls"]] == [1, 2]
        first, second = fox["rolls"]
        assert first["task_id"] == before["task_id"] and first["seed"] == 7 and first["decision"] == "rejected"
        assert first["files"] == ["fox~roll1.png"] and first["sha256"] == before["sha256"]
        assert second["seed"] == 10 and second["request_sent"] == sent and second["files"] == ["fox.png"]
        assert _sha(out / "fox~roll1.png") == old_sha  # the earlier roll's image, kept
        entry = next(e for e in sheet.page_data(out)["items"] if e["id"] == "fox")
        assert entry["roll"] == 2 and entry["file"] == "fox.png"  # the sheet shows the current roll
        assert _sha(out / "fox.png") == second["sha256"][0] != old_sha
        # A second --reroll with no new rejection creates nothing; neither does a plain run.
        assert (await run(make_settings(path, out, sim, reroll=True))).exit_code == 0
        assert (await run(make_settings(path, out, sim))).exit_code == 0
        assert sim.stats.creates == 5
        # Rejected again: roll 3 takes the next free seed above 10.
        _reject(out, "fox")
        assert (await run(make_settings(path, out, sim, reroll=True, limit=1))).exit_code == 0
        fox = results(out)["items"]["fox"]
        assert [r["seed"] for r in fox["rolls"]] == [7, 10, 11] and sim.stats.creates == 6
        assert fox["rolls"][1]["files"] == ["fox~roll2.png"] and (out / "fox~roll1.png").exists()


async def test_reroll_first_under_limit(sim_factory, tmp_path):
    path = _manifest(tmp_path)
    out = tmp_path / "out"
    async with sim_factory() as sim:
        assert (await run(make_settings(path, out, sim, limit=2))).exit_code == 5  # fox, fox-2 done
        _reject(out, "fox-2")
        assert (await run(make_settings(path, out, sim, reroll=True, limit=1))).exit_code == 5
        doc = results(out)["items"]
        assert len(doc["fox-2"]["rolls"]) == 2 and doc["fox-3"]["state"] == "pending"  # the re-roll went first


def test_a_reroll_that_fails_for_good_keeps_the_item_and_its_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    request = {"model": "imagen4-ultra", "input": {"prompt": "x", "seed": 7}}
    with Ledger.open(out, "m.yaml") as ledger:
        ledger.start_submit("a", request)
        ledger.submitted("a", "task-1")
        ledger.succeeded("a", ["a.png"], ["1" * 64])
        ledger.decided("a", "rejected")
        ledger.start_roll("a", 8, ["a~roll1.png"])
        ledger.start_submit("a", {"model": "imagen4-ultra", "input": {"prompt": "x", "seed": 8}})
        ledger.submitted("a", "task-2")
        ledger.failed("a", error_record("task_policy", "400", "flagged"))
    record = load(out).items["a"]
    assert record["state"] == "succeeded" and record["files"] == ["a.png"] and record["task_id"] == "task-1"
    assert record["request"] == request and record["reroll_failed"]["kind"] == "task_policy"
    assert [(r["n"], r["task_id"], r.get("error") is not None) for r in record["rolls"]] == [
        (1, "task-1", False),
        (2, "task-2", True),
    ]
    assert json.loads((out / "results.json").read_text())["version"] == 2
    doc = report.status(out)
    assert doc["review"]["reroll_failed"] == ["a"] and doc["counts"]["succeeded"] == 1
    assert "reroll failed a: its re-roll failed for good" in report.status_text(doc)


async def test_a_reroll_killed_after_create_task_resumes_and_pays_nothing_twice(sim_factory, tmp_path):
    path = _manifest(tmp_path)
    out = tmp_path / "out"
    async with sim_factory(latency=2.0, jitter=0.0) as sim:
        assert (await run(make_settings(path, out, sim))).exit_code == 0
        assert sim.stats.creates == 4
        old = results(out)["items"]["owl"]
        _reject(out, "owl")
        proc = await start(run_args(path, out, sim, "--reroll"), env=env())

        def rolled() -> bool:
            record = load(out).items["owl"]
            return record["task_id"] != old["task_id"] and record["state"] == "submitted"

        await until(rolled, 30, what="the re-roll's task id never reached the journal")
        proc.send_signal(signal.SIGKILL)
        await finish(proc)
        assert sim.stats.creates == 5
        record = load(out).items["owl"]
        assert record["roll"]["seed"] == 13 and record["request"] == old["request"]  # resumable, by its task id
        # The next run (with or without --reroll) polls that task: no second create.
        outcome = await runner.run(make_settings(path, out, sim, reroll=True), Reporter(stream=io.StringIO()))
        assert outcome.exit_code == 0 and sim.stats.creates == 5
        owl = results(out)["items"]["owl"]
        assert [r["seed"] for r in owl["rolls"]] == [12, 13] and owl["rolls"][0]["files"] == ["owl~roll1.png"]
        assert (out / "owl~roll1.png").exists() and (out / "owl.png").exists()


async def test_a_roll_whose_old_files_cannot_be_kept_is_refused_before_paying(sim_factory, tmp_path):
    path = _manifest(tmp_path)
    out = tmp_path / "out"
    async with sim_factory() as sim:
        assert (await run(make_settings(path, out, sim))).exit_code == 0
        _reject(out, "owl")
        (out / "owl~roll1.png").write_bytes(b"someone else's file")  # the name the earlier roll would take
        log = io.StringIO()
        assert (await run(make_settings(path, out, sim, reroll=True), log)).exit_code == 0
        assert sim.stats.creates == 4 and "cannot be kept under a ~roll name" in log.getvalue()
        assert (out / "owl~roll1.png").read_bytes() == b"someone else's file"


async def test_seed_in_name_renders_the_manifest_seed(sim_factory, tmp_path):
    path = _manifest(tmp_path)
    out = tmp_path / "out"
    async with sim_factory() as sim:
        assert (await run(make_settings(path, out, sim, name="{id}-{seed}"))).exit_code == 0
        _reject(out, "owl")
        assert (await run(make_settings(path, out, sim, name="{id}-{seed}", reroll=True))).exit_code == 0
        owl = results(out)["items"]["owl"]
        assert owl["files"] == ["owl-12.png"] and owl["rolls"][0]["files"] == ["owl-12~roll1.png"]
        assert owl["rolls"][1]["seed"] == 13 and sim.stats.creates == 5


async def test_a_roll_opened_but_never_sent_is_sent_by_the_next_run(sim_factory, tmp_path):
    path = _manifest(tmp_path)
    out = tmp_path / "out"
    async with sim_factory() as sim:
        assert (await run(make_settings(path, out, sim))).exit_code == 0
        _reject(out, "owl")
        with Ledger.open(out, path.name) as ledger:  # a run killed after opening the roll, before createTask
            ledger.start_roll("owl", 13, ["owl~roll1.png"])
        assert (await run(make_settings(path, out, sim))).exit_code == 0  # no --reroll: the intent is on disk
        owl = results(out)["items"]["owl"]
        assert [r["seed"] for r in owl["rolls"]] == [12, 13] and sim.stats.creates == 5
        # A rejected item whose file is gone is fetched again first, not re-rolled in the same run.
        _reject(out, "fox")
        (out / "fox.png").unlink()
        assert (await run(make_settings(path, out, sim, reroll=True))).exit_code == 0
        assert sim.stats.creates == 5 and (out / "fox.png").exists() and "rolls" not in results(out)["items"]["fox"]


async def test_sidecars_of_the_earlier_roll_are_kept_with_it(sim_factory, tmp_path):
    path = _manifest(tmp_path)
    out = tmp_path / "out"
    async with sim_factory() as sim:
        assert (await run(make_settings(path, out, sim, metadata="sidecar"))).exit_code == 0
        old = json.loads((out / "owl.png.json").read_text())
        _reject(out, "owl")
        # An earlier attempt of this roll linked the files already (killed after): still this item's, not taken.
        os.link(out / "owl.png", out / "owl~roll1.png")
        assert (await run(make_settings(path, out, sim, metadata="sidecar", reroll=True))).exit_code == 0
        kept = json.loads((out / "owl~roll1.png.json").read_text())
        new = json.loads((out / "owl.png.json").read_text())
        assert kept == old and kept["task_id"] != new["task_id"]
        assert new["request"]["input"]["seed"] == 13


async def test_an_item_without_a_seed_is_drawn_again_from_the_same_request(sim_factory, tmp_path):
    path = _write(tmp_path / "m.yaml", "- id: sky\n  prompt: an open sky\n")
    out = tmp_path / "out"
    async with sim_factory() as sim:
        assert (await run(make_settings(path, out, sim))).exit_code == 0
        first = results(out)["items"]["sky"]
        _reject(out, "sky")
        assert (await run(make_settings(path, out, sim, reroll=True))).exit_code == 0
        sky = results(out)["items"]["sky"]
        assert sim.stats.creates == 2 and sky["request"] == first["request"]
        assert [(r["seed"], r["request_sent"]) for r in sky["rolls"]] == [(None, first["request"])] * 2
        assert sky["task_id"] != first["task_id"] and sky["rolls"][0]["files"] == ["sky~roll1.png"]
