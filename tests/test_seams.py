"""Promises kept where features meet (issue 16): names the file system refuses, temp names across subfolders,
wildcard files and the key, outside text on a terminal and a page, Unicode identity, a closed pipe, and what a
refetch or a killed report leaves behind. Each test here failed on the code before the issue."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from batchgen import ledger, manifest, sheet
from batchgen.errors import ManifestError
from batchgen.files import temp_name, write_failure

from .browser import chromium, needs_browser
from .helpers import BATCHGEN, KEY, batchgen, cli, finish, run_args, start


def validate(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return batchgen("validate", *args, cwd=cwd)


def grid(path: Path, values: int = 3, count: int = 1) -> Path:
    animals = ", ".join(f"a{n:02d}" for n in range(values))
    path.write_text(f"- id: zoo\n  prompt: 'a {{a}}'\n  matrix: {{a: [{animals}]}}\n  count: {count}\n", "utf-8")
    return path


# ---------------------------------------------------------------- 1. names the file system refuses (ATTACKS 1, 2)


async def test_a_name_over_255_bytes_with_its_suffixes_exits_2_before_anything_is_sent(sim_factory, tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("- id: fox\n  prompt: a fox\n", "utf-8")
    # fox.png fits (252 bytes), but its sidecar fox.png.json would not: paid, then refused on every run before.
    template = "L" * 245 + "{id}"
    async with sim_factory(api_key=KEY) as sim:
        for extra in (["--metadata", "sidecar"], ["--metadata", "sidecar", "--dry-run"]):
            code, _, stderr = await cli(run_args(path, tmp_path / "out", sim, "--name", template, *extra))
            assert code == 2, stderr
            assert f"{path}:1: item 'fox': --name: a file name of up to" in stderr and "allows 255" in stderr
            assert "free some space" not in stderr
        assert sim.stats.create_calls == 0
    checked = validate(str(path), "--name", template)
    assert checked.returncode == 2 and "item 'fox': --name: a file name of up to" in checked.stderr
    assert validate(str(path), "--name", "L" * 200 + "{id}").returncode == 0


def test_the_whole_path_is_counted_in_bytes_not_characters(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("- id: fox\n  prompt: a fox\n", "utf-8")
    deep = tmp_path.joinpath(*["€" * 80] * 17)  # a --out of 1,360 characters, but 4,080 bytes (+ tmp_path)
    assert len(str(deep)) < 4095 < len(os.fsencode(deep))
    checked = validate(str(path), "--out", str(deep))
    assert checked.returncode == 2 and "would be over 4,095 bytes" in checked.stderr, checked.stderr
    assert validate(str(path), "--out", str(tmp_path / ("€" * 80))).returncode == 0


async def test_a_deep_name_whose_flattened_temp_name_was_too_long_is_written(sim_factory, tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("- id: fox\n  prompt: a fox\n", "utf-8")
    out = tmp_path / "out"
    template = "d" * 120 + "/" + "L" * 200 + "{id}"  # each part fits; the old temp name joined them: 330 bytes
    async with sim_factory(api_key=KEY) as sim:
        code, _, stderr = await cli(run_args(path, out, sim, "--name", template, "--metadata", "sidecar"))
    assert code == 0, stderr
    name = "d" * 120 + "/" + "L" * 200 + "fox.png"
    assert ledger.load(out).items["fox"]["files"] == [name]
    assert (out / name).is_file() and (out / f"{name}.json").is_file()
    assert not [p for p in (out / ".batchgen" / "tmp").iterdir()]  # nothing left behind
    # The contact sheet's thumbnail of it (the name flattened and quoted: over 255 bytes) has a short name too.
    page = sheet.write_report(out).read_text()
    entry = json.loads(page.split('id="sheet-data">')[1].split("</script>")[0])["items"][0]
    assert entry["thumb"] and len(entry["thumb"].rsplit("/", 1)[1].encode()) <= 220


async def test_a_folder_at_a_sidecars_name_stops_the_run_saying_so_and_the_rerun_pays_nothing(sim_factory, tmp_path):
    """ATTACKS 1: a write that fails after paying, for a reason that is not the disk's space."""
    path = tmp_path / "m.yaml"
    path.write_text("- id: fox\n  prompt: a fox\n", "utf-8")
    out = tmp_path / "out"
    (out / "fox.png.json").mkdir(parents=True)
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        code, _, stderr = await cli(run_args(path, out, sim, "--metadata", "sidecar"))
        assert code == 5 and "free some space" not in stderr, stderr
        assert "fox.png.json" in stderr and "fix this and rerun" in stderr
        (out / "fox.png.json").rmdir()
        code, _, stderr = await cli(run_args(path, out, sim, "--metadata", "sidecar"))
        assert code == 0 and sim.stats.create_calls == 1, stderr
    assert (out / "fox.png.json").is_file()


