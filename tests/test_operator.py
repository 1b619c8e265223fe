"""What an operator watches: the metrics file (read by the real Prometheus text parser), the JSON and text logs,
the summary on every exit path, the error ladder's last rung (exit 70), and output to a closed pipe."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from batchgen import ledger, report
from batchgen.errors import Problem
from batchgen.report import SUCCESS

from .helpers import KEY, ROOT, cli, env, finish, injected, manifest_of, run_args, start, until

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d{4} batchgen: ")


def metrics_of(path: Path) -> dict[str, float]:
    """Every sample of the file, through prometheus_client's parser; also checks HELP and TYPE per family."""
    text = path.read_text()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation and family.documentation != family.name, family.name  # a real HELP line
        assert family.type == "gauge", family.name
        assert f"# HELP {family.name} " in text and f"# TYPE {family.name} gauge" in text
        for sample in family.samples:
            key = sample.name + ("" if "state" not in sample.labels else f":{sample.labels['state']}")
            samples[key] = sample.value
    return samples


def json_lines(stderr: str) -> list[dict]:
    records = [json.loads(line) for line in stderr.splitlines()]  # every line one JSON object
    for record in records:
        assert record["event"] and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["ts"]), record
    return records


# ---------------------------------------------------------------- the metrics file


async def test_metrics_are_exact_parse_as_prometheus_text_and_are_0644_under_umask_077(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a", "b [sim:fail-policy]"])
    metrics = tmp_path / "textfile" / "batchgen.prom"
    metrics.parent.mkdir()  # node_exporter's textfile folder exists: batchgen creates only the file
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        before = time.time()
        code, _, stderr = await cli(run_args(path, tmp_path / "out", sim, "--metrics-file", str(metrics)), umask=0o077)
        after = time.time()
    assert code == 1, stderr
    assert stat.S_IMODE(metrics.stat().st_mode) == 0o644  # node_exporter runs as another user
    values = metrics_of(metrics)
    assert values["batchgen_items:succeeded"] == 1 and values["batchgen_items:failed"] == 1
    assert values["batchgen_last_run_paid_creates"] == 2 and values["batchgen_last_run_exit_code"] == 1
    finished = values["batchgen_last_run_finished_timestamp"]
    assert before <= finished <= after  # exact: %g would have written 1.7957e+09, minutes off
    assert "e+" not in metrics.read_text()
    assert values["batchgen_last_success_timestamp"] == finished  # exit 1 finished its work
    assert list(metrics.parent.iterdir()) == [metrics]


async def test_a_run_that_did_not_finish_its_work_carries_the_last_success_over(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a"])
    out = tmp_path / "out"
    metrics = tmp_path / "batchgen.prom"
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        assert (await cli(run_args(path, out, sim, "--metrics-file", str(metrics))))[0] == 0
        success = metrics_of(metrics)["batchgen_last_success_timestamp"]
        with ledger.Ledger.open(out, "m.yaml"):  # a run stuck holding the lock: its followers exit 4
            code, _, _ = await cli(run_args(path, out, sim, "--metrics-file", str(metrics)))
        assert code == 4
        values = metrics_of(metrics)
        assert values["batchgen_last_run_exit_code"] == 4
        assert values["batchgen_last_success_timestamp"] == success  # carried over: the alert sees it age
        assert values["batchgen_last_run_finished_timestamp"] >= success
        # Flags that cannot even be read: still written, the manifest label kept from the previous file.
        code, _, _ = await cli(run_args(path, out, sim, "--metrics-file", str(metrics), "--limit", "-1"))
        assert code == 2
    text = metrics.read_text()
    assert 'batchgen_last_run_exit_code{manifest="m.yaml"} 2' in text
    assert metrics_of(metrics)["batchgen_last_success_timestamp"] == success


# ---------------------------------------------------------------- every exit path: metrics and JSON summary


async def _exit_path(case: str, sim_factory, tmp_path: Path) -> tuple[int, str, Path]:
    out = tmp_path / "out"
    metrics = tmp_path / "batchgen.prom"
    json_args = ("--log-format", "json", "--metrics-file", str(metrics))
    good = manifest_of(tmp_path / "m.yaml", ["a", "b [sim:slow]"])
    async with sim_factory(api_key=KEY, latency=0.2, jitter=0) as sim:
        if case == "bad flag":
            code, _, stderr = await cli(run_args(good, out, sim, *json_args, "--concurrency", "zero"))
        elif case == "bad manifest":
            bad = ROOT / "sample_manifests" / "invalid.yaml"
            code, _, stderr = await cli(run_args(bad, out, sim, *json_args))
        elif case == "locked":
            with ledger.Ledger.open(out, "m.yaml"):
                code, _, stderr = await cli(run_args(good, out, sim, *json_args))
        elif case == "refused key":
            code, _, stderr = await cli(run_args(good, out, sim, *json_args), env=env(BATCHGEN_API_KEY="wrong-key-123"))
        elif case == "max-runtime":
            code, _, stderr = await cli(run_args(good, out, sim, *json_args, "--max-runtime", "1", "--report"))
        else:  # SIGTERM
            proc = await start(run_args(good, out, sim, *json_args))
            await until(lambda: sim.stats.creates >= 2)
            proc.send_signal(signal.SIGTERM)
            code, _, stderr = await finish(proc)
    return code, stderr, metrics


@pytest.mark.parametrize(
    ("case", "expected", "said"),
    [
        ("bad flag", 2, "usage_error: batchgen run: argument --concurrency: expected an integer >= 1, got 'zero'"),
        ("bad manifest", 2, "manifest_problem: "),
        ("locked", 4, "locked: "),
        ("refused key", 3, "log: the service refused the API key (401)"),
        ("max-runtime", 5, "incomplete: incomplete: 0 pending, 1 submitted"),
        ("SIGTERM", 143, "plan: m.yaml: 2 items"),
    ],
)
async def test_every_exit_path_writes_the_metrics_and_ends_the_json_log_with_the_summary(
    sim_factory, tmp_path, case, expected, said
):
    code, stderr, metrics = await _exit_path(case, sim_factory, tmp_path)
    assert code == expected, stderr
    records = json_lines(stderr)
    assert any(f"{r['event']}: {r['msg']}".startswith(said) for r in records), records
    summary = records[-1]
    assert summary["event"] == "summary" and summary["exit_code"] == expected
    assert [r["event"] for r in records].count("summary") == 1
    values = metrics_of(metrics)
    assert values["batchgen_last_run_exit_code"] == expected
    assert values["batchgen_last_run_finished_timestamp"] == summary["finished_timestamp"]
    assert "batchgen_last_success_timestamp" not in values  # none of these finished its work
    if case == "max-runtime":  # the lines that used to follow the summary now come before it
        events = [r["event"] for r in records]
        assert events.index("incomplete") < events.index("contact_sheet") < events.index("summary")
        assert summary["counts"] == {"pending": 0, "submitted": 1, "succeeded": 1, "failed": 0}
        assert values["batchgen_items:submitted"] == 1 and values["batchgen_last_run_paid_creates"] == 2


async def test_text_log_lines_carry_a_timestamp_command_output_does_not(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a", "b [sim:fail-policy]"])
    out = tmp_path / "out"
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        code, _, stderr = await cli(run_args(path, out, sim))
    assert code == 1
    lines = stderr.splitlines()
    assert lines and all(TEXT_LINE.match(line) for line in lines), lines
    assert "1 succeeded, 1 failed, 0 submitted, 0 pending" in lines[-1] and "exit 1" in lines[-1]
    assert "2 paid creates, 0 retries" in stderr
    # Command output stays as it was: validate's file:line problems, status.
    code, stdout, stderr = await cli(
        [sys.executable, "-m", "batchgen", "validate", str(ROOT / "sample_manifests" / "invalid.yaml")]
    )
    assert code == 2 and stderr.splitlines()[0].startswith(str(ROOT / "sample_manifests" / "invalid.yaml") + ":")
    code, stdout, _ = await cli([sys.executable, "-m", "batchgen", "status", str(out)])
    assert code == 0 and stdout.startswith(f"{out}: 2 items")


async def test_manifest_problems_keep_file_line_first_in_text_and_are_objects_in_json(sim_factory, tmp_path):
    bad = ROOT / "sample_manifests" / "invalid.yaml"
    async with sim_factory(api_key=KEY) as sim:
        _, _, text = await cli(run_args(bad, tmp_path / "out", sim))
        _, _, as_json = await cli(run_args(bad, tmp_path / "out", sim, "--log-format", "json"))
    assert text.splitlines()[0].startswith(f"{bad}:")
    problems = [r for r in json_lines(as_json) if r["event"] == "manifest_problem"]
    assert problems and all(r["file"] == str(bad) and r["line"] for r in problems)
    assert any(r["item"] == "bad-seed" and r["field"] == "seed" for r in problems)  # the bare id
    assert str(Problem(str(bad), problems[0]["line"], "x")).startswith(f"{bad}:")


# ---------------------------------------------------------------- a closed pipe


def _ledger_with_failures(out: Path, n: int) -> None:
    with ledger.Ledger.open(out, "m.yaml") as book:
        for i in range(n):
            request = {"model": "imagen4-ultra", "input": {"prompt": f"picture {i}"}}
            book.failed(
                f"item-{i:05d}", ledger.error_record("rejected", "422", "upstream validation rejected"), request
            )


def test_status_into_a_closed_pipe_exits_quietly(tmp_path):
    out = tmp_path / "out"
    _ledger_with_failures(out, 3)
    reader, writer = os.pipe()
    os.close(reader)  # the reader is gone before batchgen writes a byte: every write is EPIPE
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "batchgen", "status", str(out)], stdout=writer, stderr=subprocess.PIPE, text=True
        )
    finally:
        os.close(writer)
    assert proc.stderr == "" and proc.returncode == 128 + signal.SIGPIPE


def test_status_piped_into_head_exits_quietly(tmp_path):
    out = tmp_path / "out"
    _ledger_with_failures(out, 3000)  # far more than a pipe holds: head is gone while status still writes
    proc = subprocess.run(
        f"{sys.executable} -m batchgen status {out} | head -2",
        shell=True,
        capture_output=True,
        text=True,
        executable="/bin/sh",
    )
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 2
    assert proc.stderr == "", proc.stderr


async def test_a_run_whose_stderr_reader_went_away_finishes_its_work(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a", "b"])
    reader, writer = os.pipe()
    os.close(reader)
    try:
        async with sim_factory(api_key=KEY, latency=0.05) as sim:
            proc = await asyncio.create_subprocess_exec(
                *run_args(path, tmp_path / "out", sim), env=env(), stdin=asyncio.subprocess.DEVNULL, stderr=writer
            )
            code = await asyncio.wait_for(proc.wait(), 60)
    finally:
        os.close(writer)
    assert code == 0
    assert ledger.load(tmp_path / "out").items["item-01"]["state"] == "succeeded"


# ---------------------------------------------------------------- the last rung: a bug is exit 70


async def test_a_bug_is_one_line_a_masked_crash_log_and_exit_70(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a"])
    out = tmp_path / "out"
    metrics = tmp_path / "batchgen.prom"
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        args = run_args(path, out, sim, "--metrics-file", str(metrics))
        code, stdout, stderr = await cli(injected(f'KeyError("a bug that quotes the key {KEY}")', args))
    assert code == 70, stderr
    crash = [line for line in stderr.splitlines() if "unexpected error, a bug in batchgen: " in line]
    assert len(crash) == 1 and "KeyError: " in crash[0] and "crash-" in crash[0]
    assert "Traceback" not in stderr and "ExceptionGroup" not in stderr and "TaskGroup" not in stderr
    assert KEY not in stderr + stdout
    (log,) = (out / ".batchgen").glob("crash-*.log")
    assert re.fullmatch(r"crash-\d{8}T\d{6}Z\.log", log.name)
    text = log.read_text()
    assert "Traceback" in text and "broken_fetch" in text and KEY not in text and "****" in text
    assert metrics_of(metrics)["batchgen_last_run_exit_code"] == 70
    assert stderr.splitlines()[-1].endswith(
        "exit 70 (an unexpected error, a bug in batchgen; the traceback is in DIR/.batchgen/crash-*.log)"
    )
    # The ledger was closed properly: the item's task id is kept, and a rerun pays nothing again.
    assert ledger.load(out).items["item-00"]["state"] == "submitted"


async def test_a_bug_in_json_mode_is_one_object_and_the_summary(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a"])
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        args = run_args(path, tmp_path / "out", sim, "--log-format", "json")
        code, _, stderr = await cli(injected('ZeroDivisionError("injected")', args))
    assert code == 70
    records = json_lines(stderr)
    assert [r["event"] for r in records][-2:] == ["crash", "summary"]
    assert records[-2]["crash_log"].startswith(str(tmp_path / "out" / ".batchgen" / "crash-"))


async def test_a_group_holding_one_batchgen_error_is_that_error(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a"])
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        args = run_args(path, tmp_path / "out", sim)
        error = 'batchgen.errors.LedgerError("the journal cannot be trusted: injected")'
        code, _, stderr = await cli(injected(error, args).copy())
    assert code == 2, stderr
    assert "the journal cannot be trusted: injected" in stderr
    assert "Traceback" not in stderr and "ExceptionGroup" not in stderr
    assert not list((tmp_path / "out" / ".batchgen").glob("crash-*.log"))


def test_a_bug_without_a_directory_prints_the_line_then_the_traceback(tmp_path):
    manifest = manifest_of(tmp_path / "m.yaml", ["a"])
    code = (
        "import sys, batchgen.cli, batchgen.manifest\n"
        "def broken_load(path, **options):\n    raise AttributeError('injected')\n"
        "batchgen.manifest.load_counted = broken_load\n"
        "sys.exit(batchgen.cli.main(sys.argv[1:]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, "validate", str(manifest)], capture_output=True, text=True)
    assert proc.returncode == 70
    first, *rest = proc.stderr.splitlines()
    assert TEXT_LINE.match(first) and "unexpected error, a bug in batchgen: AttributeError: injected" in first
    assert rest[0].startswith("Traceback") and "broken_load" in proc.stderr


def test_metrics_label_survives_escaping_and_is_carried_over_exactly(tmp_path):
    path = tmp_path / "batchgen.prom"
    odd = 'night "one"\\2026\nlist.yaml'
    figures = {"paid_creates": 3, "seconds": 1.25, "exit_code": 0, "finished_timestamp": 1795654503.412}
    report.write_metrics(path, manifest=odd, counts={"succeeded": 3}, figures=figures)
    report.write_metrics(path, manifest=None, counts=None, figures={"exit_code": 2, "finished_timestamp": 1795740000.5})
    (family,) = [f for f in text_string_to_metric_families(path.read_text()) if f.name == SUCCESS]
    (sample,) = family.samples
    assert sample.labels == {"manifest": odd} and sample.value == 1795654503.412
    assert "batchgen_last_run_finished_timestamp" in path.read_text() and "1795740000.5" in path.read_text()
    assert report.exact(1795654503.412) == "1795654503.412" and report.exact(3) == "3" and report.exact(2.0) == "2"


async def test_a_dry_run_leaves_the_metrics_of_the_last_real_run_alone(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a"])
    metrics = tmp_path / "batchgen.prom"
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        assert (await cli(run_args(path, tmp_path / "out", sim, "--metrics-file", str(metrics))))[0] == 0
        before = metrics.read_bytes()
        code, stdout, stderr = await cli(
            run_args(path, tmp_path / "out", sim, "--metrics-file", str(metrics), "--dry-run", "--log-format", "json")
        )
    assert code == 0 and "already done 1" in stdout
    assert metrics.read_bytes() == before
    (summary,) = json_lines(stderr)
    assert summary["event"] == "summary" and summary["dry_run"] is True and summary["exit_code"] == 0


async def test_a_signal_before_the_run_began_still_writes_the_metrics_and_the_summary(tmp_path):
    # The key file is a FIFO, as `--api-key-file <(pass show key)` gives: batchgen blocks reading it, before the
    # run's own signal handlers exist, until this test writes, which it never does.
    fifo = tmp_path / "key"
    os.mkfifo(fifo)
    metrics = tmp_path / "batchgen.prom"
    manifest = manifest_of(tmp_path / "m.yaml", ["a"])
    args = [sys.executable, "-m", "batchgen", "run", str(manifest), "--out", str(tmp_path / "out")]
    args += ["--api-base", "http://127.0.0.1:9", "--api-key-file", str(fifo)]
    proc = await start([*args, "--metrics-file", str(metrics), "--log-format", "json"])

    def opened() -> int | None:  # a non-blocking open for writing succeeds once batchgen has the FIFO open for reading
        with contextlib.suppress(OSError):
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        return None

    writer = await until(opened, what="batchgen never opened the key file")
    try:
        proc.send_signal(signal.SIGTERM)
        code, _, stderr = await finish(proc)
    finally:
        os.close(writer)
    assert code == 143, stderr
    records = json_lines(stderr)
    assert records[-1]["event"] == "summary" and records[-1]["exit_code"] == 143
    assert metrics_of(metrics)["batchgen_last_run_exit_code"] == 143


def test_what_python_itself_logs_is_one_json_object_too(tmp_path):
    # asyncio reports an unretrieved task error through `logging`, with a traceback: under --log-format json
    # even that must be one object per line. A wrapped manifest loader logs such a record, then does its job.
    code = (
        "import logging, sys, warnings, batchgen.cli, batchgen.manifest\n"
        "real = batchgen.manifest.load\n"
        "def load(path, **options):\n"
        "    try:\n        raise RuntimeError('lost')\n"
        "    except RuntimeError as exc:\n"
        "        logging.getLogger('asyncio').error('Task exception was never retrieved', exc_info=exc)\n"
        "    warnings.warn('a warning from a library')\n"
        "    return real(path, **options)\n"
        "batchgen.manifest.load = load\n"
        "sys.exit(batchgen.cli.main(sys.argv[1:]))\n"
    )
    path = manifest_of(tmp_path / "m.yaml", ["a"])
    args = ["run", str(path), "--out", str(tmp_path / "out"), "--simulate", "--dry-run", "--log-format", "json"]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    records = json_lines(proc.stderr)
    logged = [r for r in records if r["event"] == "python_log"]
    assert [r["logger"] for r in logged] == ["asyncio", "py.warnings"]
    assert "RuntimeError: lost" in logged[0]["detail"] and records[-1]["event"] == "summary"
