"""A result file is verified whole before it gets its name, whether it came in under a MiB (verified from the
bytes held in memory, the very ones written) or over it (written a MiB at a time, verified from the file):
a damaged image of either size is refused and leaves nothing behind, a whole one is kept byte for byte."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import pytest
from aiohttp import web
from PIL import Image

from batchgen import download
from batchgen.client import Client, open_session
from batchgen.config import Secret, Timeouts
from batchgen.errors import DownloadError

from .helpers import serve

BIG = download.CHUNK * 2 + 12345  # written in pieces: verified from the file


def _png(size: int) -> bytes:
    """A PNG of about `size` bytes (random pixels do not compress)."""
    side = max(8, int((size / 3) ** 0.5))
    data = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(data, "PNG", compress_level=0)
    return data.getvalue()


def _bad_crc(png: bytes) -> bytes:
    """The same PNG with its last IDAT chunk's CRC wrong: the same length, every header intact."""
    at = png.rindex(b"IDAT")
    length = struct.unpack(">I", png[at - 4 : at])[0]
    crc_at = at + 4 + length
    wrong = struct.pack(">I", zlib.crc32(png[at:crc_at]) ^ 1)
    return png[:crc_at] + wrong + png[crc_at + 4 :]


def _jpeg_without_end() -> bytes:
    data = io.BytesIO()
    Image.new("RGB", (64, 64), "teal").save(data, "JPEG")
    return data.getvalue()[:-2]


def _padded_webp() -> bytes:
    data = io.BytesIO()
    Image.new("RGB", (64, 64), "teal").save(data, "WEBP")
    return data.getvalue() + b"\0" * 8


async def _fetch(tmp_path: Path, body: bytes, content_type: str) -> tuple[str, Path]:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type)

    out, temp = tmp_path / "out", tmp_path / "tmp"
    out.mkdir(exist_ok=True)
    temp.mkdir(exist_ok=True)
    async with serve(handler) as base, open_session(Timeouts()) as session:
        client = Client(session, base, Secret("k" * 32), Timeouts())
        name, _, _ = await download.fetch(
            client, f"{base}/r", directory=out, temp_dir=temp, stem="a", max_bytes=50 * 1024 * 1024
        )
    return name, out


@pytest.mark.parametrize("size", [20_000, BIG], ids=["under a MiB", "over a MiB"])
async def test_a_whole_png_is_kept_byte_for_byte(tmp_path, size):
    png = _png(size)
    assert (len(png) < download.CHUNK) == (size < download.CHUNK)
    name, out = await _fetch(tmp_path, png, "image/png")
    assert name == "a.png"
    assert (out / name).read_bytes() == png
    assert os.listdir(tmp_path / "tmp") == []


@pytest.mark.parametrize("size", [20_000, BIG], ids=["under a MiB", "over a MiB"])
async def test_a_png_with_a_wrong_checksum_is_refused_and_nothing_is_left(tmp_path, size):
    png = _bad_crc(_png(size))
    with pytest.raises(DownloadError, match="not a complete image"):
        await _fetch(tmp_path, png, "image/png")
    assert os.listdir(tmp_path / "out") == []
    assert os.listdir(tmp_path / "tmp") == []


@pytest.mark.parametrize(
    ("body", "content_type", "why"),
    [
        (_jpeg_without_end(), "image/jpeg", "the JPEG has no end marker"),
        (_padded_webp(), "image/webp", "the WebP is shorter or longer than it says"),
        (b"GIF89a" + b"\0" * 100, "image/png", "not a complete image"),
    ],
    ids=["jpeg without its end", "padded webp", "not an image"],
)
async def test_a_small_damaged_image_is_refused_from_memory_as_from_disk(tmp_path, body, content_type, why):
    with pytest.raises(DownloadError, match=why):
        await _fetch(tmp_path, body, content_type)
    assert os.listdir(tmp_path / "out") == []
    path = tmp_path / "held.bin"
    path.write_bytes(body)
    with pytest.raises(DownloadError, match=why):  # the file read back says the same
        download.verify_image(path)
    with pytest.raises(DownloadError, match=why):
        download.verify_image(path, body)
