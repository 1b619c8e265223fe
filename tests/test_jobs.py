"""The ready-to-install jobs: nightly.sh under cron's bare environment, twice at once, and the unit files."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchgen import ledger, sheet

from .helpers import BATCHGEN, HOOK, INJECT, KEY, manifest_of, until

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


async def nightly(settings: Path, *, umask: int = 0o022) -> asyncio.subprocess.Process:
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
        umask=umask,
    )


async def test_nightly_runs_under_a_bare_environment(sim_factory, tmp_path):
    manifest = manifest_of(tmp_path / "m.yaml", ["a", "b", "c [sim:fail-policy]"])
    metrics = tmp_path / "textfile" / "batchgen.prom"
    metrics.parent.mkdir()  # node_exporter's textfile folder exists: batchgen creates only the file
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        settings = env_file(tmp_path, sim, manifest, str(tmp_path / "images"), BATCHGEN_METRICS_FILE=str(metrics))
        proc = await nightly(settings, umask=0o077)  # whatever the umask cron gives, outputs are for sharing
        out, err = await proc.communicate()
    assert proc.returncode == 1, (out, err)  # batchgen's own exit code: one item failed for good
    assert out == b"" and err == b""  # a normal night: cron mails nothing
    images = tmp_path / "images"
    assert sorted(p.name for p in images.glob("*.png")) == ["item-00.png", "item-01.png"]
    dated = images / f"index-{time.strftime('%Y-%m-%d')}.html"  # local time, as cron's
    assert (images / "index.html").exists() and dated.read_bytes() == (images / "index.html").read_bytes()
    for path in [*images.glob("*.png"), images / "results.json", images / "index.html", dated, metrics]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE(images.stat().st_mode) == 0o755
    figures = sheet.last_run_figures(images)  # the run kept its figures for the contact sheet's header
    assert figures is not None and figures["exit_code"] == 1 and figures["paid_creates"] == 3
    log = (tmp_path / "logs" / "nightly.log").read_text()
    assert "2 succeeded, 1 failed" in log and log.rstrip().endswith("exit 1")
    assert "\r" not in log and KEY not in log


async def test_a_night_cut_short_is_finished_by_the_next_without_paying_again(sim_factory, tmp_path):
    # The two held tasks stay generating until released: night 1 ends (--max-runtime) with them submitted.
    manifest = manifest_of(tmp_path / "m.yaml", ["quick", "held one [sim:hold]", "held two [sim:hold]"])
    async with sim_factory(api_key=KEY, latency=0.05, jitter=0) as sim:
        settings = env_file(tmp_path, sim, manifest, str(tmp_path / "images"), BATCHGEN_MAX_RUNTIME="1")
        night1 = await nightly(settings)
        out, err = await night1.communicate()
        assert night1.returncode == 5 and out == err == b""  # incomplete is a normal night: no mail
        items = ledger.load(tmp_path / "images").items
        held = [items[i] for i in ("item-01", "item-02")]
        assert all(r["state"] == "submitted" and r["task_id"] for r in held)
        assert sim.stats.creates == 3
        assert sim.release() == 2
        settings = env_file(tmp_path, sim, manifest, str(tmp_path / "images"))  # night 2 has time enough
        night2 = await nightly(settings)
        out, err = await night2.communicate()
        assert night2.returncode == 0 and out == err == b"", err
        assert sim.stats.creates == 3  # the two held tasks were polled by their ids, never paid for again
        assert set(sim.stats.creates_by_request.values()) == {1}
    items = ledger.load(tmp_path / "images").items
    assert {r["state"] for r in items.values()} == {"succeeded"}


@pytest.mark.parametrize(
    ("case", "code", "said"),
    [
        ("bad manifest", 2, "exit 2: a broken manifest or settings"),
        ("key refused", 3, "exit 3: the service refused the key or the quota; the run stopped"),
        ("no batchgen", 127, "exit 127: cannot run"),
        ("dated folder", 2, "has a date pattern or a shell expansion (not expanded here); use one fixed folder"),
        # the env file is data: `$(date)` in it is neither run nor expanded, so it is seen and refused
        ("command substitution", 2, "img-$(date +%Y-%m-%d) has a date pattern or a shell expansion"),
        ("log is a folder", 2, "cannot write the log BATCHGEN_LOG="),
        ("out cannot be made", 2, "cannot create the output folder BATCHGEN_OUT="),
        ("a bug", 70, "exit 70: a bug in batchgen; the traceback is in"),
    ],
)
async def test_a_night_that_needs_a_person_prints_one_line(sim_factory, tmp_path, case, code, said):
    manifest = manifest_of(tmp_path / "m.yaml", ["a"])
    extra: dict[str, str] = {}
    if case == "bad manifest":
        manifest.write_text("- prompt: a\n  seed: 0\n")
    elif case == "key refused":
        extra["BATCHGEN_API_BASE"] = ""  # set below, with a simulator that knows another key
    elif case == "no batchgen":
        extra["BATCHGEN_BIN"] = str(tmp_path / "no" / "batchgen")
    elif case == "a bug":  # the real CLI with one broken object injected (see test_operator.INJECT)
        buggy = tmp_path / "buggy.py"
        buggy.write_text(INJECT.format(error='RuntimeError("injected")'))
        wrapper = tmp_path / "batchgen-with-a-bug"
        wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {buggy} "$@"\n')
        wrapper.chmod(0o755)
        extra["BATCHGEN_BIN"] = str(wrapper)
    elif case == "log is a folder":
        extra["BATCHGEN_LOG"] = str(tmp_path)
    out_dir = str(tmp_path / "images" / ("%Y-%m-%d" if case == "dated folder" else ""))
    if case == "command substitution":
        out_dir = str(tmp_path / "img-$(date +%Y-%m-%d)")
    elif case == "out cannot be made":
        (tmp_path / "a-file").write_text("")
        out_dir = str(tmp_path / "a-file" / "images")
    async with sim_factory(api_key=KEY if case != "key refused" else "another-key-42", latency=0.05) as sim:
        extra.pop("BATCHGEN_API_BASE", None)
        proc = await nightly(env_file(tmp_path, sim, manifest, out_dir, **extra))
        out, err = await proc.communicate()
        assert sim.stats.creates == (1 if case == "a bug" else 0)
    assert proc.returncode == code and out == b""
    (line,) = err.decode().splitlines()
    assert line.startswith(f"batchgen nightly ({tmp_path / 'nightly.env'}): ") and said in line, line
    assert not any(p.name.startswith("img-2") for p in tmp_path.iterdir())  # no dated folder was made


async def test_two_nightly_runs_at_once_the_second_exits_4(sim_factory, tmp_path):
    # The first night is held open by construction: its task stays `generating` until the simulator is told.
    manifest = manifest_of(tmp_path / "m.yaml", ["a [sim:hold]", "b"])
    async with sim_factory(api_key=KEY) as sim:
        settings = env_file(tmp_path, sim, manifest, str(tmp_path / "images"))
        first = await nightly(settings)
        # the lock is taken before any create
        await until(lambda: sim.stats.creates, 60, what="the first night never submitted")
        second = await nightly(settings)
        _, second_err = await second.communicate()
        assert sim.release() == 1
        _, first_err = await first.communicate()
    assert second.returncode == 4 and first.returncode == 0
    assert first_err == b"" and "exit 4: the previous run still holds" in second_err.decode()
    assert len(second_err.decode().splitlines()) == 1
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


def test_the_unit_names_only_directories_it_creates_or_may_lack_and_its_installed_docs():
    service = (ROOT / "jobs" / "batchgen-nightly.service").read_text()
    settings = dict(line.split("=", 1) for line in service.splitlines() if "=" in line and not line.startswith("#"))
    assert settings["StateDirectory"] == "batchgen" and settings["LogsDirectory"] == "batchgen"
    assert settings["Environment"] == "XDG_STATE_HOME=%S/batchgen"
    # Every ReadWritePaths entry is optional ("-"): a missing one must not stop the unit from starting.
    assert all(path.startswith("-") for path in settings["ReadWritePaths"].split())
    # Documentation= names a file that `batchgen jobs install /opt/batchgen/jobs` writes.
    documented = Path(settings["Documentation"].removeprefix("file:"))
    assert documented.parent == Path("/opt/batchgen/jobs") and (ROOT / "jobs" / documented.name).exists()
    example = (ROOT / "jobs" / "nightly.env.example").read_text()
    assert "BATCHGEN_OUT=/var/lib/batchgen/" in example and "BATCHGEN_LOG=/var/log/batchgen/" in example


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_unit_is_valid_and_hardened(tmp_path):
    # `verify` checks that ExecStart= can run: point it at this tree's nightly.sh instead of /opt.
    unit = tmp_path / "batchgen-nightly.service"
    unit.write_text(
        (ROOT / "jobs" / "batchgen-nightly.service").read_text().replace("/opt/batchgen/jobs", str(NIGHTLY.parent))
    )
    shutil.copy(ROOT / "jobs" / "batchgen-nightly.timer", tmp_path)
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit), str(tmp_path / "batchgen-nightly.timer")],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    # Exposure 1.1 "OK" measured (8.5 "EXPOSED" before); fail above 2.0.
    security = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=yes",
            "--threshold=20",
            str(ROOT / "jobs" / "batchgen-nightly.service"),
        ],
        capture_output=True,
        text=True,
    )
    assert security.returncode == 0, security.stdout[-2000:]
    assert "OK" in security.stdout.splitlines()[-1]


def test_jobs_install_writes_the_shipped_files_and_keeps_a_users_edits(tmp_path):
    target = tmp_path / "jobs"
    proc = subprocess.run([*BATCHGEN, "jobs", "install", str(target)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    shipped = sorted(p.name for p in (ROOT / "jobs").iterdir())
    assert sorted(p.name for p in target.iterdir()) == shipped
    for name in shipped:
        assert (target / name).read_bytes() == (ROOT / "jobs" / name).read_bytes()
    assert os.access(target / "nightly.sh", os.X_OK)
    (target / "crontab").write_text("15 3 * * * my own line\n")
    again = subprocess.run([*BATCHGEN, "jobs", "install", str(target)], capture_output=True, text=True)
    assert again.returncode == 2 and "crontab already there and different" in again.stderr
    assert (target / "crontab").read_text() == "15 3 * * * my own line\n"
    forced = subprocess.run([*BATCHGEN, "jobs", "install", str(target), "--force"], capture_output=True, text=True)
    assert forced.returncode == 0 and (target / "crontab").read_bytes() == (ROOT / "jobs" / "crontab").read_bytes()
    samples = subprocess.run([*BATCHGEN, "jobs", "samples", str(tmp_path / "s")], capture_output=True, text=True)
    assert samples.returncode == 0
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(
        p.name for p in (ROOT / "sample_manifests").iterdir()
    )


async def test_nightly_passes_the_hook_as_one_argument_and_the_hook_never_gets_the_key(sim_factory, tmp_path):
    # nightly.sh exports every line of its env file, the key included when it is kept there: batchgen must
    # not hand it on to the hook. BATCHGEN_ON_FINISH is one argument, split by batchgen, never by a shell.

    hook = tmp_path / "hook with space.py"
    hook.write_text(HOOK)
    record = tmp_path / "hook.json"
    manifest = manifest_of(tmp_path / "m.yaml", ["a", "b [sim:fail-policy]"])
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        settings = env_file(
            tmp_path,
            sim,
            manifest,
            str(tmp_path / "images"),
            BATCHGEN_API_KEY=KEY,
            BATCHGEN_ON_FINISH=f"{sys.executable} '{hook}' {record} $(touch {tmp_path / 'pwned'})",
        )
        proc = await nightly(settings)
        out, err = await proc.communicate()
    assert proc.returncode == 1 and out == err == b"", err
    seen = json.loads(record.read_text())
    assert seen["argv"] == [str(hook), str(record), "$(touch", f"{tmp_path / 'pwned'})"]
    assert not (tmp_path / "pwned").exists()
    assert seen["env"]["BATCHGEN_EXIT"] == "1" and seen["doc"]["counts"]["failed"] == 1
    assert "BATCHGEN_API_KEY" not in seen["env"] and not any(KEY in v for v in seen["env"].values())


@pytest.mark.parametrize(
    ("error", "said"),
    [
        ("the proxy 127.0.0.1:3128 refused us (407 Proxy Authentication Required)", "exit 3: the proxy refused us"),
        ("the certificate of api.example.com does not verify: self-signed", "exit 3: a certificate did not verify"),
        ("the service refused the API key (401): invalid token", "exit 3: the service refused the key or the quota"),
        ("access refused", "exit 3: access refused: the key or the quota, or the way (a certificate, a proxy"),
    ],
)
def test_the_exit_3_line_names_who_refused(tmp_path, error, said):
    fake = tmp_path / "batchgen"  # stands in for batchgen: one error line in the log, exit 3
    fake.write_text(f"#!/bin/sh\necho 'batchgen: error: {error}; run stopped, state saved' >&2\nexit 3\n")
    fake.chmod(0o755)
    log = tmp_path / "nightly.log"
    log.write_text("=== an earlier night: error: the proxy refused us\n")  # only this run's lines count
    values = {
        "BATCHGEN_MANIFEST": str(tmp_path / "m.yaml"),
        "BATCHGEN_OUT": str(tmp_path / "images"),
        "BATCHGEN_BIN": str(fake),
        "BATCHGEN_LOG": str(log),
    }
    settings = tmp_path / "nightly.env"
    settings.write_text("".join(f'{k}="{v}"\n' for k, v in values.items()))
    proc = subprocess.run(["env", "-i", "/bin/sh", str(NIGHTLY), str(settings)], capture_output=True, text=True)
    assert proc.returncode == 3
    (line,) = proc.stderr.splitlines()
    assert said in line, line


def test_the_env_example_documents_every_variable_the_night_end_reads():
    example = (ROOT / "jobs" / "nightly.env.example").read_text()
    for name in ("ON_FINISH", "NOTIFY", "NOTIFY_ON", "PING", "PROXY", "CA_BUNDLE", "MODELS_DIR"):
        assert f"# BATCHGEN_{name}=" in example, name
    script = NIGHTLY.read_text()
    assert '--on-finish "$BATCHGEN_ON_FINISH"' in script
