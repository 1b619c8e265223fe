"""Hostile checks of round 3's fast paths: results.json read in pieces (snapshots.py) must give json.loads's
answer for every text, and the manifest composed by libyaml (readers.py) the pure composer's."""

from __future__ import annotations

import contextlib
import json
import random
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchgen import decisions, manifest, readers, records, snapshots
from batchgen.ledger import Ledger, error_record
from batchgen.records import PREVIOUS, PREVIOUS_JOURNAL, STATE_DIR

from .helpers import (
    KEY,
    check_directory,
    cli,
    finish,
    make_settings,
    manifest_of,
    problems,
    results,
    run,
    run_args,
    start,
    until,
)

RECORD = '{\n   "state": "succeeded",\n   "task_id": "t-1"\n  }'
ITEMS = '\n "items": {\n  "a": ' + RECORD + ',\n  "b": ' + RECORD + "\n }"


def same_as_json_loads(path: Path, text: str, block: int) -> None:
    """Both readers (whole file and pieces of `block` bytes) give what json.loads gives, key order too; a key
    twice in one object ("items" and an escaped "items" are one key) is refused by both."""
    data = text.encode()
    path.write_bytes(data)
    expected = json.loads(data.decode("utf-8-sig"))
    if len(json.loads(data, object_pairs_hook=list)) != len(expected):  # a top-level key twice
        with pytest.raises(snapshots.DuplicateKey, match="appears twice at the top level"):
            snapshots.read(path, 1 << 30)
        assert snapshots.pieces(path, block) is None
        return
    got: Any = snapshots.read(path, 1 << 30)
    assert json.dumps(got) == json.dumps(expected)
    in_pieces = snapshots.pieces(path, block)
    assert in_pieces is None or json.dumps(in_pieces) == json.dumps(expected)


@pytest.mark.parametrize("block", [1, 7, 64, snapshots.BLOCK])
@pytest.mark.parametrize(
    "text",
    [
        # a second "items" key written with an escape, after the real one: json.loads keeps the later (empty) one,
        # batchgen refuses both (a key twice)
        '{\n "version": 1,' + ITEMS + ',\n "\\u0069tems": {}\n}',
        '{\n "version": 1,' + ITEMS + ',\n "item\\u0073": {}\n}',
        # ... before it: refused as well
        '{\n "\\u0069tems": {"z": 1},' + ITEMS + "\n}",
        # the writer's layout one level down (a hand-made object), the top-level items escaped
        '{\n "meta": {' + ITEMS + '\n },\n "\\u0069tems": {}\n}',
        # an escaped "items" inside the document around the items: still json.loads's answer
        '{\n "version": 1,' + ITEMS + ',\n "counts": {"\\u0069tems": {}}\n}',
    ],
)
def test_an_escaped_items_key_is_read_as_json_loads_reads_it(tmp_path, text, block):
    same_as_json_loads(tmp_path / "results.json", text, block)


# ---------------------------------------------------------------- the manifest composed by libyaml


def shape(node: yaml.Node | None) -> Any:
    """A node tree as plain data: kind, tag, line, column and value (children in order)."""
    if node is None:
        return None
    mark = (node.start_mark.line, node.start_mark.column)
    if isinstance(node, yaml.ScalarNode):
        return ("scalar", node.tag, mark, node.value, node.style or None)
    if isinstance(node, yaml.SequenceNode):
        return ("sequence", node.tag, mark, [shape(child) for child in node.value])
    assert isinstance(node, yaml.MappingNode)
    return ("mapping", node.tag, mark, [(shape(k), shape(v)) for k, v in node.value])


