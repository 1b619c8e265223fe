"""Reference images from local files: checked when the manifest is read, sent as data URIs when the item is.

An item's request (its id, the ledger, sidecars) holds `sha256:<hex>` of a file, never its bytes: the ledger is
rewritten often, and an edited file changes the item (one new create). The data URI of the file's real type
(PNG, JPEG or WebP, by its bytes) is made only for the createTask body, from the file as it is then — and only
if its sha256 is still the one validated.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import read_bounded

MAX_REFERENCE_BYTES = 7 * 1024 * 1024
PREFIX = "sha256:"


@dataclass(frozen=True, slots=True)
class Reference:
    path: str  # absolute, inside the manifest's folder
    media_type: str  # image/png, image/jpeg or image/webp, from the bytes


class ReferenceChanged(Exception):
    """A reference file no longer has the bytes its item was validated (and named) with."""


def image_type(data: bytes) -> str | None:
    """The media type of PNG, JPEG or WebP bytes, by their magic numbers; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def is_local(text: str) -> bool:
    """Whether a reference value names a local file (not an https URL, not a data URI)."""
    return not text.startswith(("https://", "data:"))


class Files:
    """Reads each reference file of one manifest once: its digest and type, or why it cannot be one."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._root: Path | None = None
        self._seen: dict[str, tuple[str, Reference] | str] = {}

    def check(self, text: str) -> tuple[str, Reference] | str:
        """(`sha256:<hex>`, the file) for a local reference, or a message saying why it is not one."""
        if text not in self._seen:
            self._seen[text] = self._check(text)
        return self._seen[text]

    def _check(self, text: str) -> tuple[str, Reference] | str:
        if "\0" in text or "://" in text:
            return "expected an https:// URL, a data URI, or a file inside the manifest's folder"
        if self._root is None:
            self._root = Path(os.path.realpath(self.base))
        real = Path(os.path.realpath(self.base / text))
        if real != self._root and self._root not in real.parents:
            return "the file is outside the manifest's folder"
        data = read_bounded(real, MAX_REFERENCE_BYTES, "the reference image", within=self._root)
        if isinstance(data, str):
            return data
        media_type = image_type(data)
        if media_type is None:
            return "the file is not a PNG, JPEG or WebP image (by its bytes)"
        return PREFIX + hashlib.sha256(data).hexdigest(), Reference(str(real), media_type)


def wire(request: Mapping[str, Any], references: Mapping[str, Reference]) -> dict[str, Any]:
    """The createTask body: each `sha256:<hex>` of a reference file replaced by the file's data URI.

    Raises ReferenceChanged when a file's bytes are no longer those its item was validated with."""
    cache: dict[str, str] = {}

    def uri(value: Any) -> Any:
        if not isinstance(value, str) or value not in references:
            return value
        if value not in cache:
            reference = references[value]
            data = read_bounded(Path(reference.path), MAX_REFERENCE_BYTES, "the reference image")
            if isinstance(data, str) or PREFIX + hashlib.sha256(data).hexdigest() != value:
                why = data if isinstance(data, str) else "its bytes changed"
                raise ReferenceChanged(f"reference image {reference.path}: {why} since the manifest was read")
            cache[value] = f"data:{reference.media_type};base64,{base64.b64encode(data).decode('ascii')}"
        return cache[value]

    data = {
        name: [uri(v) for v in value] if isinstance(value, list) else uri(value)
        for name, value in request["input"].items()
    }
    return {**request, "input": data}
