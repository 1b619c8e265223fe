"""Real PNG and JPEG images for simulated results, sized like Imagen 4 Ultra's outputs."""

from __future__ import annotations

import hashlib
import io
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
