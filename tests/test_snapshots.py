"""results.json read in pieces (snapshots.py) is a faster way to json.loads's answer, never a different reading:
the same document for a ledger batchgen wrote, and for any other text the whole parse, with its answer or its
error. A resume writes every record it did not touch back byte for byte."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchgen import snapshots
from batchgen.records import new_record
from batchgen.store import _chunks

from .helpers import make_settings, manifest_of, run


def written(document: dict[str, Any]) -> bytes:
    """The bytes the snapshot writer (store.py) makes of a document."""
    return b"".join(_chunks(json.JSONEncoder(ensure_ascii=False, indent=1).iterencode(document)))


def whole(data: bytes) -> Any:
    return json.loads(data.decode("utf-8-sig"))


def same_answer(path: Path, data: bytes) -> None:
    """snapshots.read gives what the whole parse gives: the document (with its key order), or the same error."""
    path.write_bytes(data)
    try:
        expected: Any = whole(data)
    except (ValueError, RecursionError) as exc:
        with pytest.raises(type(exc)):
            snapshots.read(path, 1 << 30)
        return
    got = snapshots.read(path, 1 << 30)
    assert got == expected
    assert json.dumps(got) == json.dumps(expected)  # the order of items and of every record's fields too


DEEP = '{\n "items": {\n  "a": {\n   "x": ' + "[" * 100_000 + "]" * 100_000 + "\n  }\n }\n}\n"


def ledger(n: int, **top: Any) -> dict[str, Any]:
    items = {}
    for i in range(n):
        record = dict(new_record({"model": "imagen4-ultra", "input": {"prompt": f"a fox, {i}", "seed": i}}))
        record.update(state="succeeded", task_id=f"task-{i}", files=[f"fox-{i}.png"], sha256=[f"{i:064x}"])
        record.update(submitted_at="2026-12-01T01:00:00Z", finished_at=f"2026-12-01T01:0{i % 10}:00Z")
        items[f"fox-{i}"] = record
    return {"version": 1, "generation": 3, "manifest": "m.yaml", "updated_at": "x", "items": items, **top}


@pytest.mark.parametrize("block", [16, 100, 4096, snapshots.BLOCK])
def test_a_ledger_the_writer_made_is_read_in_pieces_to_the_same_document(tmp_path, block):
    document = ledger(300, not_in_manifest=["gone"], price="0.04", cards={"m": {"sha256": "x", "source": "y"}})
    document["items"]["odd"] = {**new_record(None), "error": {"kind": "k", "code": None, "message": '\n  },\n  "'}}
    document["items"]["ünïcode 🦊"] = {**new_record({"model": "m", "input": {"prompt": '狐狸 \u2028 \\ "'}})}
    path = tmp_path / "results.json"
    path.write_bytes(written(document))
    got = snapshots.pieces(path, block)
    assert got is not None  # the pieces were used, not the whole parse
    assert json.dumps(got) == json.dumps(whole(path.read_bytes()))
    states = {id(r["state"]) for r in got["items"].values() if r["state"] == "succeeded"}
    assert len(states) == 1  # a value many records repeat is held once


@pytest.mark.parametrize(
    "text",
    [
        '{"version": 1, "items": {"a": {"state": "pending"}}}',  # one line
        '\ufeff{\n "version": 1,\n "items": {\n  "a": {\n   "state": "pending"\n  }\n }\n}\n',  # a byte-order mark
        '{\n "items": {\n  "a": {\n   "state": "pending"\n  }\n },\n "items": {}\n}\n',  # "items" twice
        '{\n "items": {\n  "a": {\n   "state": "pending"\n  },\n  "a": {\n   "state": "failed"\n  }\n }\n}\n',
        '{\n "items": {\n  "a": {\n   "state": "pending"\n  }\n }\n',  # cut short
        '{\n "items": {\n  "a": {\n   "state": "pending"\n  },\n  "b": [\n  },\n  "c": 1\n }\n}\n',  # a cut inside
        '{\n "items": {\n  "a": 1\n  }\n }\n}\n',  # a brace too many
        '{\n "items": {}\n}\n',
        '{\n "version": 1\n}\n',
        '[\n "items": {\n  "a": {\n  }\n }\n]\n',
        '{\n "items": {\n  "a": {\n   "s": "\xed\xa0\x80"\n  }\n }\n}\n',  # a lone surrogate: not UTF-8
        "",
        pytest.param(DEEP, id="too-deep"),
    ],
)
def test_any_other_text_gets_the_whole_parses_answer_or_its_error(tmp_path, text):
    data = text.encode("utf-8") if "\xed" not in text else text.encode("latin-1")
    same_answer(tmp_path / "results.json", data)


def test_a_hand_reindented_or_damaged_ledger_is_read_as_before(tmp_path):
    document = ledger(50)
    for data in (
        json.dumps(document, indent=2).encode(),
        json.dumps(document).encode(),
        written(document).replace(b"\n  },\n", b"\n  } ,\n", 7),
        written(document)[:-200],
        written(document).replace(b'"fox-9"', b'"fox-8"'),  # the same id twice: the later record wins
    ):
        same_answer(tmp_path / "results.json", data)


EDITS = ["", "\n", " ", "}", ",", '"', "{", "\n  },\n  ", "\n  }\n }"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.integers(1, 30),
    st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(EDITS)), max_size=3),
    st.lists(st.integers(0, 10**6), max_size=2),
    st.sampled_from([8, 64, 512]),
)
def test_an_edited_snapshot_reads_as_json_loads_reads_it(tmp_path, n, inserts, cuts, block):
    data = bytearray(written(ledger(n, not_in_manifest=["x"])))
    for at, text in inserts:
        data[at % (len(data) + 1) : at % (len(data) + 1)] = text.encode()
    for at in cuts:
        if data:
            del data[at % len(data)]
    path = tmp_path / "results.json"
    same_answer(path, bytes(data))
    got = snapshots.pieces(path, block)
    if got is not None:  # whatever the pieces give is the whole parse's answer
        assert json.dumps(got) == json.dumps(whole(bytes(data)))


async def test_a_resume_writes_every_record_it_did_not_touch_back_byte_for_byte(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", [f"A harbour, study {n}" for n in range(6)])
    out = tmp_path / "out"
    async with sim_factory() as sim:
        await run(make_settings(path, out, sim))
        before = (out / "results.json").read_bytes()
        assert snapshots.pieces(out / "results.json", 64) is not None  # the writer's layout: read in pieces
        manifest_of(path, [f"A harbour, study {n}" for n in range(6)] + ["A new one"])
        await run(make_settings(path, out, sim))
    after = (out / "results.json").read_bytes()
    old, new = whole(before)["items"], whole(after)["items"]
    assert list(new) == [*old, "item-06"] and new["item-06"]["state"] == "succeeded"
    for item_id, record in old.items():  # each record's text, as the writer lays it out, is unchanged
        text = json.dumps({"items": {item_id: record}}, ensure_ascii=False, indent=1)
        block = text.removeprefix('{\n "items": {\n').removesuffix("\n }\n}")
        assert block.encode() in before and block.encode() in after
        assert json.dumps(new[item_id]) == json.dumps(record)


def test_a_fifo_or_an_oversized_file_at_the_snapshots_name_is_refused_without_waiting(tmp_path):
    """The pieces reader opens results.json as every input is opened: a FIFO planted there is refused at once
    (never a wait for a writer), and a file past the limit before a byte of it is parsed."""
    import os

    from batchgen.files import NotRegular, TooLarge

    fifo = tmp_path / "results.json"
    os.mkfifo(fifo)
    with pytest.raises(NotRegular):
        snapshots.read(fifo, 1 << 20)
    big = tmp_path / "big.json"
    big.write_text('{"version": 1, "items": {}}' + " " * 100)
    with pytest.raises(TooLarge):
        snapshots.read(big, 50)
