"""Provenance (`--metadata`): the parameters of each image, beside it as `<image file name>.json` and, with
`png`, inside the PNG as an iTXt chunk.

The chunk is inserted before IEND byte for byte (no re-encoding: every other chunk and the pixels stay as
received), and never into a PNG that carries a C2PA manifest (a `caBX` chunk): adding a chunk would break its
signature, so such a file is kept exactly as received. JPEG outputs get the sidecar only.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from . import __version__
from .errors import DownloadError
from .files import write_atomically

Mode = Literal["none", "sidecar", "png"]
MODES: tuple[Mode, ...] = ("none", "sidecar", "png")
KEYWORD = "batchgen"  # the iTXt keyword (1-79 Latin-1 characters)
SIGNATURE = b"\x89PNG\r\n\x1a\n"
C2PA = b"caBX"  # the chunk type of a C2PA manifest store in a PNG


def document(
    *,
    item_id: str,
    request: dict[str, Any],
    task_id: str,
    created: float | None,
    completed: float | None,
    sha256_received: str,
    manifest: str,
    line: int,
) -> dict[str, Any]:
    """The text kept with an image: what was asked, of whom, when, and the image as received."""
    return {
        "id": item_id,
        "request": request,
        "model": request.get("model"),
        "seed": (request.get("input") or {}).get("seed"),
        "task_id": task_id,
        "service_times": {"created": created, "completed": completed},
        "sha256_received": sha256_received,
        "batchgen_version": __version__,
        "manifest": manifest,
        "line": line,
    }


def text_of(doc: dict[str, Any]) -> str:
    return json.dumps(doc, ensure_ascii=False, indent=1, sort_keys=True) + "\n"


def has_c2pa(data: bytes) -> bool:
    """Whether a PNG carries a caBX chunk (walked chunk by chunk, not searched for: pixel data may hold it)."""
    return C2PA in _chunk_types(data)


def _chunk_types(data: bytes) -> list[bytes]:
    types = []
    at = len(SIGNATURE)
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        types.append(kind)
        at += 12 + length
    return types


def with_itxt(data: bytes, text: str) -> bytes:
    """The PNG with one uncompressed iTXt chunk (keyword `batchgen`) inserted before IEND."""
    if not data.startswith(SIGNATURE) or not data.endswith(b"IEND\xaeB`\x82"):
        raise DownloadError("not a whole PNG: no text written into it", permanent=True)
    body = KEYWORD.encode("latin-1") + b"\x00\x00\x00" + b"\x00" + b"\x00" + text.encode("utf-8")
    chunk = struct.pack(">I", len(body)) + b"iTXt" + body + struct.pack(">I", zlib.crc32(b"iTXt" + body))
    end = len(data) - 12  # IEND: length 0, type, CRC
    return data[:end] + chunk + data[end:]


def read_png_text(path: Path) -> str | None:
    """The batchgen text in a PNG, read back with Pillow (None when there is none)."""
    with Image.open(path) as image:
        image.load()
        value = getattr(image, "text", {}).get(KEYWORD)
    return None if value is None else str(value)


def write_sidecar(image: Path, text: str, temp_dir: Path) -> Path:
    """`<image file name>.json`, written atomically and read back: it must parse, and be the text written."""
    sidecar = image.with_name(image.name + ".json")
    data = text.encode("utf-8")
    write_atomically(sidecar, data, temp_dir)
    if sidecar.read_bytes() != data:
        raise DownloadError(f"{sidecar} does not read back as written", permanent=False)
    json.loads(data)
    return sidecar


def sidecar_of(directory: Path, name: str) -> dict[str, Any] | None:
    """An image's sidecar document, when there is a readable one."""
    try:
        doc = json.loads((directory / f"{name}.json").read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