def test_a_name_the_file_system_refuses_at_write_time_never_blames_the_disk(tmp_path):
    try:
        os.open(tmp_path / ("x" * 300), os.O_WRONLY | os.O_CREAT)
    except OSError as exc:
        assert exc.errno == errno.ENAMETOOLONG
        message = str(write_failure(tmp_path, "fox", exc))
    assert "free some space" not in message and "shorter --name" in message and "item 'fox'" in message
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert "free some space" in str(write_failure(tmp_path, "fox", full))


# ---------------------------------------------------------------- 2. temp names under concurrency (ATTACKS 9)


def test_temp_names_are_unique_per_final_path_and_short(tmp_path):
    one, two = temp_name(tmp_path / "a" / "1.png.json"), temp_name(tmp_path / "b" / "1.png.json")
    assert one.split(".")[-4] != two.split(".")[-4]  # the hash of the whole path differs
    assert temp_name(tmp_path / "a" / "1.png.json") != one  # two writers of one path: two temp files
    assert len(temp_name(tmp_path / ("é" * 120)).encode()) < 100


async def test_sidecars_in_twenty_subfolders_at_once_never_collide(sim_factory, tmp_path):
    path = grid(tmp_path / "g.yaml", values=20, count=2)
    out = tmp_path / "out"
    async with sim_factory(api_key=KEY, latency=0.05, jitter=0.0) as sim:
        code, _, stderr = await cli(run_args(path, out, sim, "--name", "{a}/{copy}", "--metadata", "sidecar"))
    assert code == 0, stderr
    for n in range(20):
        for copy in (1, 2):
            assert json.loads((out / f"a{n:02d}" / f"{copy}.png.json").read_text())["manifest"] == "g.yaml"


# ---------------------------------------------------------------- 3. wildcard files (ATTACKS 3, 4, 5)
# (the key file as a wildcard file: test_key_leaks.py)


@pytest.mark.parametrize("where", ["absolute", "dotdot", "link"])
def test_a_wildcard_file_outside_the_manifests_folder_is_refused_unread(tmp_path, where):
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2-line\n", "utf-8")
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "link.txt").symlink_to(secret)
    name = {"absolute": str(secret), "dotdot": "../secret.txt", "link": "link.txt"}[where]
    path = folder / "m.yaml"
    path.write_text(f"- id: z\n  prompt: 'a {{x}}'\n  matrix: {{x: {{file: {name}}}}}\n", "utf-8")
    checked = validate(str(path))
    assert checked.returncode == 2 and "a wildcard file is one in the manifest's folder" in checked.stderr
    assert "hunter2" not in checked.stdout + checked.stderr
    (folder / "inside").mkdir()
    (folder / "inside" / "ok.txt").write_text("fox\nowl\n", "utf-8")
    path.write_text("- id: z\n  prompt: 'a {x}'\n  matrix: {x: {file: inside/ok.txt}}\n", "utf-8")
    assert len(manifest.load(path)) == 2


# ---------------------------------------------------------------- 4. outside text on a terminal (ATTACKS 6)

HOSTILE = "\x1b]0;pwned\x07\x1b[2J\rbatchgen: forged line\n2026-01-01 00:00:00 batchgen: all good \x9b31m\u202e"