def pure(text: str) -> Any:
    """The pure-Python composer's tree, or its error (type and message)."""
    try:
        return shape(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        return (type(exc).__name__, str(exc))


def composed(text: str) -> Any:
    try:
        return shape(readers.compose(text))
    except yaml.YAMLError as exc:
        return (type(exc).__name__, str(exc))


LENIENT = [  # text libyaml reads and the pure-Python parser refuses (or reads with other lines)
    "- id: a\n  prompt: a cat\twith a hat\n",
    "- id: a\n  prompt: a cat \twith a hat\n",
    "- id: a\n  prompt: |#note\n    two\n    lines\n",
    "- id: a\n  prompt: >-#note\n    folded\n",
    "items:\n\ufeff- id: a\n  prompt: b\n",
    "\ufeff- id: a\n  prompt: b\n\ufeff",
    "defaults:\n  ? seed\nitems:\n- id: a\n  prompt: b\n",
    "- ? prompt\n  id: a\n",
    "\ufeff? 'q'",
    "- {id: a, prompt: why?}\n",
    "- id: a\n  images: [https://example.com/a.png?s=1]\n",
]


@pytest.mark.parametrize("text", LENIENT)
def test_text_libyaml_is_more_lenient_with_is_read_as_the_pure_parser_reads_it(text):
    assert composed(text) == pure(text)


@pytest.mark.parametrize("name", ["tab", "bar"])
def test_a_manifest_the_pure_parser_refuses_is_refused_with_its_line(tmp_path, name):
    text = {"tab": "- id: a\n  prompt: a cat\twith a hat\n", "bar": "- id: a\n  prompt: |#x\n    two\n"}[name]
    path = tmp_path / "m.yaml"
    path.write_text(text)
    found = problems(path)
    assert found and all("line 2" in p or ":2" in p for p in found), found


# ---------------------------------------------------------------- kept record texts against every transition


def replayed(out: Path) -> dict[str, Any]:
    """previous.json with the journal that led from it to results.json replayed: what results.json must hold."""
    state = out / STATE_DIR
    items: dict[str, Any] = json.loads((state / PREVIOUS).read_text())["items"]
    for line in (state / PREVIOUS_JOURNAL).read_text().splitlines()[1:]:
        entry = json.loads(line)
        items[entry["id"]] = entry["record"]
    return items


def agrees(out: Path, ledger: Ledger) -> dict[str, Any]:
    """results.json holds the ledger's records as they are now, and what its journal replay says."""
    on_disk = json.loads((out / "results.json").read_bytes())["items"]
    assert json.dumps(on_disk, sort_keys=True) == json.dumps(ledger.items, sort_keys=True)
    assert json.dumps(on_disk, sort_keys=True) == json.dumps(replayed(out), sort_keys=True)
    return on_disk


async def test_every_transition_with_snapshots_between_writes_the_record_as_it_is_now(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", [f"A lighthouse, study {n}" for n in range(4)])
    out = tmp_path / "out"
    async with sim_factory() as sim:
        await run(make_settings(path, out, sim))
    with Ledger.open(out, "m.yaml") as ledger:
        ledger.track(manifest.load(path))
        a, b, c, d = sorted(ledger.items)
        steps = [
            lambda: ledger.decided(a, "approved"),
            lambda: ledger.start_roll(a, 7, ["a~roll1.png"]),
            lambda: ledger.start_submit(a, ledger.items[a]["request"] or {}),
            lambda: ledger.submitted(a, "task-roll-2"),
            lambda: ledger.refetch(a),
            lambda: ledger.succeeded(a, ["a2.png"], ["0" * 64]),
            lambda: ledger.decided(a, "rejected"),
            lambda: ledger.start_roll(a, 8, []),
            lambda: ledger.start_submit(a, ledger.items[a]["request"] or {}),
            lambda: ledger.failed(a, error_record("permanent", "400", "refused")),
            lambda: ledger.decided(b, "rejected"),
            lambda: ledger.start_roll(b, 9, []),
            lambda: ledger.start_submit(b, ledger.items[b]["request"] or {}),
            lambda: ledger.submit_unsent(b, in_doubt=True),
            lambda: ledger.start_submit(b, ledger.items[b]["request"] or {}),
            lambda: ledger.paid_without_task(b, error_record("transient", None, "lost")),
            lambda: ledger.requeue(c, error_record("transient", "500", "again")),
            lambda: ledger.start_submit(c, ledger.items[c]["request"] or {}),
            lambda: ledger.submitted(c, "task-c-2"),
            lambda: ledger.failed(d, error_record("permanent", None, "gone")),
            lambda: ledger.decided(c, None),
        ]
        for step in steps:
            step()
            ledger.snapshot()
            agrees(out, ledger)


# ---------------------------------------------------------------- a hand-edited ledger, resumed

PROMPTS = ['The "items": { of a catalogue', "a brace }, then a quote", "naïve 🦊 — items", "plain"]


def edits(text: str) -> dict[str, str]:
    """results.json edited by hand into texts that are almost the writer's layout."""
    closing = text.rstrip().rfind("}")
    last_record = text.rfind('"state"')
    return {
        "crlf": text.replace("\n", "\r\n"),
        "bom": "\ufeff" + text,
        "key after items": text[:closing].rstrip() + ',\n "note": {"items?": 1e400, "zero": -0}\n}\n',
        "escaped key after items": text[:closing].rstrip() + ',\n "\\u0069tems_note": "\\ud800"\n}\n',
        "unknown field": text[:last_record] + '"x\\ud83e\\udd8a": [1e400, -0.0, "\\u0000"],\n   ' + text[last_record:],
        "indented by two": json.dumps(json.loads(text), ensure_ascii=False, indent=2),
        "one line": json.dumps(json.loads(text), ensure_ascii=False),
    }


@pytest.mark.parametrize(
    "kind",
    ["crlf", "bom", "key after items", "escaped key after items", "unknown field", "indented by two", "one line"],
)
async def test_a_hand_edited_ledger_is_read_as_json_loads_reads_it_and_nothing_is_paid_twice(
    sim_factory, tmp_path, kind
):
    path = manifest_of(tmp_path / "m.yaml", PROMPTS)
    out = tmp_path / "out"
    async with sim_factory() as sim:
        await run(make_settings(path, out, sim))
        paid = sim.stats.creates
        assert paid == len(PROMPTS)
        edited = edits((out / "results.json").read_text(encoding="utf-8"))[kind]
        (out / "results.json").write_bytes(edited.encode("utf-8", "surrogatepass"))
        expected = json.loads(edited.removeprefix("\ufeff"))
        got = snapshots.read(out / "results.json", 1 << 30)
        assert json.dumps(got) == json.dumps(expected)
        await run(make_settings(path, out, sim))
        assert sim.stats.creates == paid  # every item succeeded: nothing created again
    items = json.loads((out / "results.json").read_bytes())["items"]
    assert {i["state"] for i in items.values()} == {"succeeded"}


# ---------------------------------------------------------------- SIGKILL with kept texts, re-rolls and decisions


@pytest.mark.slow
async def test_sigkill_during_rerolls_and_retries_leaves_results_json_as_its_journal_replay(sim_factory, tmp_path):
    prompts = [f"a tower, study {n}" + (" [sim:fail-transient:1]" if n % 3 == 0 else "") for n in range(10)]
    path = manifest_of(tmp_path / "m.yaml", prompts, seed=5)
    path.write_text(
        "".join(f"- id: item-{n:02d}\n  prompt: {p!r}\n  seed: {n + 1}\n" for n, p in enumerate(prompts)),
        encoding="utf-8",
    )
    out = tmp_path / "out"
    moments = random.Random(20261205)
    async with sim_factory(api_key=KEY, latency=3.0, jitter=0.5) as sim:  # runs outlast a snapshot (5 s)
        assert (await run(make_settings(path, out, sim))).exit_code == 0
        for n in range(0, 10, 2):
            item = f"item-{n:02d}"
            decisions.append(out, item, "rejected", results(out)["items"][item]["task_id"])
        decisions.append(out, "item-01", "approved", results(out)["items"]["item-01"]["task_id"])

        def events() -> int:
            return sim.stats.create_calls + sim.stats.polls + sim.stats.file_requests

        killed = replays = 0
        for _ in range(4):
            proc = await start(run_args(path, out, sim, "--reroll", "--concurrency", "3"))
            target = events() + moments.randint(2, 20)
            snapshot = out / STATE_DIR / PREVIOUS  # written with every snapshot after the first of a run

            def due() -> bool:
                return (events() >= target and snapshot.exists()) or proc.returncode is not None  # noqa: B023

            await until(due, 60, what="no snapshot under way")
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            killed += (await finish(proc))[0] == -signal.SIGKILL
            on_disk = json.loads((out / "results.json").read_bytes())["items"]
            if (out / STATE_DIR / PREVIOUS).exists():  # a snapshot since the run began: it is its journal's replay
                replays += 1
                assert json.dumps(on_disk, sort_keys=True) == json.dumps(replayed(out), sort_keys=True)
            assert snapshots.pieces(out / "results.json", 256) == json.loads((out / "results.json").read_bytes())
        assert killed >= 2, "the runs finished before they could be killed: the test proves nothing"
        assert replays >= 1, "no snapshot was written under way: the test proves nothing"
        code, _, stderr = await cli(run_args(path, out, sim, "--reroll"))
        assert code == 0, stderr
        items = check_directory(out)
        for n in range(10):
            record = items[f"item-{n:02d}"]
            assert record["state"] == "succeeded"
            assert len(record.get("rolls", [])) == (2 if n % 2 == 0 else 0), (n, record)
        # Each item paid for its first image (twice for a transient failure), and each rejected one for one roll
        # (twice when the roll failed transiently), plus what was in doubt.
        for n in range(10):
            record = items[f"item-{n:02d}"]
            allowed = (2 if n % 3 == 0 else 1) * (2 if n % 2 == 0 else 1) + record.get("in_doubt", 0)
            assert records.paid(record) <= allowed, (n, record)
        # Every create the service counted is in the ledger: paid (a task id came) or in doubt (killed inside the call).
        assert sim.stats.creates <= sum(records.paid(r) + records.in_doubt(r) for r in items.values()), [
            (i, records.paid(r), records.in_doubt(r)) for i, r in items.items()
        ]
