"""Each promise of docs/guarantees.md, held against the faults that once broke it (issue #10).

Real HTTP on loopback against the simulator (faults come from its knobs), real files, real signals.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from batchgen import manifest, report, runner
from batchgen.client import Client, open_session
from batchgen.config import RetryPolicy, Secret, Timeouts
from batchgen.errors import RequestRejected, UsageError
from batchgen.ledger import Ledger
from batchgen.names import Names
from batchgen.progress import Reporter

from .helpers import KEY, answering, cli, make_settings, manifest_of, results, run, run_args, until

DAY = 24 * 3600.0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_files_agree(out: Path) -> None:
    """Every file the ledger credits exists with its sha256, and no two items share a name (case-folded)."""
    seen: dict[str, str] = {}
    for item_id, record in results(out)["items"].items():
        for name, digest in zip(record["files"], record["sha256"], strict=True):
            assert sha256(out / name) == digest, (item_id, name)
            assert seen.setdefault(name.casefold(), item_id) == item_id, f"{name} credited to two items"


# ---------------------------------------------------------------- 1. a deleted results.json: test_rebuild.py


# ---------------------------------------------------------------- 2. stopping while a createTask is under way


async def _run_in_background(settings, stream: io.StringIO) -> asyncio.Task[runner.Outcome]:
    return asyncio.create_task(run(settings, stream))


async def test_a_stop_lets_a_create_already_sent_finish_and_counts_it(sim_factory, tmp_path):
    """createTask answers after 3.5 s (the old grace was 3 s): SIGTERM waits for it, records its task id."""
    out = tmp_path / "out"
    stream = io.StringIO()
    async with sim_factory(latency=30, create_delay=3.5) as sim:
        job = await _run_in_background(make_settings(manifest_of(tmp_path / "m.yaml", ["a"]), out, sim), stream)
        await until(lambda: sim.stats.creates == 1)
        os.kill(os.getpid(), signal.SIGTERM)
        outcome = await asyncio.wait_for(job, 30)
    assert outcome.exit_code == 128 + signal.SIGTERM
    assert outcome.counters.creates == 1 and outcome.counters.in_doubt == 0
    record = results(out)["items"]["item-00"]
    assert record["state"] == "submitted" and record["task_id"] and record["paid"] == 1
    assert not record.get("in_doubt")
    assert "signal again to stop now" in stream.getvalue()


async def test_a_second_signal_stops_inside_the_create_and_marks_it_in_doubt(sim_factory, tmp_path):
    out = tmp_path / "out"
    stream = io.StringIO()
    async with sim_factory(latency=30, create_delay=4) as sim:
        job = await _run_in_background(make_settings(manifest_of(tmp_path / "m.yaml", ["a"]), out, sim), stream)
        await until(lambda: sim.stats.creates == 1)
        os.kill(os.getpid(), signal.SIGINT)
        await until(lambda: "signal again" in stream.getvalue())
        os.kill(os.getpid(), signal.SIGINT)
        outcome = await asyncio.wait_for(job, 3)  # well before the create's answer
    assert outcome.exit_code == 128 + signal.SIGINT and outcome.counters.in_doubt == 1
    record = results(out)["items"]["item-00"]
    assert record["state"] == "pending" and record["in_doubt"] == 1


async def test_the_create_call_has_its_own_bound_and_a_timeout_is_in_doubt_and_counted_by_limit(sim_factory, tmp_path):
    out = tmp_path / "out"
    async with sim_factory(latency=0.05, create_delay=1.0) as sim:
        settings = make_settings(
            manifest_of(tmp_path / "m.yaml", ["a", "b"]), out, sim, limit=1, timeouts=Timeouts(create=0.3)
        )
        outcome = await run(settings)
        await until(lambda: sim.stats.creates == 1)
        assert sim.stats.create_calls == 1  # the in-doubt create used up --limit 1
    assert outcome.exit_code == 5 and outcome.counters.in_doubt == 1
    assert results(out)["items"]["item-00"]["in_doubt"] == 1


def test_the_create_bound_fits_the_systemd_stop_timeout():
    unit = (Path(__file__).resolve().parents[1] / "jobs" / "batchgen-nightly.service").read_text()
    stop = next(float(line.split("=", 1)[1]) for line in unit.splitlines() if line.startswith("TimeoutStopSec="))
    from batchgen.engine import SHUTDOWN_MARGIN

    assert Timeouts().create + SHUTDOWN_MARGIN < stop


# ---------------------------------------------------------------- 3. what a create answer means for money


@pytest.mark.parametrize(("status", "code"), [(201, 200), (200, 0), (200, "0")])
async def test_an_answer_with_a_task_id_is_a_created_task_whatever_its_status(sim_factory, tmp_path, status, code):
    out = tmp_path / "out"
    async with sim_factory(latency=0.05, create_status=status, create_code=code) as sim:
        outcome = await run(make_settings(manifest_of(tmp_path / "m.yaml", ["a"]), out, sim))
        assert sim.stats.creates == 1 and sim.stats.create_calls == 1
    record = results(out)["items"]["item-00"]
    assert outcome.exit_code == 0 and record["paid"] == 1 and not record.get("in_doubt")


@pytest.mark.parametrize("lost", ["504", "drop"])
async def test_a_lost_create_answer_is_in_doubt_and_limit_counts_it(sim_factory, tmp_path, lost):
    out = tmp_path / "out"
    stream = io.StringIO()
    async with sim_factory(latency=0.05, lost_answer_rate=1.0, lost_answer=lost) as sim:
        settings = make_settings(manifest_of(tmp_path / "m.yaml", ["a", "b"]), out, sim, limit=1)
        outcome = await run(settings, stream)
        assert sim.stats.creates == 1 and sim.stats.create_calls == 1  # --limit 1: one possibly paid create
    record = results(out)["items"]["item-00"]
    assert outcome.exit_code == 5 and record["in_doubt"] == 1 and record["state"] == "pending"
    assert "may have been created and paid" in stream.getvalue()


async def test_lost_answers_are_retried_each_marked_in_doubt(sim_factory, tmp_path):
    out = tmp_path / "out"
    async with sim_factory(latency=0.05, lost_answer_rate=0.5, lost_answer="mixed", random_seed=3) as sim:
        outcome = await run(make_settings(manifest_of(tmp_path / "m.yaml", ["a", "b", "c", "d"]), out, sim))
        creates = sim.stats.creates
    items = results(out)["items"].values()
    assert outcome.exit_code == 0
    assert sum(r["paid"] for r in items) + sum(r.get("in_doubt", 0) for r in items) == creates
    assert all(r["paid"] == 1 for r in items)


# ---------------------------------------------------------------- 4. the key, masked at one boundary: test_key_leaks.py


# ---------------------------------------------------------------- 5. one bad result URL fails one item


@pytest.mark.parametrize("url", ["http://[::1/x.png", "http://127.0.0.1:99999/x.png", "http://exa mple.com/x.png"])
async def test_a_malformed_result_url_fails_that_item_never_the_run(sim_factory, tmp_path, url):
    out = tmp_path / "out"
    async with sim_factory(latency=0.05, result_url=url) as sim:
        outcome = await run(make_settings(manifest_of(tmp_path / "m.yaml", ["a", "b"]), out, sim))
    assert outcome.exit_code == 1
    for record in results(out)["items"].values():
        assert record["state"] == "failed" and record["error"]["kind"] == "bad_result"


async def test_an_unreachable_result_host_fails_the_item_instead_of_every_night(sim_factory, tmp_path):
    out = tmp_path / "out"
    async with sim_factory(latency=0.05, result_url="http://127.0.0.1:1/{task_id}.png") as sim:
        outcome = await run(make_settings(manifest_of(tmp_path / "m.yaml", ["a"]), out, sim))
    error = results(out)["items"]["item-00"]["error"]
    assert outcome.exit_code == 1 and error["kind"] == "bad_result" and "unreachable" in error["message"]


# ---------------------------------------------------------------- 7. a task the service does not know


@pytest.mark.parametrize("answer", ["404", "null"])
async def test_a_young_unknown_task_is_polled_until_the_timeout_and_never_stops_the_run(sim_factory, tmp_path, answer):
    out = tmp_path / "out"
    async with sim_factory(latency=5, forget_after=0.0, forget_answer=answer) as sim:
        settings = make_settings(manifest_of(tmp_path / "m.yaml", ["a", "b"]), out, sim, task_timeout=0.5)
        outcome = await run(settings)
    assert outcome.exit_code == 5
    assert all(r["state"] == "submitted" for r in results(out)["items"].values())


@pytest.mark.parametrize("answer", ["404", "null"])
async def test_an_old_task_the_service_forgot_is_lost_and_paid_again_only_with_retry_failed(
    sim_factory, tmp_path, answer
):
    out = tmp_path / "out"
    path = manifest_of(tmp_path / "m.yaml", ["a"])
    async with sim_factory(latency=30, forget_after=0.3, forget_answer=answer, create_time_offset=2 * DAY) as sim:
        outcome = await run(make_settings(path, out, sim))
        assert outcome.exit_code == 1 and outcome.counters.lost == 1
        record = results(out)["items"]["item-00"]
        assert record["state"] == "failed" and record["error"]["kind"] == "lost"
        assert (await run(make_settings(path, out, sim))).exit_code == 1
        assert sim.stats.creates == 1  # not resubmitted without --retry-failed
    async with sim_factory(latency=0.05) as sim:
        outcome = await run(make_settings(path, out, sim, retry_failed=True))
        assert outcome.exit_code == 0 and sim.stats.creates == 1
    assert results(out)["items"]["item-00"]["paid"] == 2


async def test_a_resumed_task_submitted_over_a_day_ago_and_forgotten_is_lost(sim_factory, tmp_path):
    out = tmp_path / "out"
    path = manifest_of(tmp_path / "m.yaml", ["a [sim:hold]"])
    async with sim_factory(latency=0.05) as sim:
        assert (await run(make_settings(path, out, sim, task_timeout=0.3))).exit_code == 5
    doc = results(out)
    doc["items"]["item-00"]["submitted_at"] = "2020-01-01T00:00:00Z"  # the ledger of a run long ago
    (out / "results.json").write_text(json.dumps(doc))
    async with sim_factory(latency=0.05) as sim:  # a service that has forgotten it (a new simulator)
        outcome = await run(make_settings(path, out, sim))
        assert outcome.exit_code == 1 and sim.stats.creates == 0
    assert results(out)["items"]["item-00"]["error"]["kind"] == "lost"


@pytest.mark.parametrize(
    ("status", "body", "content_type", "unknown"),
    [
        (404, '{"code":404,"msg":"task not found","data":null}', "application/json", True),
        (200, '{"code":404,"msg":"task not found","data":null}', "application/json", True),
        (404, "<!DOCTYPE html><html><body>Not Found</body></html>", "text/html", False),
    ],
)
async def test_a_404_about_a_task_is_about_that_task_an_html_page_is_a_wrong_base(status, body, content_type, unknown):
    """SPEC §1a: a 404 on createTask before any JSON answer from this base is a wrong --api-base (exit 2);
    an HTML page with another status is classified by its status (an HTML 200 is an unreadable answer)."""
    async with answering(status, body, content_type) as base, open_session(Timeouts()) as session:
        client = Client(session, base, Secret(KEY), Timeouts())
        if unknown:
            assert (await client.record_info("task_1")).unknown
            with pytest.raises(RequestRejected):  # after a JSON answer, a 404 is about that one request
                await client.create_task({"model": "imagen4-ultra", "input": {"prompt": "a"}})
        else:
            with pytest.raises(UsageError, match="api-base"):
                await client.record_info("task_1")
            with pytest.raises(UsageError, match="api-base"):
                await client.create_task({"model": "imagen4-ultra", "input": {"prompt": "a"}})


# ---------------------------------------------------------------- 8. one task id, two items


async def test_the_same_task_id_for_two_items_is_a_service_error_never_a_success(sim_factory, tmp_path):
    out = tmp_path / "out"
    async with sim_factory(latency=0.05, reuse_id_rate=1.0, random_seed=1) as sim:
        outcome = await run(make_settings(manifest_of(tmp_path / "m.yaml", ["a", "b"]), out, sim, concurrency=1))
        assert sim.stats.creates == 2 and sim.stats.ids_reused == 1
    items = results(out)["items"]
    assert outcome.exit_code == 1
    assert items["item-00"]["state"] == "succeeded"
    assert items["item-01"]["state"] == "failed" and items["item-01"]["error"]["kind"] == "duplicate_task"
    assert items["item-01"]["paid"] == 1 and items["item-01"]["task_id"] is None
    assert_files_agree(out)


# ---------------------------------------------------------------- 9. file names


async def test_file_names_never_collide_between_items(sim_factory, tmp_path):
    out = tmp_path / "out"
    path = tmp_path / "m.yaml"
    path.write_text("- {id: x, prompt: a}\n- {id: x_1, prompt: b}\n- {id: Fox, prompt: c}\n- {id: fox, prompt: d}\n")
    async with sim_factory(latency=0.05, results_per_task=2) as sim:
        assert (await run(make_settings(path, out, sim))).exit_code == 0
    items = results(out)["items"]
    assert items["x_1"]["files"] == ["x_1_1.png", "x_1_2.png"]
    assert items["x"]["files"][1] == "x_2.png" and items["x"]["files"][0].startswith("x_1~")
    assert items["Fox"]["files"] == ["Fox_1.png", "Fox_2.png"]
    assert all("~" in name for name in items["fox"]["files"])
    assert_files_agree(out)


def test_names_never_hand_out_a_file_the_ledger_credits_to_another_item():
    names = Names(["a", "b"], [("old", ["a.png"]), ("b", ["b_1.png"])])
    assert names.stems("b", 1) == ["b"]
    assert names.stems("a", 1)[0].startswith("a~")  # a.png is the retired item `old`'s
    assert names.stems("b", 2) == ["b_1", "b_2"]  # b's own file: b may replace it
    assert names.stems("a", 1) == names.stems("a", 1)  # deterministic
    assert names.credited_to_other("b", "A.PNG") and not names.credited_to_other("old", "a.png")
    with pytest.raises(ValueError, match="template"):
        Names([], [], template="{id}-{seed}")


async def test_a_changed_item_never_deletes_a_file_credited_to_another_item(sim_factory, tmp_path):
    out = tmp_path / "out"
    async with sim_factory(latency=0.05) as sim:
        await run(make_settings(manifest_of(tmp_path / "m.yaml", ["a", "b"]), out, sim))
        doc = results(out)
        doc["items"]["item-00"]["files"].append("item-01.png")  # a ledger from the old naming bug
        doc["items"]["item-00"]["sha256"].append(doc["items"]["item-01"]["sha256"][0])
        (out / "results.json").write_text(json.dumps(doc))
        await run(make_settings(manifest_of(tmp_path / "m.yaml", ["a changed", "b"]), out, sim))
    assert (out / "item-01.png").exists() and results(out)["items"]["item-01"]["state"] == "succeeded"


# ---------------------------------------------------------------- 10. an output directory that is not ours


@pytest.mark.parametrize("where", ["file", "under_file"])
async def test_out_naming_a_file_is_a_clear_exit_2(sim_factory, tmp_path, where):
    (tmp_path / "f").write_text("not a directory")
    out = tmp_path / "f" if where == "file" else tmp_path / "f" / "sub"
    path = manifest_of(tmp_path / "m.yaml", ["a"])
    async with sim_factory() as sim:
        code, _, err = await cli(run_args(path, out, sim))
    assert code == 2 and "Traceback" not in err and str(out) in err


async def test_a_state_folder_owned_by_another_user_is_a_clear_exit_2(sim_factory, tmp_path):
    out = tmp_path / "out"
    (out / ".batchgen").mkdir(parents=True)
    try:
        os.chown(out / ".batchgen", 54321, 54321)
    except PermissionError:
        pytest.skip("only root can give a folder to another user")
    path = manifest_of(tmp_path / "m.yaml", ["a"])
    async with sim_factory() as sim:
        code, _, err = await cli(run_args(path, out, sim))
        assert sim.stats.create_calls == 0
    assert code == 2 and "belongs to another user" in err and "Traceback" not in err


async def test_an_out_this_user_cannot_write_is_a_clear_exit_2(sim_factory, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("runs the CLI as another user: needs root")
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(tmp_path, 0o755)
    path = manifest_of(tmp_path / "m.yaml", ["a"])
    path.chmod(0o644)
    try:
        probe = subprocess.run([sys.executable, "-c", "import batchgen"], user=65534, capture_output=True, check=False)
    except OSError:
        probe = None
    if probe is None or probe.returncode != 0:
        pytest.skip("the interpreter or batchgen cannot be run by user nobody here")
    async with sim_factory() as sim:
        code, _, err = await cli(run_args(path, out, sim), user=65534)
    assert code == 2 and "cannot write there" in err and "Traceback" not in err


# ---------------------------------------------------------------- 11. short journal writes: test_full_disk.py


# ---------------------------------------------------------------- the smaller ones


async def test_the_in_doubt_warning_is_not_repeated_after_the_item_succeeded(sim_factory, tmp_path):
    out = tmp_path / "out"
    path = manifest_of(tmp_path / "m.yaml", ["a"])
    async with sim_factory(latency=0.05, lost_answer_rate=1.0, lost_answer="drop") as sim:
        await run(make_settings(path, out, sim, limit=1))
    warnings = []
    async with sim_factory(latency=0.05) as sim:
        for _ in range(2):
            stream = io.StringIO()
            assert (await run(make_settings(path, out, sim), stream)).exit_code == 0
            warnings.append("in doubt" in stream.getvalue())
    assert warnings == [True, False]
    assert results(out)["items"]["item-00"]["in_doubt"] == 1  # the history stays in the ledger


async def test_attempts_count_per_request_and_paid_never_resets(sim_factory, tmp_path):
    out = tmp_path / "out"
    path = manifest_of(tmp_path / "m.yaml", ["a [sim:fail-transient]"])
    async with sim_factory(latency=0.05) as sim:
        await run(make_settings(path, out, sim, max_attempts=2))
        record = results(out)["items"]["item-00"]
        assert (record["state"], record["attempts"], record["paid"]) == ("failed", 2, 2)
        await run(make_settings(path, out, sim, max_attempts=2, retry_failed=True))
        record = results(out)["items"]["item-00"]
        assert (record["attempts"], record["paid"]) == (2, 4)  # --retry-failed: two more tries, not one
        manifest_of(tmp_path / "m.yaml", ["a [sim:fail-transient:1]"])  # an edited prompt: a new request
        assert (await run(make_settings(path, out, sim, max_attempts=2))).exit_code == 0
        record = results(out)["items"]["item-00"]
        assert (record["attempts"], record["paid"]) == (2, 6)
        assert sim.stats.creates == 6


async def test_a_refused_key_prints_no_never_retrieved_task_exceptions(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", [f"p{n}" for n in range(12)])
    async with sim_factory(api_key="another-key-entirely", response_delay=0.2) as sim:
        code, _, err = await cli(run_args(path, tmp_path / "out", sim, "--concurrency", "12"))
    assert code == 3
    assert "never retrieved" not in err and "Traceback" not in err


async def test_a_failed_callback_bind_leaks_neither_runner_nor_socket():
    from batchgen.callbacks import CallbackReceiver

    async with CallbackReceiver("127.0.0.1", 0) as taken:
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(5):
            receiver = CallbackReceiver("127.0.0.1", taken.port)
            with pytest.raises(OSError):
                await receiver.start()
            assert receiver._runner is None
        assert len(os.listdir("/proc/self/fd")) == before


async def test_a_renamed_image_is_fsynced_before_the_ledger_vouches_for_it(sim_factory, tmp_path, monkeypatch):
    """A spy on the two calls (both still do their work): the folder's fsync comes before `succeeded`."""
    from batchgen import download

    order: list[str] = []
    real_fsync, real_succeeded = download.fsync_dir, Ledger.succeeded

    def fsync_spy(path: Path) -> None:
        order.append(f"fsync {Path(path).name}")
        real_fsync(path)

    def succeeded_spy(self, item_id, files, sha, **extra):
        order.append(f"succeeded {item_id}")
        real_succeeded(self, item_id, files, sha, **extra)

    monkeypatch.setattr(download, "fsync_dir", fsync_spy)
    monkeypatch.setattr(Ledger, "succeeded", succeeded_spy)
    out = tmp_path / "out"
    async with sim_factory(latency=0.05) as sim:
        await run(make_settings(manifest_of(tmp_path / "m.yaml", ["a"]), out, sim))
    assert order == ["fsync out", "succeeded item-00"]


