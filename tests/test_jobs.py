"""The ready-to-install jobs: nightly.sh under cron's bare environment, twice at once, and the unit files."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from batchgen import report

from .conftest import KEY, manifest_of

ROOT = Path(__file__).resolve().parents[1]
NIGHTLY = ROOT / "jobs" / "nightly.sh"


def env_file(tmp_path: Path, sim, manifest: Path, out: str, **extra: str) -> Path:
    key_file = tmp_path / "api-key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    bin_dir = Path(sys.executable).parent  # the batchgen console script installed beside this Python
    values = {
        "BATCHGEN_MANIFEST": str(manifest),
        "BATCHGEN_OUT": out,
        "BATCHGEN_API_BASE": sim.api_url,
        "BATCHGEN_API_KEY_FILE": str(key_file),
        "BATCHGEN_BIN": str(bin_dir / "batchgen"),
        "BATCHGEN_LOG": str(tmp_path / "logs" / "nightly.log"),
        "BATCHGEN_EXTRA_ARGS": "--poll-interval 0.05 --create-rate 1000/1",
        **extra,
    }
    path = tmp_path / "nightly.env"
    path.write_text("".join(f"{k}={v!r}\n".replace("'", '"') for k, v in values.items()))
    return path


async def nightly(settings: Path) -> asyncio.subprocess.Process:
    # cron's environment: nothing but what env -i gives; no terminal; no standard input.
    return await asyncio.create_subprocess_exec(
        "env",
        "-i",
        "/bin/sh",
        str(NIGHTLY),
        str(settings),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_nightly_runs_under_a_bare_environment(sim_factory, tmp_path):
    manifest = manifest_of(tmp_path / "m.yaml", ["a", "b", "c [sim:fail-policy]"])
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        settings = env_file(tmp_path, sim, manifest, str(tmp_path / "images" / "%Y-%m-%d"))
        proc = await nightly(settings)
        out, err = await proc.communicate()
    assert proc.returncode == 1, (out, err)  # batchgen's own exit code: one item failed for good
    assert out == b"" and err == b""  # cron mails nothing
    (day,) = (tmp_path / "images").iterdir()
    assert day.name == time.strftime("%Y-%m-%d", time.gmtime())
    assert sorted(p.name for p in day.glob("*.png")) == ["item-00.png", "item-01.png"]
    assert (day / "index.html").exists()
    figures = report.last_run_figures(day)  # the run kept its figures for the contact sheet's header
    assert figures is not None and figures["exit_code"] == 1 and figures["paid_creates"] == 3
    log = (tmp_path / "logs" / "nightly.log").read_text()
    assert "2 succeeded, 1 failed" in log and log.rstrip().endswith("exit 1")
    assert "\r" not in log and KEY not in log


async def test_two_nightly_runs_at_once_the_second_exits_4(sim_factory, tmp_path):
    # The first night is held open by construction: its task stays `generating` until the simulator is told.
    manifest = manifest_of(tmp_path / "m.yaml", ["a [sim:hold]", "b"])
    async with sim_factory(api_key=KEY) as sim:
        settings = env_file(tmp_path, sim, manifest, str(tmp_path / "images"))
        first = await nightly(settings)
        deadline = time.monotonic() + 60
        while sim.stats.creates == 0:  # the lock is taken before any create
            assert time.monotonic() < deadline, "the first night never submitted"
            await asyncio.sleep(0.02)
        second = await nightly(settings)
        await second.communicate()
        assert sim.release() == 1
        await first.communicate()
    assert second.returncode == 4 and first.returncode == 0
    assert "in use by another batchgen run" in (tmp_path / "logs" / "nightly.log").read_text()


def test_missing_settings_file_is_exit_2():
    proc = subprocess.run(
        ["env", "-i", "/bin/sh", str(NIGHTLY), "/nonexistent/nightly.env"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "cannot read the settings file" in proc.stderr


def test_unit_files_let_batchgen_save_state_and_catch_up():
    service = (ROOT / "jobs" / "batchgen-nightly.service").read_text()
    timer = (ROOT / "jobs" / "batchgen-nightly.timer").read_text()
    assert "TimeoutStopSec=60" in service and "KillSignal=SIGTERM" in service
    assert "ExecStart=/opt/batchgen/jobs/nightly.sh" in service
    assert "Persistent=true" in timer and "OnCalendar=" in timer
    cron_lines = [
        line
        for line in (ROOT / "jobs" / "crontab").read_text().splitlines()
        if line and not line.startswith("#") and "=" not in line.split()[0]
    ]
    assert len(cron_lines) == 1 and len(cron_lines[0].split()) >= 6 and "nightly.sh" in cron_lines[0]
    assert os.access(NIGHTLY, os.X_OK)
