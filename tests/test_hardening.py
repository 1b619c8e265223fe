"""Hostile inputs, hostile servers, corrupted state: nothing lost. (The ledger rebuilt, a full disk and the key
have a file each: test_rebuild.py, test_full_disk.py, test_key_leaks.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from batchgen import ledger, manifest
from batchgen.config import RetryPolicy, Timeouts
from batchgen.errors import LedgerError, ManifestError, UsageError

from .helpers import BATCHGEN, KEY, make_settings, manifest_of, results, run, serve

# ---------------------------------------------------------------- 1. hostile manifests

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**12), 10**12), st.floats(allow_nan=True), st.text(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
fieldish = st.sampled_from([*manifest.schema.ALL_FIELDS, "aspect-ratio", "", "<<", "items", "defaults"])
items = st.dictionaries(st.one_of(fieldish, st.text(max_size=10)), values, max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    document=st.one_of(
        st.lists(items, max_size=5),
        st.fixed_dictionaries({"items": st.lists(items, max_size=4)}, optional={"defaults": items}),
        values,
    )
)
def test_any_yaml_structure_gives_items_or_a_manifest_error(tmp_path_factory, document):
    import yaml

    path = tmp_path_factory.mktemp("h") / "m.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    _loads_or_manifest_error(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300), suffix=st.sampled_from([".yaml", ".csv"]))
def test_any_text_gives_items_or_a_manifest_error(tmp_path_factory, text, suffix):
    path = tmp_path_factory.mktemp("h") / f"m{suffix}"
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))  # lone surrogates make invalid UTF-8
    _loads_or_manifest_error(path)


def _loads_or_manifest_error(path: Path) -> None:
    try:
        loaded = manifest.load(path)
    except ManifestError as exc:
        assert exc.problems and all(p.file == str(path) for p in exc.problems)
        return
    assert loaded and all(manifest.ID_PATTERN.fullmatch(i.id) and i.input["prompt"].strip() for i in loaded)


@pytest.mark.parametrize(
    "content",
    [b"- prompt: a\n\tseed: 1\n", bytes(range(256)) * 1200, b"prompt\n" + b'"' + b"x" * 2_000_000 + b'"\n', b""],
)
def test_run_refuses_hostile_manifests_with_exit_2_in_bounded_memory(tmp_path, content):
    import resource

    path = tmp_path / ("m.csv" if content.startswith(b"prompt") else "m.yaml")
    path.write_bytes(content)
    limit = 1536 * 1024 * 1024  # address space: a few hundred MB of heap at most, beside the interpreter's own

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run(
        [*BATCHGEN, "run", str(path), "--out", str(tmp_path / "out"), "--api-base", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=cap,
        env={**os.environ, "BATCHGEN_API_KEY": KEY},
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and str(path) in proc.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- 2. hostile or broken file hosts

PNG = io.BytesIO()
Image.new("RGB", (64, 48), "teal").save(PNG, "PNG")
PNG_BYTES = PNG.getvalue()


@contextlib.asynccontextmanager
async def hostile_host():
    async def html(_: web.Request) -> web.Response:
        return web.Response(text="<html><body>Access denied</body></html>", content_type="text/html")

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            while True:
                await response.write(b"\0" * 65536)
        return response

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = len(PNG_BYTES)
        await response.prepare(request)
        await response.write(PNG_BYTES[:100])
        await asyncio.sleep(30)
        return response

    async def no_length(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(PNG_BYTES)
        await response.write_eof()
        return response

    async def to_file(_: web.Request) -> web.Response:
        raise web.HTTPFound("file:///etc/passwd")

    async def to_ftp(_: web.Request) -> web.Response:
        raise web.HTTPFound("ftp://127.0.0.1/x.png")

    async def image(_: web.Request) -> web.Response:
        return web.Response(body=PNG_BYTES, content_type="image/png")

    app = web.Application()
    for route, handler in [
        ("/html", html),
        ("/endless", endless),
        ("/stall", stall),
        ("/nolength", no_length),
        ("/to-file", to_file),
        ("/to-ftp", to_ftp),
        ("/{tail:.*}", image),
    ]:
        app.router.add_get(route, handler)
    async with serve(app) as base:
        yield base


@pytest.mark.parametrize(
    ("path", "outcome_state", "reason"),
    [
        ("/html", "submitted", "text/html"),
        ("/endless", "submitted", "limit"),
        ("/stall", "submitted", "stalled"),
        ("/to-file", "submitted", "download failed"),
        ("/to-ftp", "submitted", "download failed"),
        ("/nolength", "succeeded", None),
        ("/..%2F..%2Fescape.png", "succeeded", None),
        ("/../../outside.png", "succeeded", None),
    ],
)
async def test_hostile_result_hosts_never_write_outside_dir_or_half_files(
    sim_factory, tmp_path, path, outcome_state, reason
):
    manifest_path = manifest_of(tmp_path / "m.yaml", ["a"])
    out = tmp_path / "work" / "out"
    stream = io.StringIO()
    async with hostile_host() as host, sim_factory(latency=0.05, result_url=host + path) as sim:
        settings_ = make_settings(
            manifest_path,
            out,
            sim,
            max_image_bytes=1024 * 1024,
            timeouts=Timeouts(download_read=0.3, download_total=5),
            retry=RetryPolicy(calls=3, wait_initial=0.01, wait_max=0.05, wait_jitter=0.01),
        )
        outcome = await asyncio.wait_for(run(settings_, stream), 60)
    record = results(out)["items"]["item-00"]
    assert record["state"] == outcome_state
    assert outcome.exit_code == (0 if outcome_state == "succeeded" else 5)
    written = sorted(p.name for p in (tmp_path / "work").iterdir())
    assert written == ["out"]  # nothing beside DIR
    images = [p for p in out.iterdir() if p.suffix in (".png", ".jpg")]
    assert [p.name for p in images] == (["item-00.png"] if outcome_state == "succeeded" else [])
    assert not list((out / ".batchgen" / "tmp").iterdir())
    if reason:
        assert reason in stream.getvalue()


async def test_a_non_http_result_url_fails_the_item_with_its_reason(sim_factory, tmp_path):
    out = tmp_path / "out"
    async with sim_factory(latency=0.05, result_url="file:///etc/passwd") as sim:
        outcome = await run(make_settings(manifest_of(tmp_path / "m.yaml", ["a"]), out, sim))
    assert outcome.exit_code == 1
    error = results(out)["items"]["item-00"]["error"]
    assert error["kind"] == "bad_result" and "not http(s)" in error["message"]


# ---------------------------------------------------------------- 3. planted files


async def test_planted_symlinks_and_files_are_never_written_through_or_trusted(sim_factory, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (out / "item-00.png").symlink_to(victim)  # where an image will go
    (out / "item-01.png").write_bytes(b"not the picture")  # a regular file under an item's name
    async with sim_factory() as sim:
        outcome = await run(make_settings(manifest_of(tmp_path / "m.yaml", ["a", "b"]), out, sim))
        assert outcome.exit_code == 0 and sim.stats.creates == 2
    assert victim.read_text() == "precious"
    assert not (out / "item-00.png").is_symlink()
    import hashlib

    for item_id, record in results(out)["items"].items():
        data = (out / record["files"][0]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["sha256"][0], item_id


@pytest.mark.parametrize("planted", [".batchgen", ".batchgen/tmp"])
async def test_a_symlinked_state_folder_is_refused(sim_factory, tmp_path, planted):
    out = tmp_path / "out"
    (out / planted).parent.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / planted).symlink_to(elsewhere)
    async with sim_factory() as sim:
        with pytest.raises(UsageError, match="symbolic link"):
            await run(make_settings(manifest_of(tmp_path / "m.yaml", ["a"]), out, sim))
    assert not list(elsewhere.iterdir())


# ---------------------------------------------------------------- 4. corrupted state (rebuilt: test_rebuild.py)


def test_newer_ledger_and_other_manifest_are_refused(tmp_path):
    (tmp_path / "results.json").write_text('{"version": 9, "items": {}}')
    with pytest.raises(LedgerError, match="version 9"):
        ledger.Ledger.open(tmp_path, "m.yaml")
    (tmp_path / "results.json").write_text('{"version": 1, "manifest": "other.yaml", "items": {}}')
    with pytest.raises(LedgerError, match=r"was made for the manifest 'other\.yaml'"):
        ledger.Ledger.open(tmp_path, "m.yaml")
    with ledger.Ledger.open(tmp_path, "m.yaml", adopt=True):
        pass
    assert json.loads((tmp_path / "results.json").read_text())["manifest"] == "m.yaml"


# ---------------------------------------------------------------- 5. disk trouble: test_full_disk.py


# ---------------------------------------------------------------- 6. secrets: test_key_leaks.py


# ---------------------------------------------------------------- 7. service misbehaviour


@pytest.mark.parametrize("fault", ["no_task_id", "wrong_task", "no_urls", "bad_result_json"])
async def test_service_misbehaviour_gives_a_clear_item_state(sim_factory, tmp_path, fault):
    out = tmp_path / "out"
    path = manifest_of(tmp_path / "m.yaml", ["a"])
    async with sim_factory(latency=0.05, misreport=fault) as sim:
        stream = io.StringIO()
        outcome = await asyncio.wait_for(run(make_settings(path, out, sim), stream), 30)
        creates = sim.stats.creates
        polls = sim.stats.polls
    record_ = results(out)["items"]["item-00"]
    if fault == "no_task_id":  # the first create was paid but named no task: in doubt, and submitted again
        assert outcome.exit_code == 0 and creates == 2 and record_["in_doubt"] == 1
        assert "may have been created" in stream.getvalue()
    elif fault == "wrong_task":  # two answers about another task (which "failed") were not taken for this one
        assert outcome.exit_code == 0 and record_["state"] == "succeeded" and creates == 1 and polls >= 3
    else:
        assert outcome.exit_code == 1 and creates == 1
        assert record_["state"] == "failed" and record_["error"]["kind"] == "no_result"
        assert "the task succeeded but" in record_["error"]["message"]


@pytest.mark.parametrize(
    ("prompt", "knobs"),
    [("a", {"null_window": 3600}), ("a [sim:hold]", {})],
    ids=["recordInfo is null forever", "generating forever"],
)
async def test_null_forever_and_generating_forever_end_in_a_timeout_not_a_crash(sim_factory, tmp_path, prompt, knobs):
    out = tmp_path / "out"
    async with sim_factory(latency=0.05, **knobs) as sim:
        outcome = await run(make_settings(manifest_of(tmp_path / "m.yaml", [prompt]), out, sim, task_timeout=0.5))
        assert outcome.exit_code == 5 and sim.stats.creates == 1
        sim.release()
    record = results(out)["items"]["item-00"]
    assert record["state"] == "submitted" and record["task_id"]