async def test_a_deleted_image_is_noticed_by_status_and_fetched_again(sim_factory, tmp_path):
    out = tmp_path / "out"
    path = manifest_of(tmp_path / "m.yaml", ["a", "b"])
    async with sim_factory(latency=0.05) as sim:
        await run(make_settings(path, out, sim))
        (out / "item-00.png").unlink()
        doc = report.status(out)
        assert doc["missing_files"] == [{"id": "item-00", "files": ["item-00.png"]}]
        assert "missing item-00" in report.status_text(doc)
        stream = io.StringIO()
        outcome = await run(make_settings(path, out, sim), stream)
        assert outcome.exit_code == 0 and sim.stats.creates == 2  # fetched by its task id: no new charge
    assert "gone from" in stream.getvalue()
    assert_files_agree(out)
    assert report.status(out)["missing_files"] == []


def test_retry_policy_counts_calls_not_submissions():
    assert RetryPolicy().calls == 8 and not hasattr(RetryPolicy(), "attempts")


async def test_two_resumed_items_with_one_task_id_never_both_succeed(sim_factory, tmp_path):
    """A ledger from before the check: the second holder of a task id fails, the first keeps it."""
    out = tmp_path / "out"
    path = manifest_of(tmp_path / "m.yaml", ["a [sim:hold]", "b [sim:hold]"])
    async with sim_factory(latency=0.05) as sim:
        await run(make_settings(path, out, sim, task_timeout=0.3))
        doc = results(out)
        doc["items"]["item-01"]["task_id"] = doc["items"]["item-00"]["task_id"]
        (out / "results.json").write_text(json.dumps(doc))
        sim.release()
        outcome = await run(make_settings(path, out, sim))
    items = results(out)["items"]
    assert outcome.exit_code == 1 and items["item-00"]["state"] == "succeeded"
    assert items["item-01"]["state"] == "failed" and items["item-01"]["error"]["kind"] == "duplicate_task"


