"""What a hostile tester found: inputs that read without end, operator mistakes that ended in a traceback (exit
70), a closed stderr, writes through symlinks. Each is a real subprocess on real files; every child runs under a
memory cap, so that a regression (an unbounded read of /dev/zero) fails the test instead of the machine."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from pathlib import Path

import pytest

from batchgen import ledger

from .helpers import KEY, ROOT, a_ledger, batchgen, cli, manifest_of, no_traceback, run_args


def offline_run(tmp_path: Path, *extra: str) -> list[str]:
    """`run` against a port nothing listens on: every case here must stop before contacting anything."""
    manifest = manifest_of(tmp_path / "m.yaml", ["a"])
    return ["run", str(manifest), "--out", str(tmp_path / "out"), "--api-base", "http://127.0.0.1:9", *extra]


# ---------------------------------------------------------------- 1. unbounded reads


@pytest.mark.parametrize("device", ["/dev/full", "/dev/zero"])
def test_a_metrics_file_that_is_a_device_is_refused_before_the_run(tmp_path, device):
    proc = batchgen(*offline_run(tmp_path, "--metrics-file", device))
    assert proc.returncode == 2, proc.stderr
    no_traceback(proc)
    assert f"--metrics-file {device}: it exists and is not a regular file" in proc.stderr
    assert stat.S_ISCHR(os.stat(device).st_mode)  # still the device: never replaced by a metrics file
    assert not (tmp_path / "out").exists()  # before the run: DIR not even created


def test_a_metrics_file_that_is_a_fifo_is_refused_and_never_opened(tmp_path):
    fifo = tmp_path / "batchgen.prom"
    os.mkfifo(fifo)
    proc = batchgen(*offline_run(tmp_path, "--metrics-file", str(fifo)))
    assert proc.returncode == 2 and "is not a regular file" in proc.stderr, proc.stderr
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    # a flag error still ends in the metrics step: it must neither wait on the FIFO nor replace it
    flag_error = batchgen(*offline_run(tmp_path, "--metrics-file", str(fifo), "--limit", "-1"))
    assert flag_error.returncode == 2, flag_error.stderr
    assert f"--metrics-file {fifo}: not written: it exists and is not a regular file" in flag_error.stderr
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_an_oversized_previous_metrics_file_is_not_carried_over_but_replaced(tmp_path):
    metrics = tmp_path / "batchgen.prom"
    head = 'batchgen_last_success_timestamp{manifest="m.yaml"} 1700000000\n'
    metrics.write_text(head + "# padding\n" * 200_000)  # 2 MB: not a metrics file batchgen wrote
    proc = batchgen(*offline_run(tmp_path, "--metrics-file", str(metrics), "--limit", "-1"))  # a flag error
    assert proc.returncode == 2, proc.stderr
    no_traceback(proc)
    assert "not a regular file of at most 1 MiB; no last success carried over" in proc.stderr
    text = metrics.read_text()
    assert len(text) < 10_000 and "batchgen_last_run_exit_code" in text
    assert "batchgen_last_success_timestamp" not in text


def test_a_metrics_file_in_a_missing_folder_is_refused_and_no_folder_is_made(tmp_path):
    metrics = tmp_path / "no" / "such" / "batchgen.prom"
    proc = batchgen(*offline_run(tmp_path, "--metrics-file", str(metrics)))
    assert proc.returncode == 2, proc.stderr
    assert f"its folder {metrics.parent} does not exist (batchgen creates only the file)" in proc.stderr
    assert not (tmp_path / "no").exists()


def test_a_key_file_of_dev_zero_is_a_clear_error(tmp_path):
    proc = batchgen(*offline_run(tmp_path, "--api-key-file", "/dev/zero"))
    assert proc.returncode == 2, proc.stderr
    no_traceback(proc)
    assert "--api-key-file /dev/zero: more than 4096 bytes" in proc.stderr


class FifoWriter:
    """A writer at the other end of a FIFO (what `<(pass show key)` gives batchgen): `data`, then `endless`
    zeros until the reader goes away."""

    def __init__(self, path: Path, data: bytes, *, endless: bool = False) -> None:
        self.path, self.data, self.endless = path, data, endless
        os.mkfifo(path)
        self.thread = threading.Thread(target=self._write, daemon=True)
        self.thread.start()

    def _write(self) -> None:
        fd = os.open(self.path, os.O_WRONLY)  # waits for the reader
        try:
            os.write(fd, self.data)
            while self.endless:
                os.write(fd, b"\0" * 65536)
        except BrokenPipeError:
            pass  # the reader stopped reading: what a bounded read does
        finally:
            os.close(fd)

    def join(self) -> None:
        if self.thread.is_alive():  # the child never opened it: open the read end so that the writer ends
            with contextlib.suppress(OSError):
                fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
                self.thread.join(10)
                os.close(fd)
        self.thread.join(10)
        assert not self.thread.is_alive()


def test_a_key_from_a_pipe_is_read(tmp_path):
    writer = FifoWriter(tmp_path / "key-pipe", b"sk-from-a-pipe-123\n")
    proc = batchgen(*offline_run(tmp_path, "--api-key-file", str(writer.path), "--dry-run"))
    writer.join()
    assert proc.returncode == 0, proc.stderr


def test_an_endless_pipe_as_key_file_is_read_bounded(tmp_path):
    writer = FifoWriter(tmp_path / "key-pipe", b"sk-", endless=True)
    proc = batchgen(*offline_run(tmp_path, "--api-key-file", str(writer.path), "--dry-run"))
    writer.join()
    assert proc.returncode == 2 and "more than 4096 bytes" in proc.stderr, proc.stderr


# ---------------------------------------------------------------- 2. operator errors: a message, exit 2


@pytest.mark.parametrize("price", ["1e999999", "-0", "1_000", "\u0663", "", " ", "0x10", "inf", "1.5e3", "+1"])
def test_prices_a_person_would_not_mean_are_refused(tmp_path, price):
    manifest = manifest_of(tmp_path / "m.yaml", ["a"])
    proc = batchgen("validate", str(manifest), "--price", price)
    assert proc.returncode == 2, proc.stderr
    no_traceback(proc)
    assert "--price: expected a price per image such as 0.04" in proc.stderr


@pytest.mark.parametrize("price", ["0.04", "12", ".5", "3."])
def test_plain_prices_are_accepted(tmp_path, price):
    manifest = manifest_of(tmp_path / "m.yaml", ["a", "b"])
    proc = batchgen("validate", str(manifest), "--price", price)
    assert proc.returncode == 0 and "at most 2 ×" in proc.stdout, proc.stderr


def test_a_huge_price_in_the_environment_is_a_usage_error_in_a_dry_run(tmp_path):
    proc = batchgen(*offline_run(tmp_path, "--dry-run"), extra_env={"BATCHGEN_PRICE": "1e999999"})
    assert proc.returncode == 2 and "BATCHGEN_PRICE: expected a price" in proc.stderr, proc.stderr
    no_traceback(proc)


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"sk-first\nsk-second\n", "the key holds a line break"),
        (b"sk-with\x07bell", "the character U+0007"),
        (b"sk-\xff\xfe-latin1", "not UTF-8 text"),
        (b"sk-caf\xc3\xa9-key", "the character U+00E9"),
    ],
)
def test_a_key_that_cannot_be_a_header_is_refused(tmp_path, content, said):
    key = tmp_path / "api-key"
    key.write_bytes(content)
    key.chmod(0o600)
    proc = batchgen(*offline_run(tmp_path, "--api-key-file", str(key)))
    assert proc.returncode == 2 and said in proc.stderr, proc.stderr
    no_traceback(proc)


def test_credentials_in_the_api_base_are_refused_and_not_echoed(tmp_path):
    manifest = manifest_of(tmp_path / "m.yaml", ["a"])
    proc = batchgen("run", str(manifest), "--out", str(tmp_path / "o"), "--api-base", "http://u:hunter22@127.0.0.1:9")
    assert proc.returncode == 2 and "credentials in the URL are refused" in proc.stderr, proc.stderr
    assert "hunter22" not in proc.stderr


def test_an_empty_out_is_refused(tmp_path):
    manifest = manifest_of(tmp_path / "m.yaml", ["a"])
    proc = batchgen("run", str(manifest), "--out", "", "--simulate", cwd=tmp_path)
    assert proc.returncode == 2 and "--out: expected a directory" in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.yaml"]


def test_jobs_install_into_a_file_or_a_dangling_symlink_is_a_usage_error(tmp_path):
    (tmp_path / "afile").write_text("")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for target, said in (("afile", "is a file, not a directory"), ("dangling", "is a symbolic link to nothing")):
        proc = batchgen("jobs", "install", str(tmp_path / target))
        assert proc.returncode == 2 and said in proc.stderr, proc.stderr
        no_traceback(proc)
    assert not (tmp_path / "nowhere").exists()


def test_status_to_a_closed_pipe_is_quiet_141(tmp_path):
    directory = a_ledger(tmp_path / "out")
    read, write = os.pipe()
    os.close(read)
    try:
        proc = batchgen("status", str(directory), stdout=write)
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


async def test_an_index_html_folder_is_one_error_line_and_the_run_keeps_its_outcome(sim_factory, tmp_path):
    manifest = manifest_of(tmp_path / "m.yaml", ["a"])
    out = tmp_path / "out"
    (out / "index.html").mkdir(parents=True)
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        code, _, stderr = await cli(run_args(manifest, out, sim, "--report"))
    assert code == 0, stderr
    assert "a bug in batchgen" not in stderr
    (line,) = [line for line in stderr.splitlines() if "contact sheet" in line]
    assert f"the contact sheet {out / 'index.html'} could not be written: Is a directory" in line
    proc = batchgen("report", str(out))
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert f"{out}/index.html: cannot write it: Is a directory" in line


# ---------------------------------------------------------------- 3. a closed stderr


async def test_a_run_with_stderr_closed_does_its_work(sim_factory, tmp_path):
    manifest = manifest_of(tmp_path / "m.yaml", ["a", "b"])
    out = tmp_path / "out"
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        code, stdout, _ = await cli(["/bin/sh", "-c", 'exec "$@" 2>&-', "sh", *run_args(manifest, out, sim)])
        assert sim.stats.creates == 2
    assert code == 0, stdout
    items = ledger.load(out).items
    assert {record["state"] for record in items.values()} == {"succeeded"}


# ---------------------------------------------------------------- 5. jobs install never writes through a symlink


def test_jobs_install_never_writes_through_a_symlink(tmp_path):
    target = tmp_path / "jobs"
    target.mkdir()
    elsewhere = tmp_path / "elsewhere.sh"
    (target / "nightly.sh").symlink_to(elsewhere)  # dangling: following it would create elsewhere.sh
    proc = batchgen("jobs", "install", str(target))
    assert proc.returncode == 2 and "nightly.sh already there and different" in proc.stderr, proc.stderr
    assert not elsewhere.exists()
    elsewhere.write_text("the user's own file\n")  # now the link points at a real file
    forced = batchgen("jobs", "install", str(target), "--force")
    assert forced.returncode == 0, forced.stderr
    assert elsewhere.read_text() == "the user's own file\n"  # the link itself was replaced
    installed = target / "nightly.sh"
    assert not installed.is_symlink() and installed.read_bytes() == (ROOT / "jobs" / "nightly.sh").read_bytes()
    assert stat.S_IMODE(installed.stat().st_mode) == 0o755
    assert not [p for p in target.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- 7. status while a run holds DIR


def test_status_while_a_run_holds_the_lock_says_a_run_is_in_progress(tmp_path):
    directory = a_ledger(tmp_path / "out")
    with ledger.Ledger.open(directory, "m.yaml"):  # this process is the run in progress
        proc = batchgen("status", str(directory))
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert f"a run is in progress (pid {os.getpid()})" in first and "updated never" not in first, first
    after = batchgen("status", str(directory))
    assert "a run is in progress" not in after.stdout
