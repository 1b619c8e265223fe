"""Result files: stream to a temporary file under DIR/.batchgen/, verify, then rename to DIR/<id>.<ext>.

A file appears under its final name only when it is complete and verified: its length matches the
Content-Length, Pillow reads it as a PNG or JPEG, and its sha256 is known. Names come from item ids, never
from URLs; the temporary file is created fresh (O_EXCL, O_NOFOLLOW), so a planted symlink cannot redirect it,
and `os.replace` swaps a directory entry, never writing through a link at the final name.

`Fetcher` is an item's download with its retries, for the engine: expired signed URLs are refreshed with one
recordInfo each time, a URL that carries the key is never fetched, the old files go before the success is
recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from . import provenance, records, rolls
from .answers import TaskRecord
from .client import Client
from .config import RunSettings
from .errors import DownloadError
from .files import clear_stale, fsync_dir, state_dir, temp_name
from .ledger import ErrorRecord, Ledger, error_record
from .manifest import Item
from .names import Names, inside
from .outcome import Counters
from .progress import Reporter

T = TypeVar("T")
DOWNLOAD_SLOTS = 8  # result files fetched at once
NO_RESULT_QUERIES = 3  # a success without result URLs: recordInfo asked this many times before "no result"
CHUNK = 1024 * 1024  # one thread hop per MiB written (and one for the rest: sync, verify, rename)
# Pillow's name (read from the bytes, whatever the request or the URL said) -> the file extension
FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # what a file batchgen wrote can be called
ACCEPTED_TYPES = (
    "image/png",
    "image/jpeg",
    "image/webp",
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
    label: Callable[[str], provenance.Label] | None = None,
    warn: Callable[[str], object] | None = None,
) -> tuple[str, str, str]:
    """Download one result URL to DIR/<stem>.<ext>; returns (its path relative to DIR, the sha256 of the file
    as kept, the sha256 as received). With `label` (--metadata png), the image gets `label(sha256 as received)`
    inside (provenance.embed) before it is renamed into place; a file that cannot take it is kept as received,
    and `warn` is told why.

    A stem may hold `/` (--name): the subfolders are made inside DIR, never through a link out of it."""
    temp = temp_dir / temp_name(directory / stem, "part")  # never the whole stem: it may be 250 bytes
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
            held: list[bytes] = []  # written a MiB at a time: one thread hop per MiB, not per chunk
            whole = True  # all the bytes are still held (nothing written yet): verified from memory
            async for chunk in response.content.iter_chunked(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise DownloadError(f"result exceeds the limit of {max_bytes:,} bytes")
                digest.update(chunk)
                held.append(chunk)
                if sum(map(len, held)) >= CHUNK:
                    await _holding_fd(_write_all, fd, held)
                    held, whole = [], False
            if declared is not None and size != declared:
                raise DownloadError(f"download truncated: {size:,} of {declared:,} bytes")
        received = digest.hexdigest()
        mark = label(received) if label is not None else None
        ext, final_digest, note = await _holding_fd(_settle, fd, held, whole, temp, directory, stem, mark)
        final_digest = final_digest or received
        name = f"{stem}.{ext}"
        if note and warn is not None:
            warn(f"{name}: the metadata was not written into it: {note}; kept as received")
        return name, final_digest, received
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    finally:
        os.close(fd)


async def _holding_fd(work: Callable[..., T], *args: Any) -> T:
    """`work` in a thread; cancelled, the caller still waits for it to end: it holds the file descriptor that the
    caller closes (closed under it, the number could be another file's by then)."""
    job = asyncio.ensure_future(asyncio.to_thread(work, *args))
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await job
        raise


def _write_all(fd: int, chunks: list[bytes]) -> None:
    """The chunks written in one system call where the kernel takes them all (each call lets go of the GIL, and
    taking it back from a busy event loop costs a handover: a MiB came in ~16 reads)."""
    view = memoryview(chunks[0] if len(chunks) == 1 else b"".join(chunks))
    while view:
        view = view[os.write(fd, view) :]


def _settle(
    fd: int, held: list[bytes], whole: bool, temp: Path, directory: Path, stem: str, mark: provenance.Label | None
) -> tuple[str, str | None, str | None]:
    """The rest of a download, in one thread hop: the last bytes written and synced, the image verified,
    labelled (`mark`), renamed into place, the rename made durable. Returns the extension, the sha256 of the
    file as kept when the label changed it, and why a label was not written.

    With `whole` (`held` is the whole file: it never reached a MiB), the image is verified and labelled from
    those bytes, the very ones written, instead of being read back a piece at a time."""
    data = b"".join(held) if whole else None
    if held:
        _write_all(fd, [data] if data is not None else held)
    os.fsync(fd)
    ext = verify_image(temp, data)
    final = directory / f"{stem}.{ext}"
    digest = note = None
    if mark is not None:
        digest, note = _embed(temp, mark, data)
    if "/" in stem:
        make_folders(directory, final.parent)
    os.replace(temp, final)
    # The rename is durable before the caller records success: a crash must not leave the ledger vouching for a
    # file whose directory entry never reached the disk.
    fsync_dir(final.parent)
    return ext, digest, note


def _embed(path: Path, mark: provenance.Label, data: bytes | None = None) -> tuple[str, str | None]:
    """Put the label into a verified image in place (provenance.embed: never re-encoded, a C2PA file as
    received); returns the sha256 of the file as kept, and why it is as received when that was not meant.
    `data`: the file's bytes, when the caller holds them."""
    if data is None:
        data = path.read_bytes()
    labelled, note = provenance.embed(data, mark)
    if labelled is not data:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            view = memoryview(labelled)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    return hashlib.sha256(labelled).hexdigest(), note


def _sidecars(path: Path, mark: provenance.Label, temp_dir: Path) -> None:
    """The image's --metadata sidecars (JSON and XMP), in one thread hop."""
    provenance.write_sidecar(path, mark.text, temp_dir)
    provenance.write_xmp_sidecar(path, mark.xmp, temp_dir)


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


def verify_image(path: Path, data: bytes | None = None) -> str:
    """Check that a file is a whole PNG, JPEG or WebP; returns its extension (the bytes decide, nothing else).
    `data`: the file's bytes, when the caller holds them (read from memory, not a piece at a time from disk)."""
    # Pillow when an image is first read: a resume with nothing to fetch never loads it (2.6 MB)
    from PIL import Image, UnidentifiedImageError

    try:
        with io.BytesIO(data) if data is not None else open(path, "rb") as handle:
            with Image.open(handle) as image:
                kind = image.format or ""
                if kind not in FORMATS:
                    raise DownloadError(f"result is {kind or 'not an image'}, not PNG, JPEG or WebP")
                image.verify()  # PNG: every chunk's CRC; JPEG: the markers
            if kind == "PNG":  # Pillow's verify stops after IEND's type: its CRC, the last 4 bytes, is never read
                handle.seek(max(0, handle.tell() - 4))
                if handle.read(8) != b"IEND\xaeB`\x82":
                    raise DownloadError("result is not a complete image: the PNG ends inside its last chunk")
            if kind == "JPEG":
                handle.seek(-2, os.SEEK_END)
                if handle.read(2) != b"\xff\xd9":
                    raise DownloadError("result is not a complete image: the JPEG has no end marker")
            if kind == "WEBP":  # a RIFF file says its own length: bytes 4-8, the size of all that follows them
                handle.seek(0)
                head = handle.read(12)
                if len(head) < 12 or int.from_bytes(head[4:8], "little") != handle.seek(0, os.SEEK_END) - 8:
                    raise DownloadError("result is not a complete image: the WebP is shorter or longer than it says")
    except (UnidentifiedImageError, SyntaxError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DownloadError(f"result is not a complete image: {exc}") from exc
    return FORMATS[kind]


def remove_stale(directory: Path, old: list[str], keep: list[str]) -> None:
    """After a changed item's new images are in place, remove its old ones that were not replaced."""
    for name in set(old) - set(keep):
        if not inside(name) or not name.lower().endswith(IMAGE_SUFFIXES):
            continue  # the ledger is data: a name it holds never deletes a file batchgen could not have written
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
        for sidecar in (f"{name}.json", f"{name}.xmp"):  # its --metadata sidecars, if it had them
            with contextlib.suppress(FileNotFoundError):
                (directory / sidecar).unlink()


def cleanup_partials(temp_dir: Path) -> None:
    """Remove temporary files a killed run left behind: downloads (`*.part`, only ever written under DIR's lock),
    and sidecars being written (`*.tmp`: only those whose writer is gone)."""
    for path in temp_dir.glob("*.part"):
        with contextlib.suppress(OSError):
            path.unlink()
    clear_stale(temp_dir, "*.tmp")


async def fetch_all(
    client: Client,
    item: Item,
    task_id: str,
    record: TaskRecord,
    *,
    stems: list[str],
    settings: RunSettings,
    temp_dir: Path,
    warn: Callable[[str], object] | None = None,
) -> tuple[list[str], list[str], list[str]]:
    """Each result file of a task under its stem (from names.Names); returns the names, and the sha256 of each
    as kept and as received. With --metadata, each image's sidecar is in place (atomically) before the next
    file is fetched."""
    names: list[str] = []
    digests: list[str] = []
    received: list[str] = []
    mode = settings.metadata

    def label(sha256_received: str) -> provenance.Label:
        return provenance.label(
            provenance.document(
                item_id=item.id,
                request=item.request,
                task_id=task_id,
                created=record.created,
                completed=record.completed,
                sha256_received=sha256_received,
                manifest=settings.manifest.name,
                line=item.line,
            ),
            completed=record.completed,
        )

    for stem, url in zip(stems, record.result_urls, strict=True):
        name, digest, as_received = await fetch(
            client,
            url,
            directory=settings.out,
            temp_dir=temp_dir,
            stem=stem,
            max_bytes=settings.max_image_bytes,
            label=label if mode == "png" else None,
            warn=warn,
        )
        if mode != "none":
            mark = label(as_received)
            await asyncio.to_thread(_sidecars, settings.out / name, mark, temp_dir)
        names.append(name)
        digests.append(digest)
        received.append(as_received)
    return names, digests, received


class Fetcher:
    """An item's result files fetched with their retries: expired URLs refreshed, the old files removed, the
    success recorded. At most DOWNLOAD_SLOTS items download at once."""

    def __init__(
        self,
        settings: RunSettings,
        ledger: Ledger,
        client: Client,
        names: Names,
        reporter: Reporter,
        counters: Counters,
        *,
        fail: Callable[[str, ErrorRecord], Awaitable[None]],
        query: Callable[[str], Awaitable[TaskRecord | None]],
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.client = client
        self.names = names
        self.reporter = reporter
        self.counters = counters
        self.fail = fail  # the item failed for good (the engine records and tells it)
        self.query = query  # one recordInfo outside the poll schedule (watch.py)
        self.slots = asyncio.Semaphore(DOWNLOAD_SLOTS)
        self.rng = random.Random()
        self.temp_dir = state_dir(settings.out, "tmp")

    async def fetch(self, item: Item, task_id: str, record: TaskRecord) -> None:
        """Fetch every result file; expired URLs are refreshed with one recordInfo each time.

        A URL that carries the key is never fetched, and a malformed one fails the item (`bad_result`); a result
        host that cannot be reached through every try fails it too, rather than every night again.
        """
        if record.key_in_url:
            await self.fail(item.id, _key_in_url(record))
            return
        async with self.slots:
            last: DownloadError | None = None
            queries = 0
            for attempt in range(1, self.settings.retry.calls + 1):
                if not record.result_urls:
                    queries += 1
                    if queries >= NO_RESULT_QUERIES:  # the service has no result to give
                        reason = record.result_error or "it gave no result URLs"
                        await self.fail(item.id, error_record("no_result", None, f"the task succeeded but {reason}"))
                        return
                    await asyncio.sleep(self.settings.retry.delay(attempt, self.rng.random()))
                    record = _fresher(await self.query(task_id), record)
                    continue
                try:  # a result host whose certificate or proxy refuses us stops the run (WayRefused)
                    rolls.keep_earlier(self.settings.out, self.ledger.record(item.id))  # a re-roll: keep the last
                    names, digests, received = await fetch_all(
                        self.client,
                        item,
                        task_id,
                        record,
                        stems=self.names.stems(item.id, len(record.result_urls)),
                        settings=self.settings,
                        temp_dir=self.temp_dir,
                        warn=lambda message: self.reporter.warning(message, item=item.id),
                    )
                except DownloadError as exc:
                    last = exc
                    self.reporter.debug(f"item {item.id!r}: {exc}")
                    if exc.permanent:
                        await self.fail(item.id, error_record("bad_result", None, str(exc)))
                        return
                    if exc.expired or exc.unreachable:
                        fresh = await self._refresh(item, task_id, record, exc)
                        if fresh is None:
                            return
                        if fresh.key_in_url:
                            await self.fail(item.id, _key_in_url(fresh))
                            return
                        if fresh.result_urls != record.result_urls and fresh.result_urls:
                            record = fresh  # signed URLs expire: these are new ones
                            continue
                    await asyncio.sleep(self.settings.retry.delay(attempt, self.rng.random()))
                    continue
                await self._succeeded(item, record, names, digests, received)
                return
            if last is not None and last.unreachable:
                await self.fail(
                    item.id,
                    error_record(
                        "bad_result", None, f"{last} (after {self.settings.retry.calls} tries with fresh URLs)"
                    ),
                )
                return
            self.reporter.warning(
                f"item {item.id!r}: could not download the result of {task_id} ({last or 'no attempt'}); it "
                "stays submitted, rerun to try again",
                item=item.id,
            )

    async def _succeeded(
        self, item: Item, record: TaskRecord, names: list[str], digests: list[str], received: list[str]
    ) -> None:
        """Record the item's files. The old files (and ledger.refetch's) go before the success is recorded: a
        kill in between leaves the ledger naming them still, so the next run removes what is left."""
        known = self.ledger.record(item.id)
        old = [*known["files"], *records.files_before(known)]
        stale = [n for n in old if not self.names.held_by_other(item.id, n)]
        if set(stale) - set(names):  # a new item has none: no thread hop for nothing
            await asyncio.to_thread(remove_stale, self.settings.out, stale, names)
        self.ledger.succeeded(
            item.id,
            names,
            digests,
            cost=dict(record.cost),
            received=received if self.settings.metadata != "none" else None,
        )
        self.names.credit(item.id, names)
        await self.ledger.durable()
        self.counters.downloads += len(names)

    async def _refresh(self, item: Item, task_id: str, record: TaskRecord, exc: DownloadError) -> TaskRecord | None:
        """One recordInfo for fresh result URLs after `exc`; None when none can come: the URL was refused (expired)
        and the service no longer knows the task. Retrying that URL with backoff only held the run for minutes
        (the soak's hang, seed 2026 night 62): the item stays submitted, for the next run."""
        answer = await self.query(task_id)
        if exc.expired and answer is not None and answer.unknown:
            self.reporter.warning(
                f"item {item.id!r}: the result URL of {task_id} was refused ({exc}) and the service no longer "
                "knows the task, so it gives no fresh URL; it stays submitted, rerun to pick it up",
                item=item.id,
            )
            return None
        return _fresher(answer, record)


def _key_in_url(record: TaskRecord) -> ErrorRecord:
    """A result URL carries the API key: never fetched (that would send the key to the result host)."""
    urls = ", ".join(record.result_urls)[:300]  # masked already, by the client
    return error_record("bad_result", None, f"a result URL carries the API key; not fetched: {urls}")


def _fresher(fresh: TaskRecord | None, record: TaskRecord) -> TaskRecord:
    """A new recordInfo answer, if it says something about a finished task; else what we had."""
    return fresh if fresh is not None and fresh.finished else record
