"""What a run would cost before it is run: `validate`'s counts and upper bound, `--dry-run`'s creates, time, price."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from batchgen import manifest, plan
from batchgen.config import RunSettings
from batchgen.errors import UsageError
from batchgen.records import new_record

from .helpers import batchgen

GRID = """\
items:
  - id: zoo
    prompt: "A {animal} in {place}"
    matrix: {animal: [fox, owl, heron], place: [snow, rain]}
    count: 2
  - prompt: a plain one
"""


def test_validate_prints_counts_and_with_a_price_the_upper_bound(write):
    path = write("grid.yaml", GRID)
    proc = batchgen("validate", str(path), "--price", "0.04")
    assert proc.returncode == 0, proc.stderr
    expected = "2 items listed, 13 after expansion, valid; at most 13 × 0.04 = 0.52 if every item is paid for once"
    assert proc.stdout == f"{path}: {expected}\n"
    proc = batchgen("validate", str(path), extra_env={"BATCHGEN_PRICE": "1.5"})
    assert proc.stdout.endswith("at most 13 × 1.5 = 19.5 if every item is paid for once\n")
    plain = write("plain.yaml", "- prompt: one\n")
    assert batchgen("validate", str(plain)).stdout == f"{plain}: 1 item, valid\n"


@pytest.mark.parametrize(
    ("flag", "env", "named"), [("x", None, "--price"), (None, "-1", "BATCHGEN_PRICE"), ("nan", None, "--price")]
)
def test_a_bad_price_is_a_usage_error_naming_where_it_came_from(write, flag, env, named):
    path = write("grid.yaml", GRID)
    args = ["validate", str(path), *(["--price", flag] if flag else [])]
    proc = batchgen(*args, extra_env={"BATCHGEN_PRICE": env} if env else None)
    (line,) = proc.stderr.splitlines()  # one line, after the log line's timestamp
    assert proc.returncode == 2 and f" batchgen: error: {named}: expected a price per image" in line, line


def test_parse_price_keeps_decimal_exactness():
    assert plan.parse_price("0.1", "--price") * 3 == Decimal("0.3")
    assert plan.parse_price(" ", "BATCHGEN_PRICE") is None  # an empty variable is no price; `--price " "` is refused
    with pytest.raises(UsageError):
        plan.parse_price("inf", "--price")


@pytest.mark.parametrize(
    ("creates", "rate", "concurrency", "expected"),
    [
        (
            36,
            (20, 10.0),
            100,
            ["about 30 s to 55 s", "36 creates in ⌈36/20⌉ = 2 windows of 10 s (--create-rate 20/10)"],
        ),
        (
            36,
            (20, 10.0),
            8,
            ["about 1 min 40 s to 3 min 45 s", "at most 8 in flight (--concurrency) is the tighter limit"],
        ),
        (1, (20, 10.0), 8, ["about 20 s to 45 s", "1 creates in ⌈1/20⌉ = 1 window of 10 s"]),
        (100_000, (20, 10.0), 200, ["about 13 h 53 min,", "5,000 windows of 10 s"]),
    ],
)
def test_expected_time_follows_the_create_window_and_the_in_flight_limit(creates, rate, concurrency, expected):
    text = "\n".join(plan.expected_time(creates, rate, concurrency))
    assert all(part in text for part in expected), text
    assert "20–45 s per image (the service's published time)" in text


def test_cut_stops_at_a_word_and_keeps_one_line():
    assert plan.cut("A fox in a pine forest at dawn", 20) == "A fox in a pine…"
    assert plan.cut("two\nlines\x1b[31m and\ttabs", 80) == "two lines [31m and tabs"
    assert plan.cut("x" * 50, 20) == "x" * 19 + "…"
    assert plan.cut("short", 20) == "short"


def test_describe_lists_cells_and_costs_new_changed_and_retried(write, tmp_path):
    path = write("grid.yaml", GRID)
    items = manifest.load(path)
    done, changed, failed = items[0], items[1], items[2]
    records = {
        done.id: {**new_record(done.request), "state": "succeeded"},
        changed.id: {**new_record({"model": "imagen4-ultra", "input": {"prompt": "old"}}), "state": "succeeded"},
        failed.id: {**new_record(failed.request), "state": "failed"},
    }
    made = plan.make_plan(items, records, retry_failed=True)
    settings = RunSettings(
        manifest=path, out=tmp_path / "out", api_base="", api_key=None, price=Decimal("0.04"), concurrency=100
    )
    lines = plan.describe(made, settings)
    assert lines[:2] == [
        f"{path}: 13 items -> {tmp_path / 'out'}",
        "  would submit 12: 10 new, 1 changed, 1 failed to retry",
    ]
    assert lines[2].startswith("  paid creates: 12 = new + changed + retried (each createTask is charged")
    assert "  estimated cost: 12 × 0.04 = 0.48 (a retried failure is paid again)" in lines
    listed = [line for line in lines if line.startswith("    submit ")]
    assert len(listed) == 12 and listed[0].startswith(f"    submit {items[3].id}: A fox in rain")
    limited = plan.describe(made, RunSettings(manifest=path, out=tmp_path, api_base="", api_key=None, limit=5))
    assert limited[1].startswith("  would submit 5 (--limit 5 of 12)")
    assert len([line for line in limited if line.startswith("    submit ")]) == 5
    assert not any("estimated cost" in line for line in limited)


def test_dry_run_prints_cells_creates_time_and_cost(write, tmp_path):
    path = write("grid.yaml", GRID)
    proc = batchgen("run", str(path), "--out", str(tmp_path / "out"), "--dry-run", "--price", "0.25")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert (
        "  paid creates: 13 = new + changed + retried (each createTask is charged; polling and downloads are not)"
        in lines
    )
    assert any(line.startswith("  expected time: about ") for line in lines)
    assert "  estimated cost: 13 × 0.25 = 3.25 (a retried failure is paid again)" in lines
    assert [line.split(":")[0] for line in lines if line.startswith("    submit ")][:2] == [
        "    submit zoo-fox-snow",
        "    submit zoo-fox-snow-2",
    ]
    assert not (tmp_path / "out").exists()


def test_dry_run_of_a_big_plan_lists_fifty_and_counts_the_rest(tmp_path: Path):
    path = tmp_path / "big.csv"
    path.write_text("prompt,count\n" + "".join(f"picture {n},2\n" for n in range(60)), encoding="utf-8")
    proc = batchgen("run", str(path), "--out", str(tmp_path / "out"), "--dry-run")
    listed = [line for line in proc.stdout.splitlines() if line.startswith("    submit ")]
    assert len(listed) == plan.LISTED and proc.stdout.splitlines()[-1] == "    … and 70 more"
