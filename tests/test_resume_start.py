"""A large resume's start takes shortcuts (issue 18, point 5); each must answer exactly what the long way did:
the manifest's repeated-request check when its keys are made late, the plan when DIR's files are checked all at
once, the review decisions copied only where one can change, re-rolls looked for only where one can be, and
Names' table of credits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchgen import decisions, manifest, plan, rolls
from batchgen.ledger import Ledger
from batchgen.names import Names, _keys_are_ids
from batchgen.records import new_record

from .helpers import problems

LINE_1 = "the same request as the item on line 1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # items with ids first: the keys are made when the item without one comes, from those accepted before it
        ("- id: a\n  prompt: same\n- id: b\n  prompt: same\n- prompt: same\n", f"m.yaml:5: item #3: {LINE_1} (id 'a')"),
        # an alias and its choice are one request (the normalised values are keyed)
        (
            "- id: a\n  prompt: fox\n  aspect_ratio: '16:9'\n- prompt: ' fox'\n  aspect_ratio: widescreen_16_9\n",
            f"m.yaml:4: item #2: {LINE_1} (id 'a')",
        ),
        # an item refused for its id never becomes the first of its request
        (
            "- id: a\n  prompt: other\n- id: a\n  prompt: same\n- id: c\n  prompt: same\n- prompt: same\n",
            "m.yaml:7: item #4: the same request as the item on line 5 (id 'c')",
        ),
        # NFC and NFD are one request (ids.identity), keyed late as early
        (
            "- id: a\n  prompt: caf\u00e9\n- prompt: cafe\u0301\n",
            f"m.yaml:3: item #2: {LINE_1} (id 'a')",
        ),
        # without an id first: the keys are made from the start, and stay the first item's
        ("- prompt: same\n- id: b\n  prompt: same\n- prompt: same\n", f"m.yaml:4: item #3: {LINE_1}"),
    ],
)
def test_a_repeated_request_without_an_id_names_the_first_item_with_it_however_the_ids_came(write, text, expected):
    found = [p.rsplit("/", 1)[-1] for p in problems(write("m.yaml", text))]
    repeated = [p for p in found if "same request" in p]
    assert len(repeated) == 1 and repeated[0].startswith(expected), found


def test_items_that_all_have_ids_may_repeat_a_request_as_before(write):
    items = manifest.load(write("m.csv", "id,prompt\na,same\nb,same\nc, same\n"))
    assert [item.id for item in items] == ["a", "b", "c"]


def _done(item: manifest.Item, files: list[str], task: str | None = "t") -> dict[str, Any]:
    record = dict(new_record(item.request))
    record.update(state="succeeded", task_id=task and f"{task}-{item.id}", files=files, sha256=["0" * 64] * len(files))
    return record


def _lists(made: plan.Plan) -> dict[str, list[Any]]:
    return {
        "new": [i.id for i in made.new],
        "changed": [i.id for i in made.changed],
        "resume": [(i.id, task) for i, task in made.resume],
        "done": [i.id for i in made.done],
        "missing": [i.id for i in made.missing],
        "failed": [i.id for i in made.failed],
        "in_doubt": [i.id for i in made.in_doubt],
        "not_in_manifest": made.not_in_manifest,
    }


TWISTS = ["none", "one gone", "two gone", "nested", "nested gone", "folder", "no task", "dotted", "absolute"]


@pytest.mark.parametrize("twist", TWISTS)
def test_the_plan_with_every_file_checked_at_once_is_the_plan_made_item_by_item(tmp_path, twist):
    out = tmp_path / "out"
    (out / "zoo").mkdir(parents=True)
    rows = "".join(f"{i},a prompt for {i}\n" for i in "abcdefghi")
    items = manifest.load(_write(tmp_path / "m.csv", "id,prompt\n" + rows))
    by_id = {item.id: item for item in items}
    files = {"a": ["a.png"], "b": ["b.png"], "d": ["d.png"], "e": ["e.png"], "g": ["g.png", "g_2.png"]}
    if twist.startswith("nested"):
        files["e"] = ["zoo/e.png"]  # in a folder: never in DIR's own listing, so checked item by item
    for names in files.values():
        for name in names:
            (out / name).write_bytes(b"x")
    gone = {"one gone": ["b.png"], "two gone": ["b.png", "g_2.png"], "nested gone": ["zoo/e.png"]}.get(twist, [])
    for name in gone:
        (out / name).unlink()
    if twist == "folder":
        (out / "d.png").unlink()
        (out / "d.png").mkdir()  # a folder where the image was: listed, never taken as a file
    records: dict[str, Any] = {i: _done(by_id[i], names) for i, names in files.items()}
    records["c"] = {**_done(by_id["c"], []), "state": "submitted"}  # resumed, between the finished ones
    records["h"] = {**_done(by_id["h"], ["h.png"]), "request": {"model": "x", "input": {}}}  # changed
    records["i"] = {**_done(by_id["i"], []), "state": "failed", "error": {"kind": "k", "code": 1, "message": "m"}}
    records["z"] = _done(by_id["a"], ["z.png"])  # no longer in the manifest
    if twist == "dotted":  # a name through `..`: never in the listing, so the long way checks it (it is there)
        records["a"] = _done(by_id["a"], ["zoo/../a.png"])
    if twist == "absolute":  # DIR / an absolute name is that name, as Path.is_file sees it (it is there)
        records["a"] = _done(by_id["a"], [str(out / "a.png")])
    if twist == "no task":
        records["f"] = _done(by_id["f"], ["gone-long-ago.png"], task=None)  # nothing to fetch it from: done
    quick = plan.make_plan(items, records, retry_failed=False, directory=out)
    long_way = plan._plan(items, records, False, plan._Present(out), [])
    assert _lists(quick) == _lists(long_way)
    expected = {"one gone": {"b"}, "two gone": {"b", "g"}, "nested gone": {"e"}, "folder": {"d"}}
    assert set(_lists(quick)["missing"]) == expected.get(twist, set())
    assert [i for i, _ in _lists(quick)["resume"]] == [i for i in "bcdeg" if i == "c" or i in expected.get(twist, ())]


def test_with_every_file_there_the_plan_is_the_one_made_without_looking(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    items = manifest.load(_write(tmp_path / "m.csv", "id,prompt\n" + "".join(f"i{n},p {n}\n" for n in range(50))))
    for item in items:
        (out / f"{item.id}.png").write_bytes(b"x")
    records = {item.id: _done(item, [f"{item.id}.png"]) for item in items[:40]}
    made = plan.make_plan(items, records, retry_failed=False, directory=out)
    assert _lists(made) == _lists(plan.make_plan(items, records, retry_failed=False))
    assert len(made.done) == 40 and len(made.new) == 10 and not made.missing


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _ledger(tmp_path: Path, items: list[manifest.Item], extra: dict[str, dict[str, Any]]) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    records = {item.id: {**_done(item, [f"{item.id}.png"]), **extra.get(item.id, {})} for item in items}
    document = {"version": 2, "manifest": "m.csv", "updated_at": None, "items": records, "not_in_manifest": []}
    (out / "results.json").write_text(json.dumps(document, indent=1), encoding="utf-8")
    return out


def test_decisions_are_copied_where_one_holds_or_a_record_keeps_one(tmp_path):
    items = manifest.load(_write(tmp_path / "m.csv", "id,prompt\na,p a\nb,p b\nc,p c\nd,p d\n"))
    out = _ledger(tmp_path, items, {"b": {"decision": "rejected"}, "d": {"decision": "approved"}})
    decisions.append(out, "a", "rejected", "t-a")  # holds: copied in
    decisions.append(out, "d", "rejected", "t-d")  # holds, and replaces the one the record kept
    decisions.append(out, "c", "approved", "another task")  # about another image: does not hold
    with Ledger.open(out, "m.csv") as ledger:
        ledger.track(items)
        decisions.copy_into(ledger)
        held = {item_id: ledger.items[item_id].get("decision") for item_id in "abcd"}
    assert held == {"a": "rejected", "b": None, "c": None, "d": "rejected"}  # b's no longer holds: removed


def test_names_counts_the_credits_of_the_records_as_they_were_when_it_was_made(tmp_path):
    """Names holds the ledger's credits as they were when it was made (a table made later, at the first
    download, must read them as they were then): a record changed meanwhile (an item submitted again, whose old
    image is still credited to it) does not change its answers."""
    items = manifest.load(_write(tmp_path / "m.csv", "id,prompt\nx,p x\ny,p y\n"))
    out = _ledger(tmp_path, items, {"y": {"state": "pending", "files": [], "task_id": None}})
    with Ledger.open(out, "m.csv") as ledger:
        ledger.track(items)
        made = Names(ledger.listed(), ((i, r["files"]) for i, r in ledger.owners() if r["state"] == "succeeded"))
        ledger.start_submit("x", {"model": "imagen4-ultra", "input": {"prompt": "another"}})  # x is pending now
        assert ledger.items["x"]["state"] == "pending"
        assert made.credited_to_other("y", "x.png")  # still x's, as when the run started
        assert not made.credited_to_other("x", "x.png")


@pytest.mark.parametrize("reroll", [False, True])
def test_a_roll_left_open_is_chosen_again_whatever_else_the_ledger_holds(tmp_path, reroll):
    """choose() returns at once when no decision is held and no record has a roll open: a record with one (its
    intent on disk from a run killed inside the create) must still be chosen, with its seed, --reroll or not."""
    items = manifest.load(_write(tmp_path / "m.csv", "id,prompt\na,p a\nb,p b\nc,p c\n"))
    records = {item.id: _done(item, [f"{item.id}.png"]) for item in items}
    assert rolls.choose(items, records, tmp_path, reroll=reroll) == ([], [])
    records["b"] = {**records["b"], "roll": {"n": 2, "seed": 7}}
    records["z"] = {**records["a"], "roll": {"n": 2, "seed": 9}}  # not in the manifest: never chosen
    chosen, refused = rolls.choose(items, records, tmp_path, reroll=reroll)
    assert [(item.id, item.input["seed"], seed, keep) for item, seed, keep in chosen] == [("b", 7, 7, None)]
    assert refused == []


@pytest.mark.parametrize(
    ("ids", "own"),
    [
        (["fox", "owl", "zebra-1"], True),
        (["fox", "Owl"], False),  # folds to `owl`: the table of planned names is made
        (["strasse", "stra\u00dfe"], False),  # ß folds to `ss`: longer, never taken for itself
        (["\u0130"], False),  # İ folds to two characters
        (["a{n}"], False),  # (not an id, but Names takes any text: `{n}` is rendered)
        ([], True),
    ],
)
def test_the_ids_are_taken_as_their_own_keys_only_when_each_one_is(ids, own):
    assert _keys_are_ids(ids) is own
    assert own == all(item_id.replace("{n}", "1").casefold() == item_id for item_id in ids)
