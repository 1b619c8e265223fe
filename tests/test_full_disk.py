"""A full disk (issue 19: one file for the theme): a run that meets it stops cleanly with exit 5 and the next
run resumes; a disk already full at the start sends nothing; a short journal write is a storage error and the
journal still loads; a status printed to a full device is one line and exit 5.

A real tmpfs of a few hundred kilobytes where the machine lets us mount one (the test is skipped elsewhere),
a real RLIMIT_FSIZE, a real /dev/full."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import textwrap

from PIL import Image

from batchgen import ledger
from batchgen.errors import StorageError

from .helpers import a_ledger, batchgen, cli, make_settings, manifest_of, run, run_args, small_disk

# ---------------------------------------------------------------- 1. a run meets a full disk


async def test_a_full_disk_stops_cleanly_and_the_next_run_resumes(sim_factory, tmp_path):
    with small_disk(tmp_path / "disk", "900k") as disk:
        out = disk / "out"
        path = manifest_of(tmp_path / "m.yaml", [f"p{n}" for n in range(10)])
        async with sim_factory(image_scale=0.15, latency=0.1) as sim:
            stream = io.StringIO()
            outcome = await run(make_settings(path, out, sim, concurrency=2), stream)
            assert outcome.exit_code == 5, stream.getvalue()
            assert "No space left on device" in stream.getvalue()
            ledger.load(out)  # the ledger is valid (items never submitted may be absent: the manifest has them)
            assert not list((out / ".batchgen" / "tmp").glob("*.part"))
            for image_path in out.glob("*.png"):
                with Image.open(image_path) as image:
                    image.load()
            subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
            outcome = await run(make_settings(path, out, sim))
            assert outcome.exit_code == 0
            items = ledger.load(out).items
            assert len(items) == 10 and {r["state"] for r in items.values()} == {"succeeded"}
            assert sim.stats.creates <= 10 + sum(r.get("in_doubt", 0) for r in items.values())


async def test_a_disk_already_full_at_start_is_exit_5_not_a_traceback(sim_factory, tmp_path):
    with small_disk(tmp_path / "disk", "64k") as disk:
        with contextlib.suppress(OSError):  # fills the 64k disk, then ENOSPC
            (disk / "filler").write_bytes(b"\0" * 1024 * 1024)
        path = manifest_of(tmp_path / "m.yaml", ["a"])
        async with sim_factory() as sim:
            code, _, err = await cli(run_args(path, disk / "out", sim))
            assert sim.stats.create_calls == 0
    assert code == 5 and "Traceback" not in err and "No space left" in err


# ---------------------------------------------------------------- 2. a short journal write


SHORT_WRITE = textwrap.dedent(
    """
    import os, resource, signal, sys
    from pathlib import Path
    from batchgen.errors import StorageError
    from batchgen.ledger import Ledger

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG / a short write instead of the signal
    book = Ledger.open(Path(sys.argv[1]), "m.yaml")
    book.start_submit("a", {"model": "imagen4-ultra", "input": {"prompt": "a"}})
    size = os.path.getsize(Path(sys.argv[1]) / ".batchgen" / "journal.jsonl")
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, resource.RLIM_INFINITY))
    try:
        book.submitted("a", "task_" + "x" * 500)  # a line longer than the 100 bytes left
    except StorageError as exc:
        print("storage error:", exc)
    try:
        book.submit_unsent("a")
    except StorageError:
        print("refused after")
    os._exit(0)  # no snapshot at close: the disk is still "full"
    """
)


def test_a_short_journal_write_is_a_storage_error_and_the_journal_still_loads(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", SHORT_WRITE, str(out)], capture_output=True, text=True, timeout=60, check=False
    )
    assert "storage error:" in proc.stdout and "refused after" in proc.stdout, proc.stderr
    assert StorageError.exit_code == 5
    loaded = ledger.load(out)  # whole lines only: the intent is there, the half task id is not
    assert loaded.items["a"].get("submitting") and loaded.items["a"]["task_id"] is None


# ---------------------------------------------------------------- 3. a full standard output


def test_status_to_a_full_disk_is_one_line_and_exit_5(tmp_path):
    directory = a_ledger(tmp_path / "out")
    with open("/dev/full", "w") as full:
        proc = batchgen("status", str(directory), stdout=full)
    assert proc.returncode == 5, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert "cannot write to standard output: No space left on device" in line
