"""The run engine, in-process, over real HTTP against the simulator on loopback."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from batchgen import ledger, snapshots
from batchgen.config import Secret

from .helpers import make_settings, manifest_of, results, run


def assert_verified_files(out: Path, doc: dict) -> None:
    for item_id, record in doc["items"].items():
        if record["state"] != "succeeded":
            continue
        assert record["files"], item_id
        for name in record["files"]:
            with Image.open(out / name) as image:
                image.load()
            assert name.startswith(item_id)
    assert not list((out / ".batchgen" / "tmp").glob("*")), "partial downloads left behind"


async def test_happy_path_writes_verified_images_and_the_ledger(sim_factory, tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("""\
defaults:
  aspect_ratio: "16:9"
items:
  - id: png-one
    prompt: "A harbour at dawn"
    seed: 42
  - id: jpeg-one
    prompt: "A lighthouse"
    output_format: jpg
    aspect_ratio: "9:16"
  - prompt: "No id at all"
    output_format: image/png
""")
    out = tmp_path / "out"
    async with sim_factory() as sim:
        outcome = await run(make_settings(path, out, sim))
        assert outcome.exit_code == 0
        assert sim.stats.creates == 3 and sim.stats.file_auth_headers == 0
    doc = results(out)
    assert doc["version"] == 1 and doc["manifest"] == "m.yaml"
    assert doc["counts"] == {"pending": 0, "submitted": 0, "succeeded": 3, "failed": 0}
    record = doc["items"]["png-one"]
    assert record["state"] == "succeeded" and record["attempts"] == 1 and record["error"] is None
    assert record["task_id"].startswith("task_imagen4-ultra_")
    assert record["request"] == {
        "model": "imagen4-ultra",
        "input": {"prompt": "A harbour at dawn", "seed": 42, "aspect_ratio": "widescreen_16_9"},
    }
    assert record["files"] == ["png-one.png"] and len(record["sha256"][0]) == 64
    assert record["submitted_at"] and record["finished_at"]
    assert doc["items"]["jpeg-one"]["files"] == ["jpeg-one.jpg"]
    with Image.open(out / "jpeg-one.jpg") as image:
        assert image.format == "JPEG" and image.width < image.height
    assert_verified_files(out, doc)
    # Folded into the snapshot at close: the fresh journal holds only its header (the snapshot it follows, and
    # that snapshot's stamp as its writer left it).
    header = {"base": doc["generation"], "snapshot": snapshots.stamp(out / "results.json")}
    assert json.loads((out / ".batchgen" / "journal.jsonl").read_bytes()) == header


async def test_rerun_of_a_finished_directory_sends_nothing(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a", "b"])
    out = tmp_path / "out"
    async with sim_factory() as sim:
        await run(make_settings(path, out, sim))
        before = (out / "results.json").read_bytes()
        calls = sim.stats.create_calls + sim.stats.polls
        outcome = await run(make_settings(path, out, sim))
        assert outcome.exit_code == 0
        assert sim.stats.create_calls + sim.stats.polls == calls
    assert (out / "results.json").read_bytes() == before


@pytest.mark.parametrize("envelope", ["relay", "business", "gateway", "empty", "mixed"])
async def test_capacity_429s_teach_the_in_flight_limit_and_stay_few(sim_factory, tmp_path, envelope):
    path = manifest_of(tmp_path / "m.yaml", [f"p{n}" for n in range(12)])
    out = tmp_path / "out"
    async with sim_factory(capacity=3, envelope_429=envelope, latency=0.2) as sim:
        outcome = await run(make_settings(path, out, sim, concurrency=6))
        assert outcome.exit_code == 0
        assert sim.stats.rate_limited > 0 and outcome.counters.rate_limited == sim.stats.rate_limited
        # Backing off: measured 5 in every envelope (the first burst, then the limit learned from it); a client
        # that retried each 429 on its own would see dozens.
        assert sim.stats.rate_limited <= 8
        assert sim.stats.creates == 12 and set(sim.stats.creates_by_request.values()) == {1}


async def test_the_in_flight_limit_is_never_exceeded(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", [f"p{n}" for n in range(12)])
    async with sim_factory(latency=0.2) as sim:  # no capacity at the service: only batchgen's own limit holds
        outcome = await run(make_settings(path, tmp_path / "out", sim, concurrency=3))
        assert outcome.exit_code == 0 and sim.stats.rate_limited == 0
        assert 0 < sim.stats.max_in_flight <= 3


async def test_rate_429_teaches_a_too_generous_create_rate(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", [f"p{n}" for n in range(10)])
    async with sim_factory(rate=(4, 0.5), latency=0.1) as sim:
        outcome = await run(make_settings(path, tmp_path / "out", sim, create_rate=(100, 1.0), concurrency=10))
        assert outcome.exit_code == 0
        assert sim.stats.rate_limited > 0 and sim.stats.creates == 10
        # Taught: measured 6-8 refusals in all (the window is cut to what the service accepted); a client that
        # kept its 100/s would be refused on most of its calls until the last item.
        assert sim.stats.rate_limited <= 15


async def test_server_errors_and_dropped_connections_are_retried(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", [f"p{n}" for n in range(8)])
    out = tmp_path / "out"
    async with sim_factory(error_rate=0.25, drop_rate=0.15, random_seed=7) as sim:
        outcome = await run(make_settings(path, out, sim))
        assert outcome.exit_code == 0, outcome
        assert sim.stats.errors_injected > 0 and sim.stats.dropped > 0
        assert sim.stats.creates == 8  # the simulator drops before creating: nothing was paid twice
        # Every createTask call after the first of an item is a retry, and is counted as one.
        assert outcome.counters.retries == sim.stats.create_calls - 8 > 0
    doc = results(out)
    assert_verified_files(out, doc)


async def test_http200_errors_are_read_from_the_body(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["fine", "broken [sim:reject]"])
    out = tmp_path / "out"
    async with sim_factory(http200_errors=True, error_rate=0.2, random_seed=3) as sim:
        outcome = await run(make_settings(path, out, sim))
    assert outcome.exit_code == 1
    doc = results(out)
    assert doc["items"]["item-00"]["state"] == "succeeded"
    assert doc["items"]["item-01"]["state"] == "failed"
    assert doc["items"]["item-01"]["error"] == {
        "kind": "rejected",
        "code": "422",
        "message": "upstream validation rejected the request",
    }


async def test_broken_downloads_are_retried_and_never_land_half_written(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", [f"p{n}" for n in range(8)])
    out = tmp_path / "out"
    async with sim_factory(truncate_rate=0.3, html_rate=0.1, expired_url_rate=0.2, random_seed=5) as sim:
        outcome = await run(make_settings(path, out, sim))
        assert_verified_files(out, results(out))
        for _ in range(3):  # an item whose every download broke stays submitted: a rerun fetches it
            if outcome.exit_code != 5:
                break
            assert results(out)["counts"]["submitted"] > 0
            outcome = await run(make_settings(path, out, sim))
        assert outcome.exit_code == 0
        assert sim.stats.creates == 8
        assert sim.stats.file_requests > 8  # some downloads did break, and were fetched again
    assert_verified_files(out, results(out))


async def test_status_query_429s_slow_polling_and_the_run_finishes(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", [f"p{n}" for n in range(6)])
    async with sim_factory(poll_limit=(3, 0.2), latency=0.2) as sim:
        outcome = await run(make_settings(path, tmp_path / "out", sim, poll_rate=1000.0))
        assert outcome.exit_code == 0 and sim.stats.creates == 6
        # Told a budget of 1000/s against a service that allows 15/s, batchgen met 429s, halved its budget on
        # each (at most once a second), and carried on: measured 20; without slowing down it would be hundreds.
        assert 0 < sim.stats.rate_limited <= 40
        assert outcome.counters.rate_limited == sim.stats.rate_limited


async def test_null_window_after_creation_is_not_a_failure(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a", "b", "c"])
    async with sim_factory(null_window=0.4, latency=0.1) as sim:
        outcome = await run(make_settings(path, tmp_path / "out", sim))
    assert outcome.exit_code == 0


async def test_failed_tasks_transient_are_resubmitted_policy_are_not(sim_factory, tmp_path):
    path = manifest_of(
        tmp_path / "m.yaml", ["once [sim:fail-transient:1]", "bad [sim:fail-policy]", "always [sim:fail-transient]"]
    )
    out = tmp_path / "out"
    async with sim_factory(latency=0.05) as sim:
        outcome = await run(make_settings(path, out, sim, max_attempts=2))
        assert outcome.exit_code == 1
        assert sim.stats.creates == 2 + 1 + 2
    items = results(out)["items"]
    assert items["item-00"]["state"] == "succeeded" and items["item-00"]["attempts"] == 2
    assert items["item-01"]["state"] == "failed" and items["item-01"]["attempts"] == 1
    assert items["item-01"]["error"]["kind"] == "task_policy" and items["item-01"]["error"]["code"] == "400"
    assert items["item-02"]["state"] == "failed" and items["item-02"]["attempts"] == 2
    assert items["item-02"]["error"] == {
        "kind": "task_transient",
        "code": "500",
        "message": "Internal Error, Please try again later.",
    }


async def test_bad_key_stops_the_run_with_exit_3(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a", "b"])
    out = tmp_path / "out"
    async with sim_factory(api_key="the-right-key") as sim:
        outcome = await run(make_settings(path, out, sim, api_key=Secret("wrong")))
        assert outcome.exit_code == 3 and sim.stats.creates == 0
    assert results(out)["counts"]["pending"] == 2


async def test_quota_stops_the_run_with_exit_3_and_state_saved(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", [f"p{n}" for n in range(6)])
    out = tmp_path / "out"
    async with sim_factory(quota=2, latency=0.5) as sim:
        outcome = await run(make_settings(path, out, sim, concurrency=1))
        assert outcome.exit_code == 3
        assert sim.stats.creates == 2
        assert results(out)["counts"]["pending"] == 4
        sim.config = replace(sim.config, quota=None)  # the account is topped up
        outcome = await run(make_settings(path, out, sim))
        assert outcome.exit_code == 0
        assert sim.stats.creates == 6 and set(sim.stats.creates_by_request.values()) == {1}


async def test_limit_leaves_the_rest_pending_and_resume_finishes(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", [f"p{n}" for n in range(7)])
    out = tmp_path / "out"
    async with sim_factory() as sim:
        first = await run(make_settings(path, out, sim, limit=3))
        assert first.exit_code == 5 and sim.stats.creates == 3
        assert results(out)["counts"] == {"pending": 4, "submitted": 0, "succeeded": 3, "failed": 0}
        second = await run(make_settings(path, out, sim))
        assert second.exit_code == 0 and sim.stats.creates == 7
        assert set(sim.stats.creates_by_request.values()) == {1}


async def test_task_timeout_keeps_the_task_and_resume_polls_it(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["quick", "slow [sim:slow]"])
    out = tmp_path / "out"
    async with sim_factory(latency=0.15, jitter=0) as sim:
        first = await run(make_settings(path, out, sim, task_timeout=0.6))
        assert first.exit_code == 5
        record = results(out)["items"]["item-01"]
        assert record["state"] == "submitted" and record["task_id"]
        second = await run(make_settings(path, out, sim))
        assert second.exit_code == 0
        assert sim.stats.creates == 2  # the slow one was polled by its task id, not submitted again
        assert results(out)["items"]["item-01"]["task_id"] == record["task_id"]


async def test_changed_request_is_generated_again_and_replaces_the_image(sim_factory, tmp_path):
    out = tmp_path / "out"
    async with sim_factory() as sim:
        await run(make_settings(manifest_of(tmp_path / "m.yaml", ["a", "b"]), out, sim))
        old = results(out)["items"]["item-01"]
        path = manifest_of(tmp_path / "m.yaml", ["a", "b, but blue"], output_format="jpeg")
        outcome = await run(make_settings(path, out, sim))
        assert outcome.exit_code == 0 and sim.stats.creates == 4  # both changed: the format is new for both
    new = results(out)["items"]["item-01"]
    assert new["request"]["input"]["prompt"] == "b, but blue" and new["files"] == ["item-01.jpg"]
    assert new["task_id"] != old["task_id"]
    assert not (out / "item-01.png").exists() and (out / "item-01.jpg").exists()


async def test_items_no_longer_in_the_manifest_are_kept_untouched(sim_factory, tmp_path):
    out = tmp_path / "out"
    async with sim_factory() as sim:
        await run(make_settings(manifest_of(tmp_path / "m.yaml", ["a", "b", "c"]), out, sim))
        kept = results(out)["items"]["item-02"]
        outcome = await run(make_settings(manifest_of(tmp_path / "m.yaml", ["a", "b"]), out, sim))
        assert outcome.exit_code == 0 and sim.stats.creates == 3
    doc = results(out)
    assert doc["items"]["item-02"] == kept and (out / "item-02.png").exists()
    assert doc["counts"]["succeeded"] == 2 and doc["not_in_manifest"] == ["item-02"]
    from batchgen import report

    status = report.status(out)
    assert status["not_in_manifest"] == ["item-02"] and status["counts"]["succeeded"] == 2


async def test_failed_items_are_left_alone_unless_retry_failed(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["ok", "bad [sim:fail-policy]"])
    out = tmp_path / "out"
    async with sim_factory(latency=0.05) as sim:
        assert (await run(make_settings(path, out, sim))).exit_code == 1
        assert (await run(make_settings(path, out, sim))).exit_code == 1
        assert sim.stats.creates == 2
        assert (await run(make_settings(path, out, sim, retry_failed=True))).exit_code == 1
        assert sim.stats.creates == 3


async def test_an_interrupted_create_is_marked_in_doubt_and_reported(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a"])
    out = tmp_path / "out"
    with ledger.Ledger.open(out, "m.yaml") as book:  # a run killed inside its createTask call
        from batchgen import manifest

        (item,) = manifest.load(path)
        book.start_submit(item.id, item.request)
    from batchgen import report

    async with sim_factory() as sim:
        outcome = await run(make_settings(path, out, sim))
        assert outcome.exit_code == 0 and sim.stats.creates == 1
    assert results(out)["items"]["item-00"]["in_doubt"] == 1
    assert report.status(out)["in_doubt"] == [{"id": "item-00", "times": 1}]


async def test_csv_manifest_runs_like_its_yaml_twin(sim_factory, tmp_path):
    root = Path(__file__).resolve().parents[1] / "sample_manifests"
    out = tmp_path / "out"
    async with sim_factory() as sim:
        outcome = await run(make_settings(root / "demo.csv", out, sim))
        assert outcome.exit_code == 0 and sim.stats.creates == 8
        outcome = await run(make_settings(root / "demo.yaml", out, sim, adopt_ledger=True))  # the same requests
        assert outcome.exit_code == 0 and sim.stats.creates == 8
    doc = results(out)
    assert sorted(f for r in doc["items"].values() for f in r["files"]) == sorted(
        p.name for p in out.iterdir() if p.suffix in (".png", ".jpg")
    )
    assert {p.suffix for p in out.iterdir() if p.is_file() and p.name != "results.json"} == {".png", ".jpg"}