async def test_a_hostile_failmsg_is_shown_escaped_in_logs_and_status(sim_factory, tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("- id: bad\n  prompt: 'a [sim:fail-policy]'\n- id: ok\n  prompt: fine\n", "utf-8")
    out = tmp_path / "out"
    async with sim_factory(api_key=KEY, latency=0.05, fail_message=HOSTILE) as sim:
        code, _, stderr = await cli(run_args(path, out, sim))
        assert code == 1, stderr
        code, _, json_log = await cli(run_args(path, tmp_path / "j", sim, "--log-format", "json"))
        assert code == 1
    for text in (stderr,):
        assert not any(c in text for c in "\x1b\x07\r\x9b\u202e")
        assert all(line[:4].isdigit() for line in text.splitlines())  # one record, one line: none forged
        assert "\\x1b]0;pwned\\x07" in text and "\\rbatchgen: forged line\\n2026" in text
    status = subprocess.run([*BATCHGEN, "status", str(out)], capture_output=True, text=True, check=True)
    assert not any(c in status.stdout for c in "\x1b\x07\r\x9b\u202e") and "\\x1b[2J" in status.stdout
    assert "forged line" in next(line for line in status.stdout.splitlines() if "failed  bad" in line)
    records = [json.loads(line) for line in json_log.splitlines()]  # valid JSON, one object a line
    assert any(HOSTILE in r.get("msg", "") for r in records)
    assert not any(c in json_log for c in "\x1b\x07\r\x9b\u202e")


def test_validate_shows_a_hostile_file_name_escaped(tmp_path):
    path = tmp_path / "m\x1b[2J\u202e.yaml"
    path.write_text("- id: a\n  prompt: p\n  seed: 0\n", "utf-8")
    checked = validate(str(path))
    assert checked.returncode == 2 and "\\x1b[2J\\u202e.yaml:1: item 'a': seed:" in checked.stderr
    assert "\x1b" not in checked.stderr and "\u202e" not in checked.stderr


@needs_browser
async def test_the_contact_sheet_isolates_bidirectional_text(sim_factory, tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text('- id: rtl\n  prompt: "a fox \\u202e in the snow"\n- id: calm\n  prompt: an owl\n', "utf-8")
    out = tmp_path / "out"
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        code, _, stderr = await cli(run_args(path, out, sim))
    assert code == 0, stderr
    url = sheet.write_report(out).as_uri()
    async with chromium(tmp_path / "profile", 1000, 800) as page:
        await page.goto(url)
        await page.wait_for("document.querySelectorAll('.card').length === 2")
        isolated = await page.evaluate(
            "Array.from(document.querySelectorAll('.card .prompt, .card .id')).map(e => "
            "[getComputedStyle(e).unicodeBidi, e.dir])"
        )
    assert isolated and all(bidi == "isolate" and direction == "auto" for bidi, direction in isolated), isolated


# ---------------------------------------------------------------- 5. Unicode identity (ATTACKS 7)

NFC, NFD = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")


@pytest.mark.parametrize(
    "body",
    [
        f'- prompt: "{NFC}"\n- prompt: "{NFD}"\n',  # plain items without ids
        '- prompt: "fox"\n- prompt: "fox\\u200d"\n',
        '- prompt: "fox"\n- prompt: "fox "\n',
        "- id: z\n  prompt: 'a {a}'\n  matrix: {a: [fox, \"fox\\u200b\"]}\n",  # axis values
        f"- id: z\n  prompt: 'a {{a}}'\n  matrix: {{a: [{NFC}, {NFD}]}}\n",
        "- id: z\n  prompt: 'a {a}'\n  matrix: {a: [fox, \"fox \"]}\n",
        "- id: z\n  prompt: 'a {a}'\n  matrix: {a: [fox, \"\\ufefffox\"]}\n",
    ],
)
def test_values_equal_once_normalised_are_one_request(tmp_path, body):
    path = tmp_path / "m.yaml"
    path.write_text(body, "utf-8")
    with pytest.raises(ManifestError) as caught:
        manifest.load(path)
    assert len(caught.value.problems) == 1
    assert any(w in str(caught.value) for w in ("differ only by Unicode normalisation", "the same request"))


def test_what_is_sent_and_every_id_stay_as_written(tmp_path):
    path = tmp_path / "m.yaml"
    body = (
        f'- prompt: "{NFD}"\n- prompt: "fox\\u200d"\n- id: cafe\n  prompt: "{NFC} "\n'
        "- id: z\n  prompt: 'a {a}'\n  matrix: {a: [fox, owl, \"sea\\u200dhorse\", Café]}\n  count: 2\n"
    )
    path.write_text(body, "utf-8")
    items = manifest.load(path)
    # The ids the code before this issue gave these items (computed on main): unchanged.
    assert [item.id for item in items] == [
        "c04742e4c77a",
        "5bcc7ecc243b",
        "cafe",
        "z-fox",
        "z-fox-2",
        "z-owl",
        "z-owl-2",
        "z-sea_horse_dd014dee",
        "z-sea_horse_dd014dee-2",
        "z-Caf_73473dcc",
        "z-Caf_73473dcc-2",
    ]
    assert [item.input["prompt"] for item in items[:3]] == [NFD, "fox\u200d", f"{NFC} "]


# ---------------------------------------------------------------- 6. a closed pipe


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["--version"]])
def test_help_into_a_closed_pipe_prints_no_exception(tmp_path, args):
    command = " ".join([sys.executable, "-m", "batchgen", *args]) + " | true"
    done = subprocess.run(
        ["/bin/sh", "-c", command],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stderr == ""


# ---------------------------------------------------------------- 7. a refetch, a killed report (ATTACKS 11)


async def test_a_refetch_under_a_new_name_removes_the_old_sidecar(sim_factory, tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("- id: fox\n  prompt: a fox\n", "utf-8")
    out = tmp_path / "out"
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        code, _, stderr = await cli(run_args(path, out, sim, "--metadata", "sidecar"))
        assert code == 0 and (out / "fox.png.json").is_file(), stderr
        (out / "fox.png").unlink()
        code, _, stderr = await cli(run_args(path, out, sim, "--metadata", "sidecar", "--name", "new-{id}"))
        assert code == 0, stderr
        assert sim.stats.create_calls == 1  # fetched again by its task id, not paid again
    assert ledger.load(out).items["fox"]["files"] == ["new-fox.png"]
    assert (out / "new-fox.png.json").is_file() and not (out / "fox.png.json").exists()
    assert "files_before" not in ledger.load(out).items["fox"]


async def test_thumbnail_temps_left_by_a_killed_report_are_cleaned_by_the_next(sim_factory, tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("- id: fox\n  prompt: a fox\n", "utf-8")
    out = tmp_path / "out"
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        code, _, stderr = await cli(run_args(path, out, sim))
    assert code == 0, stderr
    # A report killed by SIGKILL while it wrote a thumbnail: its temp file, named after its (now dead) pid.
    killed = await asyncio.create_subprocess_exec(
        *BATCHGEN, "report", str(out), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    killed.kill()
    await killed.wait()
    thumbs = out / ".batchgen" / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    stale = thumbs / f".fox.png.jpg.{killed.pid}.tmp"
    stale.write_bytes(b"\xff\xd8half a thumbnail")
    live = thumbs / f".owl.png.jpg.{os.getpid()}.tmp"  # a report writing at this moment: left alone
    live.write_bytes(b"")
    sheet.write_report(out)
    assert not stale.exists() and live.exists() and (thumbs / "fox.png.jpg").is_file()


# ---------------------------------------------------------------- the families tried against these features


async def test_report_never_hangs_on_a_fifo_at_an_image_or_a_sidecar_name(sim_factory, tmp_path):
    """ATTACKS 3: a FIFO (or a link to /dev/zero) where the ledger says an image or its sidecar is."""
    path = tmp_path / "m.yaml"
    path.write_text("- id: fox\n  prompt: a fox\n- id: owl\n  prompt: an owl\n", "utf-8")
    out = tmp_path / "out"
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        code, _, stderr = await cli(run_args(path, out, sim, "--metadata", "sidecar"))
    assert code == 0, stderr
    (out / "fox.png").unlink()
    os.mkfifo(out / "fox.png")
    (out / "owl.png.json").unlink()
    os.mkfifo(out / "owl.png.json")
    report = await start([*BATCHGEN, "report", str(out)])
    try:
        code, _, stderr = await asyncio.wait_for(finish(report), 30)
    finally:
        if report.returncode is None:  # hung on the FIFO: never left behind
            report.kill()
            await report.wait()
    assert code == 0, stderr
    page = (out / "index.html").read_text()
    data = json.loads(page.split('id="sheet-data">')[1].split("</script>")[0])
    owl = next(i for i in data["items"] if i["id"] == "owl")
    assert "sidecar" not in owl and owl["thumb"]
    assert "thumb" not in next(i for i in data["items"] if i["id"] == "fox")


def test_device_names_an_smb_share_refuses_are_refused_before_sending(tmp_path):
    """ATTACKS 2: `--name '{a}'` with a value `nul` writes nul.png: refused by NTFS/SMB after paying."""
    path = tmp_path / "m.yaml"
    path.write_text("- id: z\n  prompt: 'a {a}'\n  matrix: {a: [fox, nul, Com3]}\n", "utf-8")
    checked = validate(str(path), "--name", "{a}")
    assert checked.returncode == 2 and checked.stderr.count("a device name that Windows") == 2, checked.stderr
    assert validate(str(path), "--name", "x-{a}").returncode == 0


async def test_temp_files_a_sigkill_left_are_removed_by_the_next_writer(sim_factory, tmp_path):
    """ATTACKS 11: a SIGKILL between a temp file's creation and its rename, in `jobs install` and in a run."""
    dead = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await dead.wait()
    jobs = tmp_path / "jobs"
    done = subprocess.run([*BATCHGEN, "jobs", "install", str(jobs)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    parts = temp_name(jobs / "nightly.sh").split(".")
    parts[-3] = str(dead.pid)  # the same final path, written by a process that is gone
    stale = jobs / ".".join(parts)
    stale.write_text("half a script")
    done = subprocess.run([*BATCHGEN, "jobs", "install", str(jobs), "--force"], capture_output=True, check=False)
    assert done.returncode == 0 and not stale.exists()
    assert not [p for p in jobs.iterdir() if p.name.endswith(".tmp")]
    # A run's own temp folder: a sidecar's temp file left by a killed run is removed by the next run.
    path = tmp_path / "m.yaml"
    path.write_text("- id: fox\n  prompt: a fox\n", "utf-8")
    out = tmp_path / "out"
    left = out / ".batchgen" / "tmp" / f".fox.png.json.0123456789abcdef.{dead.pid}.1a2b3c4d.tmp"
    left.parent.mkdir(parents=True)
    left.write_text("{")
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        code, _, stderr = await cli(run_args(path, out, sim, "--metadata", "sidecar"))
    assert code == 0 and not left.exists(), stderr


async def test_a_name_planted_in_the_ledger_never_deletes_a_file_batchgen_did_not_write(sim_factory, tmp_path):
    """ATTACKS 8 (state that lies): a ledger edited by hand credits a user's file to an item fetched again."""
    path = tmp_path / "m.yaml"
    path.write_text("- id: fox\n  prompt: a fox\n", "utf-8")
    out = tmp_path / "out"
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        code, _, stderr = await cli(run_args(path, out, sim))
        assert code == 0, stderr
        (out / "notes.txt").write_text("the user's own notes")
        with ledger.Ledger.open(out, "m.yaml") as planted:
            planted.succeeded("fox", ["gone.png", "notes.txt"], ["0" * 64, "0" * 64])
        code, _, stderr = await cli(run_args(path, out, sim))  # gone.png is missing: fetched again
        assert code == 0 and sim.stats.create_calls == 1, stderr
        assert (out / "notes.txt").read_text() == "the user's own notes"
        assert ledger.load(out).items["fox"]["files"] == ["fox.png"]
        with ledger.Ledger.open(out, "m.yaml") as planted:
            planted.succeeded("fox", ["fox.png", "notes.txt"], ["0" * 64, "0" * 64])
        path.write_text("- id: fox\n  prompt: a red fox\n", "utf-8")  # a changed item: its old files go
        code, _, stderr = await cli(run_args(path, out, sim))
        assert code == 0 and sim.stats.create_calls == 2, stderr
    assert (out / "notes.txt").read_text() == "the user's own notes"


async def test_a_fifo_where_a_names_subfolder_goes_is_refused_before_paying(sim_factory, tmp_path):
    """ATTACKS 1 and 3: a paid, good image was failed for good (and paid again by --retry-failed) because a
    FIFO or a file stood where `--name '{a}/…'` makes a folder; now found before anything is sent."""
    path = grid(tmp_path / "g.yaml", values=2)
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "a01")
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        code, _, stderr = await cli(run_args(path, out, sim, "--name", "{a}/{id}"))
        assert code == 2 and sim.stats.create_calls == 0, stderr
    assert "item 'zoo-a01': --name: its folder 'a01' in" in stderr and "is not a folder" in stderr
    assert "zoo-a00" not in stderr
