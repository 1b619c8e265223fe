"""Real PNG and JPEG images for simulated results, sized like Imagen 4 Ultra's outputs."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from functools import lru_cache

from PIL import Image

from .. import schema

VARIANTS = 8  # distinct pictures per size and format; enough to tell results apart, cheap to cache


def size_for(aspect_ratio: str, scale: float) -> tuple[int, int]:
    """Pixel size of a result for an aspect ratio, scaled (at least 16 px a side)."""
    width, height = schema.IMAGE_SIZES.get(aspect_ratio, schema.IMAGE_SIZES["square_1_1"])
    return max(16, round(width * scale)), max(16, round(height * scale))


def variant_of(text: str) -> int:
    return hashlib.sha256(text.encode("utf-8")).digest()[0] % VARIANTS


@lru_cache(maxsize=64)
def render(width: int, height: int, fmt: str, quality: int, variant: int) -> bytes:
    """Encode a picture: colour gradients over noise, so PNGs are as large as real photos are."""
    vertical = Image.linear_gradient("L").resize((width, height))
    across = Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_90).resize((width, height))
    horizontal = across.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if variant % 2 else across
    noise = Image.effect_noise((width, height), 32 + 8 * variant)
    picture = Image.merge("RGB", (horizontal, noise, vertical))
    out = io.BytesIO()
    if fmt == "jpeg":
        picture.save(out, "JPEG", quality=quality)
    else:
        picture.save(out, "PNG", compress_level=1)
    return out.getvalue()


C2PA_BOX = b"\x00\x00\x00\x10jumbsimulated"  # stands in for a JUMBF manifest store: only its presence counts


def with_c2pa(png: bytes) -> bytes:
    """A PNG with a `caBX` chunk (correct CRC) right after IHDR, as C2PA-signing services write it."""
    after_ihdr = 8 + 8 + 13 + 4  # signature, IHDR's length+type, its 13 bytes of data, its CRC
    chunk = struct.pack(">I", len(C2PA_BOX)) + b"caBX" + C2PA_BOX + struct.pack(">I", zlib.crc32(b"caBX" + C2PA_BOX))
    return png[:after_ihdr] + chunk + png[after_ihdr:]


TRAILERS = {"garbage": b"\x00trailing bytes after IEND\n", "double_iend": b"\x00\x00\x00\x00IEND\xaeB`\x82"}


def with_trailer(png: bytes, kind: str) -> bytes:
    """A PNG followed by bytes after its IEND chunk (`garbage`), or by a second IEND (`double_iend`)."""
    return png + TRAILERS.get(kind, b"")
