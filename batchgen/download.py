"""Result files: stream to a temporary file under DIR/.batchgen/, verify, then rename to DIR/<id>.<ext>.

A file appears under its final name only when it is complete and verified: its length matches the
Content-Length, Pillow reads it as a PNG or JPEG, and its sha256 is known. Names come from item ids, never
from URLs; the temporary file is created fresh (O_EXCL, O_NOFOLLOW), so a planted symlink cannot redirect it,
and `os.replace` swaps a directory entry, never writing through a link at the final name.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import aiofiles
from PIL import Image, UnidentifiedImageError

from . import provenance
from .answers import TaskRecord
from .client import Client
from .config import RunSettings
from .errors import DownloadError
from .files import fsync_dir
from .manifest import Item
from .names import inside

CHUNK = 1024 * 1024  # one thread hop (aiofiles) per MiB written
FORMATS = {"PNG": "png", "JPEG": "jpg"}  # Pillow's name -> the file extension
ACCEPTED_TYPES = (
    "image/png",
    "image/jpeg",
    "image/jpg",
    "image/pjpeg",
    "application/octet-stream",
    "binary/octet-stream",
)


async def fetch(
    client: Client,
    url: str,
    *,
    directory: Path,
    temp_dir: Path,
    stem: str,
    max_bytes: int,
    png_text: Callable[[str], str] | None = None,
) -> tuple[str, str, str]:
    """Download one result URL to DIR/<stem>.<ext>; returns (its path relative to DIR, the sha256 of the file
    as kept, the sha256 as received). With `png_text` (--metadata png), a PNG without a C2PA manifest gets
    `png_text(sha256 as received)` as an iTXt chunk before it is renamed into place.

    A stem may hold `/` (--name): the subfolders are made inside DIR, never through a link out of it."""
    temp = temp_dir / f"{stem.replace('/', '_')}.{secrets.token_hex(4)}.part"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        digest = hashlib.sha256()
        async with client.open_result(url) as response:
            if response.status != 200:
                raise DownloadError(
                    f"result host answered HTTP {response.status}", expired=response.status in (401, 403, 404, 410)
                )
            if response.content_type not in ACCEPTED_TYPES:
                raise DownloadError(f"result host sent {response.content_type or 'no content type'}, not an image")
            declared = response.content_length
            if declared is not None and declared > max_bytes:
                raise DownloadError(f"result is {declared:,} bytes; the limit is {max_bytes:,}")
            size = 0
            async with aiofiles.open(fd, "wb", closefd=False) as out:
                async for chunk in response.content.iter_chunked(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise DownloadError(f"result exceeds the limit of {max_bytes:,} bytes")
                    digest.update(chunk)
                    await out.write(chunk)
            if declared is not None and size != declared:
                raise DownloadError(f"download truncated: {size:,} of {declared:,} bytes")
        await asyncio.to_thread(os.fsync, fd)
        ext = await asyncio.to_thread(verify_image, temp)
        received = final_digest = digest.hexdigest()
        if png_text is not None and ext == "png":
            final_digest = await asyncio.to_thread(_add_text, temp, png_text(received))
        final = directory / f"{stem}.{ext}"
        if "/" in stem:
            await asyncio.to_thread(make_folders, directory, final.parent)
        os.replace(temp, final)
        # The rename is durable before the caller records success: a crash must not leave the ledger vouching
        # for a file whose directory entry never reached the disk.
        await asyncio.to_thread(fsync_dir, final.parent)
        return final.relative_to(directory).as_posix(), final_digest, received
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    finally:
        os.close(fd)


def _add_text(path: Path, text: str) -> str:
    """Insert the provenance text into a verified PNG in place (unless it carries a C2PA manifest, which
    stays byte for byte as received), verify it again; returns the sha256 of the file as kept."""
    data = path.read_bytes()
    if not provenance.has_c2pa(data):
        data = provenance.with_itxt(data, text)
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        verify_image(path)
    return hashlib.sha256(data).hexdigest()


def make_folders(directory: Path, folder: Path) -> None:
    """Make a name's subfolders inside DIR; a component that is a symlink (or not a folder) is refused, so a
    planted link cannot send a file out of DIR."""
    current = directory
    for part in folder.relative_to(directory).parts:
        current = current / part
        try:
            os.mkdir(current, 0o755)
            fsync_dir(current.parent)
        except FileExistsError:
            if current.is_symlink() or not current.is_dir():
                raise DownloadError(
                    f"{current} is not a folder inside {directory}; not writing through it", permanent=True
                ) from None


def verify_image(path: Path) -> str:
    """Check that a file is a whole PNG or JPEG; returns its extension."""
    try:
        with Image.open(path) as image:
            kind = image.format or ""
            if kind not in FORMATS:
                raise DownloadError(f"result is {kind or 'not an image'}, not PNG or JPEG")
            image.verify()  # PNG: every chunk's CRC; JPEG: the markers
    except (UnidentifiedImageError, SyntaxError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DownloadError(f"result is not a complete image: {exc}") from exc
    if kind == "JPEG":
        with open(path, "rb") as handle:
            handle.seek(-2, os.SEEK_END)
            if handle.read(2) != b"\xff\xd9":
                raise DownloadError("result is not a complete image: the JPEG has no end marker")
    return FORMATS[kind]


def remove_stale(directory: Path, old: list[str], keep: list[str]) -> None:
    """After a changed item's new images are in place, remove its old ones that were not replaced."""
    for name in set(old) - set(keep):
        if not inside(name):
            continue
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
        with contextlib.suppress(FileNotFoundError):
            (directory / f"{name}.json").unlink()  # its --metadata sidecar, if it had one


def cleanup_partials(temp_dir: Path) -> None:
    """Remove temporary files a killed run left behind."""
    for path in temp_dir.glob("*.part"):
        with contextlib.suppress(OSError):
            path.unlink()


async def fetch_all(
    client: Client,
    item: Item,
    task_id: str,
    record: TaskRecord,
    *,
    stems: list[str],
    settings: RunSettings,
    temp_dir: Path,
) -> tuple[list[str], list[str], list[str]]:
    """Each result file of a task under its stem (from names.Names); returns the names, and the sha256 of each
    as kept and as received. With --metadata, each image's sidecar is in place (atomically) before the next
    file is fetched."""
    names: list[str] = []
    digests: list[str] = []
    received: list[str] = []
    mode = settings.metadata

    def text(sha256_received: str) -> str:
        return provenance.text_of(
            provenance.document(
                item_id=item.id,
                request=item.request,
                task_id=task_id,
                created=record.created,
                completed=record.completed,
                sha256_received=sha256_received,
                manifest=settings.manifest.name,
                line=item.line,
            )
        )

    for stem, url in zip(stems, record.result_urls, strict=True):
        name, digest, as_received = await fetch(
            client,
            url,
            directory=settings.out,
            temp_dir=temp_dir,
            stem=stem,
            max_bytes=settings.max_image_bytes,
            png_text=text if mode == "png" else None,
        )
        if mode != "none":
            await asyncio.to_thread(provenance.write_sidecar, settings.out / name, text(as_received), temp_dir)
        names.append(name)
        digests.append(digest)
        received.append(as_received)
    return names, digests, received
