"""Real PNG, JPEG and WebP images for simulated results, of the type and size each model's card gives."""

from __future__ import annotations

import contextlib
import hashlib
import io
import struct
import zlib
from functools import lru_cache
from typing import Any

from PIL import Image

from .. import models

VARIANTS = 8  # distinct pictures per size and format; enough to tell results apart, cheap to cache


_TYPES = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
_RESOLUTION = {"1k": 1, "low": 1, "2k": 2, "medium": 2, "4k": 4, "high": 4}


def _card(body: dict[str, Any], cards: models.Registry) -> models.Card:
    card = cards.get(str(body.get("model")))
    return card if card is not None else models.builtin().cards[models.DEFAULT_MODEL]


def result_type(body: dict[str, Any], cards: models.Registry) -> str:
    """png, jpeg or webp: the request's output_format where the model has one, else the model's own type."""
    chosen = body["input"].get("output_format")
    if isinstance(chosen, str) and (kind := _TYPES.get(chosen.strip().lower().removeprefix("image/"))):
        return kind
    return _card(body, cards).output_format


def size_for(body: dict[str, Any], scale: float, cards: models.Registry) -> tuple[int, int]:
    """Pixel size of a result (its card's size for the aspect ratio, or width x height, at the resolution asked
    for), scaled (at least 16 px a side)."""
    card, data = _card(body, cards), body["input"]
    aspect, spec = data.get("aspect_ratio"), card.fields.get("aspect_ratio")
    if spec is not None and spec.kind == "enum" and isinstance(aspect, str) and aspect.strip():
        with contextlib.suppress(ValueError):
            aspect = spec.normalise(aspect)  # an alias is its value's size: 16:9 is widescreen_16_9
    width, height = card.sizes.get(str(aspect), card.size)
    if isinstance(data.get("width"), int) and isinstance(data.get("height"), int):
        width, height = data["width"], data["height"]
    asked = _RESOLUTION.get(str(data.get("resolution", "")).lower())
    spec = card.fields.get("resolution")
    usual = _RESOLUTION.get(str(spec.default).lower()) if spec is not None else None
    if asked and usual:
        width, height = width * asked // usual, height * asked // usual
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
    elif fmt == "webp":
        picture.save(out, "WEBP", quality=quality)
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
