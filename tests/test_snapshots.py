"""results.json read in pieces (snapshots.py) is a faster way to json.loads's answer, never a different reading:
the same document for a ledger batchgen wrote, and for any other text the whole parse, with its answer or its
error — but a key twice in one object is refused (DuplicateKey) both ways, where json.loads keeps the later one.
A resume writes every record it did not touch back byte for byte."""

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


class Twice(Exception):
    """A key twice in one object (json.loads alone would keep the later value)."""


def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    made = dict(pairs)
    if len(made) != len(pairs):
        raise Twice
    return made


def whole(data: bytes) -> Any:
    return json.loads(data.decode("utf-8-sig"), object_pairs_hook=unique)


def same_answer(path: Path, data: bytes) -> None:
    """snapshots.read gives what the whole parse gives: the document (with its key order), or the same error; a
    key twice in one object is DuplicateKey."""
    path.write_bytes(data)
    try:
        expected: Any = whole(data)
    except Twice:
        with pytest.raises(snapshots.DuplicateKey):
            snapshots.read(path, 1 << 30)
        return
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
        written(document).replace(b'"fox-9"', b'"fox-8"'),  # the same id twice: refused
    ):
        same_answer(tmp_path / "results.json", data)


def _twice(data: bytes, old: bytes, new: bytes, at: int = 1) -> bytes:
    """`data` with its `at`-th `old` (from 1) replaced by `new`."""
    start = -1
    for _ in range(at):
        start = data.index(old, start + 1)
    return data[:start] + new + data[start + len(old) :]


@pytest.mark.parametrize("block", [16, 4096, snapshots.BLOCK])
def test_a_key_twice_in_any_object_is_refused_saying_where(tmp_path, block):
    """json.loads keeps the later of two values silently: a paid item written again as pending, a second
    "items", a record's field twice would each read as a ledger that pays again. Each is DuplicateKey, read in
    pieces or whole, naming the key, the object and (for an item id or a top-level key) the line."""
    data = written(ledger(40))
    path = tmp_path / "results.json"
    pending = json.dumps(new_record(None), indent=1).replace("\n", "\n  ").encode()
    early = _twice(data, b'\n  "fox-1": {', b'\n  "fox-3": ' + pending + b',\n  "fox-1": {')  # fox-3, then again
    line = early[: early.rindex(b'\n  "fox-3": {')].count(b"\n") + 2
    assert early.splitlines()[line - 1].startswith(b'  "fox-3": {')
    cases = {
        f'the key "fox-3" appears twice in "items" (the same item id twice) (line {line})': early,
        'the key "fox-39" appears twice in "items"': data.replace(
            b"\n  }\n }", b'\n  },\n  "fox-39": ' + pending + b"\n }"
        ),
        'the key "fox-2" appears twice in "items"': data.replace(b'"fox-3": {', b'"fox-\\u0032": {'),  # escaped
        'the key "items" appears twice at the top level (line ': data.replace(
            b'\n "items": {', b'\n "items": {},\n "items": {', 1
        ),
        'the key "state" appears twice in item "fox-7"\'s record': _twice(
            data, b'"state": "succeeded"', b'"state": "succeeded",\n   "state": "pending"', 8
        ),
        'the key "prompt" appears twice in item "fox-20"\'s record (in one of its fields)': _twice(
            data, b'"prompt": ', b'"prompt": "x",\n     "prompt": ', 21
        ),
        'the key "version" appears twice at the top level (line 3)': data.replace(b"{", b'{\n "version": 1,', 1),
    }
    for message, text in cases.items():
        path.write_bytes(text)
        with pytest.raises(Twice):
            whole(text)
        assert snapshots.pieces(path, block) is None  # the pieces never give a reading of it
        with pytest.raises(snapshots.DuplicateKey) as caught:
            snapshots.read(path, 1 << 30)
        assert message in str(caught.value)
        compact = json.dumps(json.loads(text)).encode()  # one line: json.loads dropped the duplicate...
        path.write_bytes(compact)
        snapshots.read(path, 1 << 30)  # ... so it reads


def test_a_journal_line_with_a_key_twice_is_refused_saying_where():
    record_twice = '{"id": "a", "record": {"state": "succeeded", "state": "pending"}}'
    for text, message in (
        (record_twice, 'the key "state" appears twice in item "a"\'s record'),
        ('{"id": "a", "id": "b", "record": {}}', 'the key "id" appears twice at the top level'),
    ):
        with pytest.raises(snapshots.DuplicateKey) as caught:
            snapshots.strict_loads(text)
        assert str(caught.value) == message
    assert snapshots.strict_loads('{"id": "a", "record": {"x": {"state": 1}, "state": 2}}')["record"]["state"] == 2


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
