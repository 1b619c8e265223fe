"""Hostile round 5: the writer's stamp that lets a resume skip the key-by-key duplicate check (ATTACKS 1 "money",
8 "learned state": the journal header is remembered state about a file anyone can change).

Real runs of the CLI in a subprocess against the simulator on loopback, real files, the simulator's count of
createTask calls as the proof that nothing was paid again."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from batchgen import snapshots
from batchgen.records import LEDGER_LIMIT

from .helpers import BATCHGEN, cli, manifest_of, results, run_args

PROMPTS = ["a fox in the snow", "an owl at dusk"]


async def _two_snapshots(sim, tmp_path: Path) -> Path:
    """A ledger of two paid items, two runs: the journals since previous.json hold the whole history."""
    out = tmp_path / "out"
    for n in range(2):
        code, _, err = await cli(run_args(manifest_of(tmp_path / "m.yaml", PROMPTS[: n + 1]), out, sim))
        assert code == 0, err
    assert all(r["state"] == "succeeded" for r in results(out)["items"].values())
    return out


def _header(out: Path) -> dict[str, object]:
    header: dict[str, object] = json.loads((out / ".batchgen" / "journal.jsonl").read_text().splitlines()[0])
    return header


async def test_an_in_place_edit_whose_time_is_set_back_is_still_read_key_by_key(sim_factory, tmp_path):
    # Tools that copy a time onto a file written in place — `touch -r`, `cp -p` (or --preserve=timestamps) onto
    # the existing results.json, `rsync -t --inplace`, shutil.copystat — keep inode, size and mtime: the stamp
    # matched, the pieces were read without the check, and json.loads kept the later of two "item-00": item-01
    # gone from the ledger, created (paid for) again. The kernel sets the change time (ctime) at every write and
    # no tool can set it back: in the stamp, such a file is read key by key (damaged: rebuilt from the journals).
    async with sim_factory() as sim:
        out = await _two_snapshots(sim, tmp_path)
        path = out / "results.json"
        before = path.stat()
        with path.open("r+b") as handle:  # in place: the same inode, the same size
            data = handle.read()
            handle.seek(0)
            handle.write(data.replace(b'"item-01": {', b'"item-00": {'))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # the time set back, as cp -p / touch -r do
        after = path.stat()
        assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
        with pytest.raises(snapshots.DuplicateKey, match='"item-00" appears twice'):
            snapshots.read(path, LEDGER_LIMIT, _header(out)["snapshot"])

        created = sim.stats.create_calls
        code, _, err = await cli(run_args(tmp_path / "m.yaml", out, sim))
        assert code == 0, err
        assert sim.stats.create_calls == created  # item-01 was not created (paid for) again
    assert 'the key "item-00" appears twice in "items"' in err
    assert {i: r["state"] for i, r in results(out)["items"].items()} == {"item-00": "succeeded", "item-01": "succeeded"}


@pytest.mark.parametrize(
    "forged",
    [
        '"x"',
        "10000000000000000000000000000000000000",
        "[[1, 2, 3]]",
        "[-1, -1, -1, -1]",
        "true",
        '{"ino": 1}',
        "null",
        "[1e400, 2, 3, 4]",
        '[1, 2, 3, "4"]',
    ],
)
async def test_a_header_stamp_of_any_type_neither_crashes_nor_is_trusted(sim_factory, tmp_path, forged):
    async with sim_factory() as sim:
        out = await _two_snapshots(sim, tmp_path)
        journal = out / ".batchgen" / "journal.jsonl"
        lines = journal.read_text().splitlines(keepends=True)
        base = _header(out)["base"]
        journal.write_text(f'{{"base": {base}, "snapshot": {forged}}}\n' + "".join(lines[1:]))
        path = out / "results.json"
        path.write_bytes(path.read_bytes().replace(b'"item-01": {', b'"item-00": {'))
        created = sim.stats.create_calls
        code, status, err = await cli([*BATCHGEN, "status", str(out)])
        assert code == 0 and "Traceback" not in err, err
        assert 'the key "item-00" appears twice in "items"' in status
        code, _, err = await cli(run_args(tmp_path / "m.yaml", out, sim))
        assert code == 0 and "Traceback" not in err, err
        assert sim.stats.create_calls == created
    assert {r["state"] for r in results(out)["items"].values()} == {"succeeded"}


_WRITER = """
import json, sys
from pathlib import Path
from batchgen.ledger import Ledger
out, n = Path(sys.argv[1]), int(sys.argv[2])
record = {"state": "succeeded", "task_id": None, "attempts": 1, "request": {"model": "m", "input": {"prompt": "p"}},
          "files": [], "sha256": [], "error": None, "submitted_at": None, "finished_at": None}