async def test_a_stop_before_the_engine_runs_submits_nothing(sim_factory, tmp_path):
    # A signal that arrives while the run is being set up (the simulator or the callback listener starting)
    # reaches the engine before its work exists: the work must then never start.
    from batchgen.client import Client, open_session
    from batchgen.engine import Engine
    from batchgen.ledger import Ledger
    from batchgen.plan import make_plan

    path = manifest_of(tmp_path / "m.yaml", ["a", "b"])
    out = tmp_path / "out"
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        settings = make_settings(path, out, sim)
        items = manifest.load(path)
        with Ledger.open(out, path.name) as book:
            book.track(items)
            async with open_session(settings.timeouts) as session:
                client = Client(session, sim.api_url, Secret(KEY), settings.timeouts)
                engine = Engine(
                    settings, items, make_plan(items, book.items, retry_failed=False), book, client, Reporter()
                )
                engine.stop("signal SIGTERM", signum=15)
                await asyncio.wait_for(engine.run(), 10)
        assert sim.stats.create_calls == 0 and engine.stop_signal == 15


async def test_an_in_doubt_item_that_got_a_task_id_since_is_not_warned_about_again(sim_factory, tmp_path):
    # In doubt once, then a task id (it failed for good): resubmitted with --retry-failed, there is nothing in
    # doubt about this submission, so no warning; the history (in_doubt 1) stays in the ledger.
    out = tmp_path / "out"
    path = manifest_of(tmp_path / "m.yaml", ["a [sim:fail-policy]"])
    async with sim_factory(latency=0.05, lost_answer_rate=1.0, lost_answer="drop") as sim:
        await run(make_settings(path, out, sim, limit=1))
    async with sim_factory(latency=0.05) as sim:
        stream = io.StringIO()
        assert (await run(make_settings(path, out, sim), stream)).exit_code == 1
        assert "in doubt" in stream.getvalue()  # the run that submits it again after the doubtful call
        stream = io.StringIO()
        assert (await run(make_settings(path, out, sim, retry_failed=True), stream)).exit_code == 1
        assert "in doubt" not in stream.getvalue()
    assert results(out)["items"]["item-00"]["in_doubt"] == 1
