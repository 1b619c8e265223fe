"""results.json as the snapshot writer lays it out: `json.JSONEncoder(ensure_ascii=False, indent=1)`'s text of the
ledger, byte for byte (snapshots.py reads that layout back in pieces, and an older batchgen reads it), now that a
record's text is kept from one snapshot to the next (issue 18: re-encoding every record every few seconds was ~8 %
of a scaled run's CPU). A record changed since the last snapshot must be written as it is now, never as it was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchgen import manifest, snapshots
from batchgen.ledger import Ledger, error_record

from .helpers import make_settings, manifest_of, run


def old_layout(document: dict[str, Any]) -> bytes:
    """What the snapshot writer wrote before its records' texts were kept: the whole document encoded at once."""
    return (json.JSONEncoder(ensure_ascii=False, indent=1).encode(document) + "\n").encode("utf-8")


def on_disk(out: Path) -> bytes:
    return (out / "results.json").read_bytes()


def check(out: Path) -> dict[str, Any]:
    """results.json is the old writer's text of the document it holds, and the pieces reader reads it in pieces."""
    data = on_disk(out)
    document = json.loads(data)
    assert data == old_layout(document)
    assert snapshots.pieces(out / "results.json", 64) == document
    return document


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),  # NaN: the encoder's way
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(st.text(max_size=6), st.dictionaries(st.text(max_size=6), _JSON, max_size=5), max_size=6),
    st.dictionaries(st.sampled_from(["price", "cards", "not_in_manifest"]), _JSON, max_size=3),
)
def test_the_layout_is_the_whole_encoders_text_byte_for_byte(items, extra):
    document = {"version": 1, "generation": 2, "manifest": "m.yaml", "counts": {"pending": 1}, "items": {}, **extra}
    texts: dict[str, Any] = {}
    expected = json.JSONEncoder(ensure_ascii=False, indent=1).encode({**document, "items": items})
    assert "".join(snapshots.layout(document, items, texts)) == expected
    assert "".join(snapshots.layout(document, items, texts)) == expected  # again, from the kept texts


def test_a_record_changed_since_the_last_snapshot_is_written_as_it_is_now(tmp_path):
    texts: dict[str, Any] = {}
    document: dict[str, Any] = {"version": 1, "items": {}}
    items: dict[str, Any] = {"a": {"state": "pending"}, "b": {"state": "pending"}}
    "".join(snapshots.layout(document, items, texts))
    items["a"] = {"state": "succeeded", "files": ["a.png"]}  # a transition: a new record
    text = "".join(snapshots.layout(document, items, texts))
    assert json.loads(text)["items"] == items


async def test_every_snapshot_of_a_real_run_and_its_resume_is_the_whole_encoders_text(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", [f"A harbour, study {n} — ünïcode 🦊" for n in range(12)])
    out = tmp_path / "out"
    async with sim_factory(fail_rate=0.5, transient_share=0.5) as sim:
        await run(make_settings(path, out, sim))
    first = check(out)
    items = manifest.load(path)
    with Ledger.open(out, "m.yaml") as ledger:  # a resume: its records came from the disk
        ledger.track(items[:8])
        ids = sorted(ledger.manifest_ids or ())
        ledger.snapshot()
        ledger.start_submit(ids[0], ledger.record(ids[0])["request"] or {})
        ledger.snapshot()  # one record changed since the last snapshot: the others' texts were kept
        doc = check(out)
        assert doc["items"][ids[0]]["state"] == "pending" and doc["items"][ids[0]].get("submitting") is True
        ledger.submitted(ids[0], "task-again")
        ledger.failed(ids[1], error_record("permanent", None, 'a "quoted"\nmessage'))
        ledger.snapshot()
        doc = check(out)
        assert doc["items"][ids[0]]["task_id"] == "task-again" and doc["items"][ids[0]]["state"] == "submitted"
        assert doc["items"][ids[1]]["error"]["message"] == 'a "quoted"\nmessage'
        assert {i: doc["items"][i] for i in ids[2:]} == {i: first["items"][i] for i in ids[2:]}
        assert doc["not_in_manifest"] == sorted(set(first["items"]) - set(ids))


@pytest.mark.parametrize("kept", [0, 3])
async def test_a_ledger_larger_than_the_texts_kept_is_written_the_same(sim_factory, tmp_path, monkeypatch, kept):
    monkeypatch.setattr(snapshots, "TEXTS_KEPT", kept)
    path = manifest_of(tmp_path / "m.yaml", [f"A fox, study {n}" for n in range(6)])
    out = tmp_path / "out"
    async with sim_factory() as sim:
        await run(make_settings(path, out, sim))
    check(out)
    with Ledger.open(out, "m.yaml") as ledger:
        some = sorted(ledger.items)[0]
        ledger.failed(some, error_record("permanent", None, "gone"))
        ledger.snapshot()
        assert check(out)["items"][some]["state"] == "failed"