if not (out / "results.json").exists():  # (the layout batchgen writes comes with the first snapshot)
    items = {f"item-{i:05}": {**record, "task_id": f"t{i}", "files": [f"item-{i:05}.png"]} for i in range(n)}
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"version": 1, "manifest": "m.csv", "items": items}, indent=1))
ledger = Ledger.open(out, "m.csv")
for i in range(n):  # one decision journaled, then a snapshot (link, write, rename, journals turned, header)
    ledger.decided(f"item-{i:05}", "approved")
    ledger.snapshot()
ledger.close()
"""


@pytest.mark.parametrize("generation", [2, 3, 5, 8, 13, 21, 34])
async def test_a_kill_at_any_instant_of_the_snapshots_leaves_a_ledger_read_whole(tmp_path, generation):
    # SIGKILL while a 3,000-item ledger's snapshots follow one another (between the rename and the stamped header,
    # the journals turned, previous.json linked...): the next load reads every record once, the decisions journaled
    # before the kill all there (a prefix of the order they were made in), nothing lost, nothing reset.
    import asyncio
    import signal
    import sys

    from batchgen.records import load

    from .helpers import until

    out = tmp_path / "out"
    n = 3000
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _WRITER, str(out), str(n))
    journal = out / ".batchgen" / "journal.jsonl"

    def reached() -> bool:
        try:
            first = journal.read_bytes().split(b"\n", 1)[0]
            return json.loads(first).get("base", 0) >= generation
        except (OSError, ValueError):
            return False

    await until(reached, 60.0, every=0.001, what="the snapshots never reached that generation")
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    loaded = load(out)
    assert len(loaded.items) == n and {r["state"] for r in loaded.items.values()} == {"succeeded"}
    decided = [r.get("decision") == "approved" for r in (loaded.items[f"item-{i:05}"] for i in range(n))]
    made = decided.count(True)
    assert made >= generation - 1 and decided == [True] * made + [False] * (n - made)


_EDIT = 's/"item-00001": {/"item-00000": {/'  # one id made another's: the same length, the same size
_TOOLS = {
    "sed -i": f"sed -i '{_EDIT}' results.json",
    "cp -p onto it": f"sed '{_EDIT}' results.json > ../f && touch -r results.json ../f && cp -p ../f results.json",
    "touch -r after an in-place write": (
        f"cp -p results.json ../orig && sed '{_EDIT}' results.json > ../f && cat ../f > results.json "
        "&& touch -r ../orig results.json"
    ),
    "tar restore": (
        f"sed '{_EDIT}' results.json > ../e/results.json && touch -r results.json ../e/results.json "
        "&& tar --format=posix -C ../e -cf ../a.tar results.json && tar -xf ../a.tar"
    ),
    "python copy2 onto it": (
        f"sed '{_EDIT}' results.json > ../f && touch -r results.json ../f && "
        "python3 -c \"import shutil; shutil.copy2('../f', 'results.json')\""
    ),
}


@pytest.mark.parametrize("tool", list(_TOOLS))
def test_a_file_edited_by_common_tools_never_bears_the_writers_stamp(tmp_path, tool):
    # Each chain makes the same size and keeps (or sets back) the modification time; some keep the inode too (cp
    # -p, cat >, copy2 write into the existing file; tar may get the freed inode back). The change time in the
    # stamp tells every one of them from the file batchgen wrote: read key by key, the id twice is found.
    import subprocess
    import sys

    out = tmp_path / "out"
    (tmp_path / "e").mkdir()
    subprocess.run([sys.executable, "-c", _WRITER, str(out), "3"], check=True)
    path = out / "results.json"
    stamp = _header(out)["snapshot"]
    assert snapshots.stamp(path) == stamp
    size = path.stat().st_size
    subprocess.run(["sh", "-c", _TOOLS[tool]], cwd=out, check=True)
    assert path.stat().st_size == size and b'"item-00001": {' not in path.read_bytes()
    with pytest.raises(snapshots.DuplicateKey, match='"item-00000" appears twice'):
        snapshots.read(path, LEDGER_LIMIT, stamp)


@pytest.mark.parametrize(("signum", "after"), [(15, 1), (15, 5), (2, 9), (15, 14), (2, 18)])
async def test_a_signal_at_many_instants_of_the_file_work_pays_nothing_twice(sim_factory, tmp_path, signum, after):
    # SIGTERM or SIGINT while creates, journal flushes (their own thread, cancelled at the run's end), downloads
    # verified from memory and labelled in place (--metadata png) overlap: the rerun finishes the night with one
    # create per request, every image whole and labelled, no temp file left.
    import signal

    from PIL import Image

    from .helpers import check_directory, finish, start, until

    prompts = [f"a lamp number {n}" for n in range(20)]
    path = manifest_of(tmp_path / "m.yaml", prompts)
    out = tmp_path / "out"
    async with sim_factory(latency=0.05) as sim:
        proc = await start(run_args(path, out, sim, "--concurrency", "6", "--metadata", "png"))
        await until(lambda: sim.stats.creates >= after)
        proc.send_signal(signal.Signals(signum))
        code, _, err = await finish(proc)
        assert code in (0, 128 + signum) and "Traceback" not in err, err
        check_directory(out)
        code, _, err = await cli(run_args(path, out, sim, "--metadata", "png"))
        assert code == 0 and "Traceback" not in err, err
        assert sim.stats.creates == 20 and set(sim.stats.creates_by_request.values()) == {1}
    items = results(out)["items"]
    assert {r["state"] for r in items.values()} == {"succeeded"}
    for record in items.values():
        (name,) = record["files"]
        with Image.open(out / name) as image:
            assert "batchgen" in image.text or any("batchgen" in v for v in image.text.values()), image.text
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or ".part" in p.name]


def _png_of(size: int) -> bytes:
    """A whole PNG of exactly `size` bytes: a small image with a private ancillary chunk before IEND."""
    import io
    import struct
    import zlib

    from PIL import Image

    data = io.BytesIO()
    Image.new("RGB", (16, 16), "teal").save(data, "PNG")
    png = data.getvalue()
    end = png.rindex(b"IEND") - 4
    body = b"\0" * (size - len(png) - 12)
    chunk = struct.pack(">I", len(body)) + b"zzZz" + body + struct.pack(">I", zlib.crc32(b"zzZz" + body))
    made = png[:end] + chunk + png[end:]
    assert len(made) == size
    return made


@pytest.mark.parametrize("delta", [-1, 0, 1])
async def test_a_result_at_a_mib_and_one_byte_either_side_is_verified_as_from_the_file(tmp_path, delta):
    # Under a MiB the bytes held are verified (and written) in one piece; at a MiB they were written already and the
    # file is read back. Whole, cut short by one to four bytes, or one byte longer: the same answer as
    # verify_image gives of the file, and nothing left behind when refused. A PNG cut inside its IEND chunk's CRC
    # (every pixel there, the file not whole: a body without a Content-Length cut short) was kept as whole:
    # Pillow's verify stops reading after IEND's type.
    from aiohttp import web

    from batchgen import download
    from batchgen.client import Client, open_session
    from batchgen.config import Secret, Timeouts
    from batchgen.errors import DownloadError

    from .helpers import serve

    size = download.CHUNK + delta
    whole = _png_of(size)
    for n, body in enumerate((whole, whole[:-1], whole[:-4], whole + b"\0", _png_of(size - 1) + b"\0")):

        async def handler(_: web.Request, body: bytes = body) -> web.Response:
            return web.Response(body=body, content_type="image/png")

        out, temp = tmp_path / f"out{n}", tmp_path / f"tmp{n}"
        out.mkdir()
        temp.mkdir()
        held = tmp_path / f"held{n}.bin"
        held.write_bytes(body)
        try:
            expected: str | None = download.verify_image(held)
        except DownloadError:
            expected = None
        assert (expected is None) == (n in (1, 2)), n  # the two cut short (inside IEND's CRC) are not whole PNGs
        async with serve(handler) as base, open_session(Timeouts()) as session:
            client = Client(session, base, Secret("k" * 32), Timeouts())
            try:
                name, _, _ = await download.fetch(
                    client, f"{base}/r", directory=out, temp_dir=temp, stem="a", max_bytes=50 * 1024 * 1024
                )
            except DownloadError:
                assert expected is None, n
                assert os.listdir(out) == [] and os.listdir(temp) == []
            else:
                assert name == f"a.{expected}", n
                assert (out / name).read_bytes() == body
