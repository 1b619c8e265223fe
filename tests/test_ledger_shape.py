"""A hand-edited results.json: a field of the wrong type is a damaged ledger, never a traceback or a second payment."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchgen import records, report, sheet
from batchgen.errors import LedgerError

from .helpers import batchgen

RECORD: dict[str, Any] = {
    "state": "failed",
    "task_id": "task_imagen4-ultra_1777600000000",
    "attempts": 1,
    "request": {"model": "imagen4-ultra", "input": {"prompt": "a fox"}},
    "files": [],
    "sha256": [],
    "error": {"kind": "task_policy", "code": "400", "message": "refused"},
    "submitted_at": "2026-11-26T03:00:00Z",
    "finished_at": "2026-11-26T03:00:30Z",
}


def ledger(**top: Any) -> dict[str, Any]:
    return {"version": 1, "manifest": "m.yaml", "items": {"fox": copy.deepcopy(RECORD)}, **top}


EDITS: list[tuple[str, Any]] = [
    ("files", 5),
    ("error", "boom"),
    ("error", ["a"]),
    ("attempts", "many"),
    ("request", {"input": "str"}),
    ("sha256", [1]),
    ("task_id", 7),
    ("submitting", "yes"),
    ("finished_at", {}),
]


@pytest.mark.parametrize(("field", "value"), [*EDITS, ("not_in_manifest", 5)], ids=lambda v: json.dumps(v))
def test_status_and_report_refuse_a_hand_edited_ledger_cleanly_and_change_nothing(tmp_path, field, value):
    document = ledger()
    if field == "not_in_manifest":
        document[field] = value
    else:
        document["items"]["fox"][field] = value
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(document))
    before = (out / "results.json").read_bytes()
    for command in ("status", "report"):
        done = batchgen(command, str(out), cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and "a bug in batchgen" not in done.stderr
        assert f"damaged: {field}" in done.stderr and "there is no journal to rebuild it from" in done.stderr
    assert (out / "results.json").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]


def test_a_missing_field_is_filled_in_not_refused(tmp_path):
    document = ledger()
    for name in ("files", "sha256", "error", "task_id"):
        del document["items"]["fox"][name]
    (tmp_path / "results.json").write_text(json.dumps(document))
    loaded = records.load(tmp_path)
    assert loaded.items["fox"]["files"] == [] and loaded.items["fox"]["error"] is None
    assert report.status(tmp_path)["failed"] == [{"id": "fox", "attempts": 1, "error": None}]


# ---------------------------------------------------------------- the loader, property-tested

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
FIELDS = [*RECORD, "paid", "in_doubt", "submitting"]
TOP = ["not_in_manifest", "manifest", "updated_at", "generation", "counts"]


def _check_loaded(directory: Path) -> None:
    try:
        loaded = records.load(directory)
    except LedgerError:
        return  # refused with a message: the damaged-ledger path
    for record in loaded.items.values():
        assert records.record_problem(dict(record)) is None
    assert all(isinstance(i, str) for i in loaded.not_in_manifest)
    doc = report.status(directory, loaded)
    report.status_text(doc)
    sheet.write_report(directory)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS + TOP), value=json_values)
def test_the_loader_takes_any_json_in_any_field_without_a_traceback(field, value):
    document = ledger()
    if field in TOP:
        document[field] = value
    else:
        document["items"]["fox"][field] = value
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        (directory / "results.json").write_text(json.dumps(document))
        _check_loaded(directory)
        # The same record in a journal (no snapshot): refused or loaded, never a traceback.
        (directory / "results.json").unlink()
        (directory / ".batchgen").mkdir(exist_ok=True)  # the contact sheet may have made it
        line = json.dumps({"id": "fox", "record": document["items"]["fox"]})
        (directory / ".batchgen" / "journal.jsonl").write_text('{"base": 0}\n' + line + "\n")
        _check_loaded(directory)
