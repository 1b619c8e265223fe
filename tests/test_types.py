"""One name per meaning (issue 19): the exit codes are one enum, the failure kinds one Literal spelled as the
ledger keeps them, and a record's optional fields are read through records.py's readers."""

from __future__ import annotations

import typing

from batchgen import args, errors, failures, records
from batchgen.errors import ExitCode


def test_every_exit_code_has_its_meaning_and_every_error_its_code():
    assert set(args.EXIT_CODES) == set(ExitCode)
    assert list(args.EXIT_CODES) == sorted(ExitCode, key=[70, 3, 2, 4, 128, 5, 1, 0].index)
    assert ExitCode.signal(15) == 143 and args.exit_meaning(143) == "stopped by SIGTERM; state saved"
    for name in dir(errors):
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, errors.BatchgenError):
            assert isinstance(cls.exit_code, ExitCode), name


def test_the_table_classifies_into_the_ledger_spelling():
    kinds = set(typing.get_args(failures.Kind))
    assert set(typing.get_args(failures.TaskKind)) <= kinds
    assert {kind for kind, _ in failures.TABLE} | {failures.classify("E1", "new")} == set(
        typing.get_args(failures.TaskKind)
    )
    assert failures.classify("400", "flagged") == "task_policy"


def test_readers_give_the_meaning_of_fields_a_record_may_lack():
    record = records.new_record({"model": "imagen4-ultra", "input": {"prompt": "a fox", "seed": 3}})
    assert records.paid(record) == 0 and records.in_doubt(record) == 0 and not records.doubt_open(record)
    assert records.cost(record) == {} and records.request_input(record)["seed"] == 3
    record["submitting"] = True
    record["in_doubt"] = 2
    assert records.in_doubt(record) == 3 and records.doubt_open(record)
    assert records.request_input(records.new_record(None)) == {}


def test_spend_so_far_is_summed_in_one_place():
    paid = records.new_record(None)
    paid["paid"] = 2
    assert records.paid_total({"a": paid, "b": records.new_record(None)}) == 2


def test_readers_of_the_review_and_roll_fields():
    record = records.new_record({"model": "imagen4-ultra", "input": {"prompt": "a fox", "seed": 3}})
    assert records.rolls(record) == [] and records.open_roll(record) is None and records.decision(record) is None
    assert records.files_before(record) == [] and records.reroll_failed(record) is None
    assert records.model(record) == "imagen4-ultra" and records.model(records.new_record(None)) is None
    assert records.seed(records.request_input(record)) == 3 and records.seed({"seed": "3"}) is None
    record["rolls"] = [{"n": 1, "seed": 3, "files": ["a.png"]}, {"seed": 4}]
    record["roll"] = {"n": 3, "seed": 5, "keep": ["a~roll2.png"]}
    record["decision"] = "rejected"
    assert [records.seed(r) for r in records.rolls(record)] == [3, 4]
    assert records.roll_files(records.rolls(record)[0]) == ["a.png"] and records.roll_files({}) == []
    assert records.roll_number(records.rolls(record)[1], 2) == 2 and records.roll_keep(record["roll"]) == [
        "a~roll2.png"
    ]
    assert records.roll_fields(record["roll"], ("n", "request_sent")) == {"n": 3, "request_sent": None}
    assert records.decision(record) == "rejected"
    error = records.error_record("http", None, "boom")
    del error["code"]  # type: ignore[misc]  # a hand-made ledger may leave it out
    assert records.error_code(error) is None and records.error_code({"code": 500}) == 500


def test_optional_record_fields_are_read_only_through_the_readers():
    """`record.get(...)` lives in records.py (and the on-disk check, recordcheck.py); the ledger's transitions
    (ledger.py, store.py) read through the same readers."""
    import pathlib
    import re

    pattern = re.compile(r"\b(record|known|other|r|roll|open_roll|last|changed|error)\.get\(")
    package = pathlib.Path(records.__file__).parent
    found = [
        f"{path.name}:{number}"
        for path in sorted(package.rglob("*.py"))
        if path.name not in ("records.py", "recordcheck.py", "snapshots.py")  # the readers, the check, the parser
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []
