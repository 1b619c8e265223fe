"""Provenance (`--metadata`): the parameters of each image beside it as `<image file name>.json`, its
AI-generated label (xmp.py) as `<image file name>.xmp`, and with `png` both inside the image: the parameters as
a PNG iTXt chunk `batchgen` before the first IEND, the label as XMP (PNG, JPEG, WebP; see xmp.py).

Nothing is re-encoded: chunks are inserted byte for byte, every other byte stays as received (bytes after IEND
too). A file carrying C2PA data is never modified (any change breaks its signature). And the metadata step
never fails an image that was paid for and verified: a file it cannot label is kept as received, and the run
says so; the sidecars still hold everything.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import __version__, xmp
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
    """Whether an image carries C2PA data: a PNG `caBX` chunk, a JPEG APP11 JUMBF segment, a WebP `C2PA` chunk
    (walked chunk by chunk, not searched for: pixel data may hold the bytes)."""
    if data.startswith(SIGNATURE):
        try:
            return any(kind == C2PA for _, kind, _ in xmp.png_chunks(data))
        except ValueError:
            return C2PA in data  # a file that cannot be walked is never modified anyway: err on the safe side
    if data.startswith(b"\xff\xd8"):
        return xmp.jpeg_has_c2pa(data)
    return xmp.webp_has_c2pa(data)


@dataclass(frozen=True, slots=True)
class Label:
    """What --metadata puts into and beside one image: the JSON document (a PNG's `batchgen` iTXt), the XMP
    packet (the .xmp sidecar, PNG, WebP) and the packet cut to fit a JPEG (None: it cannot fit)."""

    text: str
    xmp: bytes
    jpeg_xmp: bytes | None


def label(doc: dict[str, Any], *, completed: float | None) -> Label:
    """The Label of one image from its document; the date is the service's completion time, else now."""
    request = doc["request"]
    prompt = str((request.get("input") or {}).get("prompt") or "")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(completed if completed else time.time()))
    build = {"model": str(request.get("model") or ""), "created": when}
    return Label(text_of(doc), xmp.packet(prompt=prompt, **build), xmp.fit_jpeg(prompt, build))


def embed(data: bytes, mark: Label) -> tuple[bytes, str | None]:
    """The image with the label inside, without re-encoding it; or the bytes as received and why (None: as
    intended, e.g. a file carrying C2PA data, which any change would break). Never raises for a good image:
    the metadata step must not fail an image that was paid for and verified."""
    if has_c2pa(data):
        return data, None
    try:
        if data.startswith(SIGNATURE):
            changed = _into_png(data, mark)
        elif data.startswith(b"\xff\xd8"):
            if mark.jpeg_xmp is None:
                return data, "the XMP packet does not fit a JPEG segment; it is in the .xmp sidecar"
            changed = xmp.jpeg_with_xmp(data, mark.jpeg_xmp) or data
        elif data[:4] == b"RIFF":
            changed = xmp.webp_with_xmp(data, mark.xmp) or data
        else:
            return data, "not a PNG, JPEG or WebP file"
    except ValueError as exc:
        return data, f"its structure could not be walked ({exc})"
    if changed is not data and (problem := _unreadable(changed)):
        return data, f"the labelled file did not verify ({problem})"
    return changed, None


def _into_png(data: bytes, mark: Label) -> bytes:
    """The XMP iTXt before the first IDAT (unless there is one), the `batchgen` iTXt before the first IEND.
    Everything else stays byte for byte, bytes after IEND (or a second IEND) included."""
    chunks = list(xmp.png_chunks(data))
    first_idat = next((at for at, kind, _ in chunks if kind == b"IDAT"), None)
    iend = chunks[-1][0]
    if first_idat is None:
        raise ValueError("the PNG has no IDAT chunk")
    xmp_chunk = b"" if xmp.has_png_xmp(data) else xmp.itxt(xmp.PNG_KEYWORD, mark.xmp)
    text_chunk = xmp.itxt(KEYWORD.encode("latin-1"), mark.text.encode("utf-8"))
    return data[:first_idat] + xmp_chunk + data[first_idat:iend] + text_chunk + data[iend:]


def _unreadable(data: bytes) -> str | None:
    from PIL import Image  # Pillow when an image is first read: a resume with nothing to fetch never loads it (2.6 MB)

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except Exception as exc:  # Pillow raises many kinds for a broken file; any of them means "keep the original"
        return f"{type(exc).__name__}: {exc}"
    return None


def with_itxt(data: bytes, text: str) -> bytes:
    """The PNG with one uncompressed iTXt chunk (keyword `batchgen`) inserted before the first IEND; bytes
    after it stay as they were. ValueError when the chunks cannot be walked."""
    iend = list(xmp.png_chunks(data))[-1][0]
    return data[:iend] + xmp.itxt(KEYWORD.encode("latin-1"), text.encode("utf-8")) + data[iend:]


def read_png_text(path: Path) -> str | None:
    """The batchgen text in a PNG, read back with Pillow (None when there is none)."""
    from PIL import Image  # Pillow when an image is first read: a resume with nothing to fetch never loads it (2.6 MB)

    with Image.open(path) as image:
        image.load()
        value = getattr(image, "text", {}).get(KEYWORD)
    return None if value is None else str(value)


def write_xmp_sidecar(image: Path, packet: bytes, temp_dir: Path) -> Path:
    """`<image file name>.xmp`, the AI-generated label beside the image, written atomically."""
    sidecar = image.with_name(image.name + ".xmp")
    write_atomically(sidecar, packet, temp_dir)
    return sidecar


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
    except (OSError, ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None
