"""The contact sheet in a real browser, the metrics file, and status output."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import sys
from pathlib import Path

import aiohttp
import pytest

from batchgen import report, runner
from batchgen.progress import Reporter

from .conftest import make_settings, manifest_of

HOSTILE = '<script>document.title="pwned"</script><img src=x onerror=alert(1)> & "quotes"'

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="headless Chromium is not installed (.ci/run installs it; CI fails rather than skips)",
)


async def _finished_directory(sim_factory, tmp_path: Path) -> Path:
    path = manifest_of(tmp_path / "m.yaml", ["a calm sea", HOSTILE, "rejected [sim:fail-policy]"])
    out = tmp_path / "out"
    async with sim_factory(latency=0.05) as sim:
        outcome = await runner.run(make_settings(path, out, sim), Reporter(stream=io.StringIO()))
    assert outcome.exit_code == 1
    return out


async def test_report_escapes_prompts_and_lists_failures(sim_factory, tmp_path):
    out = await _finished_directory(sim_factory, tmp_path)
    page = report.write_report(out).read_text()
    assert "<script>" not in page and "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;document.title=&quot;pwned&quot;&lt;/script&gt;" in page
    assert page.count("<figure>") == 2 and 'loading="lazy"' in page
    assert "item-02" in page and "task_policy" in page
    assert "http://" not in page and "https://" not in page  # nothing to fetch from a network
    thumbs = list((out / ".batchgen" / "thumbs").glob("*.jpg"))
    assert len(thumbs) == 2
    before = {p: p.stat().st_mtime_ns for p in thumbs}
    report.write_report(out)  # thumbnails are reused, not remade
    assert {p: p.stat().st_mtime_ns for p in thumbs} == before


@needs_browser
async def test_report_renders_in_headless_chromium(sim_factory, tmp_path):
    out = await _finished_directory(sim_factory, tmp_path)
    page = report.write_report(out)
    assert CHROMIUM, "CI must have Chromium: .ci/run installs it"
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,3000",
        "--remote-debugging-port=0",
        "--remote-debugging-address=127.0.0.1",
        "about:blank",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        endpoint = None
        while endpoint is None:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert line, "Chromium exited before it listened"
            if match := re.search(r"DevTools listening on (ws://\S+)", line):
                endpoint = match.group(1)
        port = endpoint.split(":")[2].split("/")[0]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                target = next(t for t in await response.json() if t["type"] == "page")
            async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                ids = iter(range(1, 1000))

                async def call(method: str, **params):
                    number = next(ids)
                    await ws.send_json({"id": number, "method": method, "params": params})
                    while True:
                        message = await asyncio.wait_for(ws.receive_json(), 30)
                        if message.get("id") == number:
                            assert "error" not in message, message
                            return message["result"]

                await call("Page.enable")
                await call("Page.navigate", url=page.as_uri())
                check = """new Promise(done => {
                    const ready = () => Array.from(document.images).every(i => i.complete);
                    const finish = () => done(JSON.stringify({
                        title: document.title,
                        widths: Array.from(document.images).map(i => i.naturalWidth),
                        text: document.body.innerText}));
                    const wait = () => ready() ? finish() : setTimeout(wait, 50);
                    wait();
                })"""
                for _ in range(100):
                    state = await call("Runtime.evaluate", expression="document.readyState", returnByValue=True)
                    if state["result"]["value"] == "complete":
                        break
                    await asyncio.sleep(0.05)
                result = await call("Runtime.evaluate", expression=check, awaitPromise=True, returnByValue=True)
                seen = json.loads(result["result"]["value"])
                shot = await call("Page.captureScreenshot", format="png")
    finally:
        proc.kill()
        await proc.wait()
    assert seen["title"] != "pwned" and len(seen["widths"]) == 2 and all(w > 0 for w in seen["widths"])
    assert HOSTILE in seen["text"]  # the prompt shows as text
    artefact = Path(os.environ.get("BATCHGEN_ARTEFACTS", tmp_path)) / "report.png"
    artefact.parent.mkdir(parents=True, exist_ok=True)
    import base64

    artefact.write_bytes(base64.b64decode(shot["data"]))


async def test_metrics_file_is_a_prometheus_textfile(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a", "b [sim:fail-policy]"])
    metrics = tmp_path / "metrics" / "batchgen.prom"
    async with sim_factory(api_key="k", latency=0.05) as sim:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "batchgen",
            "run",
            str(path),
            "--out",
            str(tmp_path / "out"),
            "--api-base",
            sim.api_url,
            "--poll-interval",
            "0.05",
            "--metrics-file",
            str(metrics),
            "--report",
            env={**os.environ, "BATCHGEN_API_KEY": "k"},
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
    assert proc.returncode == 1, err.decode()
    text = metrics.read_text()
    assert 'batchgen_items{manifest="m.yaml",state="succeeded"} 1' in text
    assert 'batchgen_items{manifest="m.yaml",state="failed"} 1' in text
    assert 'batchgen_last_run_paid_creates{manifest="m.yaml"} 2' in text
    assert 'batchgen_last_run_exit_code{manifest="m.yaml"} 1' in text
    assert (tmp_path / "out" / "index.html").exists()
    assert list(metrics.parent.iterdir()) == [metrics]  # written atomically: no temporary file left


async def test_status_text_names_each_failure_and_reason(sim_factory, tmp_path):
    out = await _finished_directory(sim_factory, tmp_path)
    text = report.status_text(report.status(out))
    assert "2 succeeded, 1 failed" in text
    assert "failed  item-02: task_policy: 400: Your prompt was flagged as violating content policies." in text
