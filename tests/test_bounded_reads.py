"""Every bounded read of a file goes through files.read_file (issue 19): the metrics file's carry-over, the key
file and the review's files keep their own limits, words and refusals (a link, a FIFO, a directory, too large)."""

from __future__ import annotations

import os

import pytest

from batchgen import config, files, report, review
from batchgen.errors import UsageError


def test_the_key_file_is_read_as_a_stream_bounded_and_a_directory_is_refused(tmp_path):
    read, write = os.pipe()  # `--api-key-file <(pass show key)`: a pipe, read as a stream
    os.write(write, b"sk-from-a-pipe\n")
    os.close(write)
    try:
        assert config.read_key({}, f"/dev/fd/{read}", []) == config.Secret("sk-from-a-pipe")
    finally:
        os.close(read)
    big = tmp_path / "big"
    big.write_bytes(b"k" * 5000)
    with pytest.raises(UsageError, match=f"--api-key-file {big}: more than 4096 bytes; a key file holds the key"):
        config.read_key({}, str(big), [])
    with pytest.raises(UsageError, match=f"--api-key-file {tmp_path}: cannot read it: Is a directory"):
        config.read_key({}, str(tmp_path), [])
    key = tmp_path / "key"
    key.write_text("sk-file\n")
    key.chmod(0o644)
    (tmp_path / "link").symlink_to(key)  # a key file may be a link (the user's own choice of file)
    warn: list[str] = []
    assert config.read_key({}, str(tmp_path / "link"), warn) == config.Secret("sk-file")
    assert warn == [
        f"--api-key-file {tmp_path / 'link'} can be read by others (mode 644); chmod 600 {tmp_path / 'link'}"
    ]


def test_the_previous_metrics_file_is_carried_over_only_from_a_regular_file_not_a_link(tmp_path):
    real = tmp_path / "real.prom"
    real.write_text('batchgen_last_success_timestamp{manifest="m.yaml"} 1700000000\n')
    warn: list[str] = []
    assert report._read_previous(real, warn) == {"batchgen_last_success_timestamp": 1700000000.0, "manifest": "m.yaml"}
    link = tmp_path / "link.prom"
    link.symlink_to(real)
    assert report._read_previous(link, warn) == {} and "cannot read the previous file" in warn[-1]
    fifo = tmp_path / "fifo.prom"
    os.mkfifo(fifo)  # never waits for a writer
    assert report._read_previous(fifo, warn) == {} and "not a regular file of at most 1 MiB" in warn[-1]
    assert report._read_previous(tmp_path, warn) == {} and "not a regular file of at most 1 MiB" in warn[-1]
    assert report._read_previous(tmp_path / "none.prom", warn) == {} and len(warn) == 3


def test_the_review_serves_only_regular_files_inside_dir_never_through_a_link(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    os.mkfifo(tmp_path / "c.png")
    assert review._read_inside(tmp_path, "a.png") == b"png"
    for name in ("b.png", "c.png", "..", "missing.png"):
        with pytest.raises(OSError):
            review._read_inside(tmp_path, name)


def test_read_file_refuses_a_fifo_at_once_unless_streaming_and_words_nothing_itself(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(files.NotRegular):
        files.read_file(fifo, 10)
    with pytest.raises(files.TooLarge):
        files.read_file("/dev/zero", 10, stream=True)
    assert files.read_bounded(fifo, 10, "the manifest") == "cannot read the manifest: not a regular file"
    assert files.read_bounded(tmp_path, 10, "the manifest") == "cannot read the manifest: a directory"
