"""The one place that hands out file names in DIR.

SPEC §4 names an item's image `<id>.<ext>`, and `<id>_1.<ext>`, `<id>_2.<ext>`, … when it has several; ids keep
their grammar, so existing manifests keep their names. But `x` with two images and an item called `x_1` would
both want `x_1.png`, and `Fox` and `fox` are one file on a case-insensitive disk. So every name is checked,
case-folded, before it is written, against the names the manifest's other items will use and the files the
ledger credits to other items; on a clash the item gets a distinct name, chosen deterministically (the same
manifest and ledger always give the same name) and recorded in the ledger with the file. A file the ledger
credits to another item is never handed out, so never overwritten or deleted.

Names are stems (no extension): the extension follows the image's format, known only once it is verified, and
a stem is one name whatever the extension, so `x_1.png` and `x_1.jpg` never belong to two items.
With `--name TEMPLATE` each item's stem comes from its fields instead (`render_stems`): the stems every item
will use are rendered before anything is sent, so a template that gives two items one name, leaves DIR or takes a
name batchgen keeps is an error then; only `{n}` (how many results an item gets) is filled in here, later.
Stems may hold `/`: subfolders of DIR, and the ledger records each file's path relative to DIR.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import string
import time
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from .errors import ManifestError, Problem, UsageError

if TYPE_CHECKING:
    from .manifest import Item

DEFAULT_TEMPLATE = "{id}"
N = "{n}"  # the placeholder left in a rendered stem, filled per result by Names.stems
FIELDS = ("id", "seed", "aspect_ratio", "prompt", "copy", "date", "n")  # besides any matrix axis
UNSET = "none"
PROMPT_WORDS = 6  # {prompt}: the first few words ...
MAX_VALUE = 40  # ... and no value longer than this many characters (a hash keeps it distinct)
_LITERAL = re.compile(r"[A-Za-z0-9._/ -]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def _key(stem: str) -> str:
    return stem.casefold()


def _keys_are_ids(ids: Iterable[str]) -> bool:
    """Whether every id is its own stem key under the default names (no `{n}` in it, and case-folding leaves it
    as it is: `fox`, not `Fox`), asked of all the ids at once. Folding maps each character on its own to one or
    more characters, and a newline to itself, so the joined ids fold to themselves only when each id does."""
    joined = "\n".join(ids)
    return N not in joined and joined.casefold() == joined


def stem_of(file_name: str) -> str:
    """A file's name without its extension, its folders kept (`zoo/fox.png` -> `zoo/fox`)."""
    if "/" not in file_name and file_name not in ("", ".", ".."):  # pathlib's rule for one name, 10x faster
        dot = file_name.rfind(".")
        return file_name[:dot] if 0 < dot < len(file_name) - 1 else file_name
    path = PurePosixPath(file_name)
    return str(path.with_suffix("")) if path.suffix else file_name


# ---------------------------------------------------------------- templates (--name)


def check_template(template: str) -> list[str]:
    """The placeholders of a `--name` template, in order; UsageError for a template that can never be a name."""
    fields: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise UsageError(f"--name {template!r}: {exc} (write {{{{ and }}}} for literal braces)") from exc
    for literal, field, spec, conversion in parsed:
        if not _LITERAL.fullmatch(literal):
            raise UsageError(
                f"--name {template!r}: {literal!r}: only letters, digits, '.', '_', '-', ' ' and '/' may be "
                "written around the placeholders"
            )
        if field is not None:
            if not field or spec or conversion or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", field):
                raise UsageError(f"--name {template!r}: {{{field}}} is not a placeholder (write {{id}}, {{seed}}, …)")
            fields.append(field)
    if not fields:
        raise UsageError(f"--name {template!r}: has no placeholder, so every item would get one name")
    if template.startswith("/"):
        raise UsageError(f"--name {template!r}: a name is a path inside DIR, never an absolute one")
    if template.count(N) > 1:
        raise UsageError(f"--name {template!r}: {N} may appear once")
    return fields


def render_stems(items: Sequence[Item], template: str, *, started: float | None = None) -> dict[str, str]:
    """Every item's stem under `template`, `{n}` left in place; UsageError (before anything is sent) for an
    unknown placeholder, a name outside DIR or reserved by batchgen, or two items that would get one name.

    `{date}` is the run's start in local time, like the dated contact sheet of jobs/nightly.sh."""
    fields = check_template(template)
    date = time.strftime("%Y-%m-%d", time.localtime(started))
    axes = {axis for item in items for axis in getattr(item, "cell", {})}
    unknown = [f for f in fields if f not in FIELDS and f not in axes]
    if unknown:
        known = ", ".join(f"{{{f}}}" for f in (*FIELDS, *sorted(axes)))
        raise UsageError(f"--name {template!r}: {{{unknown[0]}}} is no placeholder here; known: {known}")
    stems: dict[str, str] = {}
    owner: dict[str, str] = {}
    problems: list[Problem] = []
    for item in items:
        stem = template.format_map(_Values(item, date))
        why = _outside(stem)
        if why:
            problems.append(_problem(item, f"gives {stem!r}, {why}"))
            continue
        key = _key(stem)
        if key in owner:
            problems.append(
                _problem(
                    item,
                    f"{template!r} gives it {stem!r}, the name of item {owner[key]!r}; add a placeholder that tells "
                    "them apart (e.g. {id})",
                )
            )
            continue
        owner[key] = item.id
        stems[item.id] = stem
    if problems:
        _refuse(problems)
    return stems


def _refuse(problems: list[Problem]) -> None:
    """Every problem, at most 20 of them shown (one template can fail 100,000 items alike)."""
    if len(problems) > 20:
        rest = Problem(problems[20].file, None, f"… and {len(problems) - 20} more items like these", field="--name")
        problems = [*problems[:20], rest]
    raise ManifestError(problems)


def _problem(item: Item, message: str) -> Problem:
    return Problem(item.file, item.line, message, item=item.id, field="--name")


class _Values(dict[str, str]):
    """One item's placeholder values, rendered: normalised (the request's own values), slugged, unset: none."""

    def __init__(self, item: Item, date: str) -> None:
        super().__init__()
        self.item = item
        self.date = date

    def __missing__(self, field: str) -> str:
        item = self.item
        if field == "id":
            return item.id  # the id grammar is already safe; `{id}` alone keeps SPEC §4's names
        if field == "n":
            return N
        if field == "date":
            return self.date
        if field == "copy":
            return str(getattr(item, "copy", 1))
        if field == "prompt":
            return slug(" ".join(str(item.input.get("prompt", "")).split()[:PROMPT_WORDS]).lower())
        source = item.input if field in ("seed", "aspect_ratio") else getattr(item, "cell", {})
        value = source.get(field)
        return UNSET if value is None or value == "" else slug(str(value))


def slug(value: str) -> str:
    """A value as one safe path segment: letters, digits, `_` and `-`; a hash where nothing safe is left, and a
    hash suffix when it had to be shortened."""
    ascii_text = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode()
    text = _UNSAFE.sub("-", ascii_text).strip("-_")
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:8]
    if not text:
        return digest
    if len(text) > MAX_VALUE:
        return f"{text[: MAX_VALUE - 9].rstrip('-_')}-{digest}"
    return text


# ---------------------------------------------------------------- lengths the file system allows

NAME_MAX = 255  # bytes per path component on Linux, macOS and Windows file systems (ext4, APFS, NTFS, XFS)
PATH_MAX = 4096  # bytes of a whole path, with its NUL (Linux)
# What a stem can grow by before it reaches the disk, at worst: a result index (`_NN`), a clash suffix
# (`~1a2b3c4d-NN`, _distinct), an earlier roll (`~rollNN`), the longest extension (`.webp`) and the longest
# sidecar suffix (`.json`; `.xmp` is shorter). Temp names are hashes (files.temp_name) and never longer.
WORST_INDEX = "_99"
WORST_SUFFIX = "~ffffffff-99" + "~roll99" + ".webp" + ".json"


def check_lengths(items: Sequence[Item], stems: Mapping[str, str] | None, directory: Path | None) -> None:
    """ManifestError, before anything is sent, naming each item whose files could not be written: a path
    component over the file system's limit in bytes, or a whole path over PATH_MAX, counting the worst-case
    suffixes every file of the item may get; or a subfolder that is a link or a file in DIR. Without this the
    service is paid and then every write fails."""
    name_max, base = NAME_MAX, 0
    if directory is not None:
        absolute = Path(os.path.abspath(directory))
        base = len(os.fsencode(absolute)) + 1
        name_max = _name_max(absolute)
    problems: list[Problem] = []
    folders = _Folders(directory) if directory is not None else None
    # A stem of this many characters fits whatever it is: 4 bytes a character (UTF-8's most), a `_` (unreserved),
    # the worst index and suffixes, in one component and in the whole path. Most stems are: checked no further.
    sure = (min(name_max, PATH_MAX - 2 - base) - len(WORST_SUFFIX)) // 4 - 1 - len(WORST_INDEX)
    for item in items:
        stem = stems.get(item.id, item.id) if stems is not None else item.id
        if len(stem) <= sure and "/" not in stem:
            continue
        worst = unreserved(stem.replace(N, "99") if N in stem else stem + WORST_INDEX)
        parts = [os.fsencode(part) for part in worst.split("/")]
        parts[-1] += WORST_SUFFIX.encode()
        longest = max(parts, key=len)
        if len(longest) > name_max:
            message = (
                f"a file name of up to {len(longest):,} bytes, with the suffixes batchgen may add "
                f"({WORST_SUFFIX!r}); the file system allows {name_max}: use a shorter --name"
            )
            problems.append(_problem(item, message))
        elif base + sum(len(p) + 1 for p in parts) > PATH_MAX - 1:
            message = f"its path in {directory} would be over {PATH_MAX - 1:,} bytes; use a shorter --name or --out"
            problems.append(_problem(item, message))
        elif folders is not None and "/" in worst and (why := folders.problem(worst.rsplit("/", 1)[0])):
            problems.append(_problem(item, why))
    if problems:
        _refuse(problems)


class _Folders:
    """Whether each subfolder a name uses can be made in DIR: a link, a file or a FIFO in its place would fail
    the write after the service was paid. Each folder is looked at once (100,000 names share a few folders)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.seen: dict[str, str | None] = {}

    def problem(self, folder: str) -> str | None:
        if folder in self.seen:
            return self.seen[folder]
        parts = folder.split("/")
        why = None
        for depth in range(1, len(parts) + 1):  # the outermost first: a link there is the one to name
            prefix = "/".join(parts[:depth])
            if prefix not in self.seen:
                self.seen[prefix] = why or self._look(prefix)
            why = self.seen[prefix]
        return why

    def _look(self, folder: str) -> str | None:
        try:
            mode = os.lstat(self.directory / folder).st_mode
        except FileNotFoundError:
            return None  # made when the first file goes there
        except OSError as exc:
            return f"its folder {folder!r} cannot be looked at: {exc.strerror or exc}"
        if stat.S_ISDIR(mode):
            return None
        what = "a symbolic link" if stat.S_ISLNK(mode) else "not a folder"
        return f"its folder {folder!r} in {self.directory} is {what}; batchgen never writes through it: remove it"


def _name_max(directory: Path) -> int:
    """The longest file name DIR's file system allows (eCryptfs: 143), from the nearest folder that exists."""
    for folder in (directory, *directory.parents):
        try:
            return min(NAME_MAX, os.pathconf(folder, "PC_NAME_MAX"))
        except (OSError, ValueError):
            continue
    return NAME_MAX


def inside(name: str) -> bool:
    """Whether a file name from the ledger is a plain path inside DIR (no `..`, not absolute, not hidden)."""
    parts = name.split("/")
    return bool(name) and "\\" not in name and not any(p in ("", ".", "..") or p.startswith(".") for p in parts)


def _outside(stem: str) -> str | None:
    """Why a rendered stem may not be a file's name in DIR, or None."""
    parts = stem.split("/")
    if stem.startswith("/") or any(part in ("", ".", "..") for part in parts):
        return "which is not a path inside DIR"
    if any(part.startswith(".") or part.endswith((".", " ")) or part.startswith(" ") for part in parts):
        return "a hidden or blank-edged name (batchgen keeps .batchgen/ for itself)"
    if unreserved(stem) != stem:
        return "a name batchgen keeps for itself (results.json*, index.html, .batchgen)"
    if any(part.split(".")[0].rstrip(" ").upper() in _DEVICES for part in parts):
        return "a device name that Windows and SMB/NTFS shares refuse (CON, PRN, AUX, NUL, COM1-9, LPT1-9)"
    return None


# Names an NTFS volume or an SMB share refuses as a file or folder, with any extension (DIR may be a NAS mount):
# found after paying otherwise, on every night.
_DEVICES = frozenset({"CON", "PRN", "AUX", "NUL", *(f"{p}{n}" for p in ("COM", "LPT") for n in range(1, 10))})


class Names:
    """Who may use which stem. Built from the manifest's ids and the ledger's credited files; told of new
    credits as items succeed (`credit`)."""

    def __init__(
        self,
        manifest_ids: Iterable[str],
        credited: Iterable[tuple[str, Iterable[str]]],
        *,
        template: str = DEFAULT_TEMPLATE,
        stems: Mapping[str, str] | None = None,
    ) -> None:
        if template != DEFAULT_TEMPLATE and stems is None:
            raise ValueError(f"file-name template {template!r} needs the stems render_stems gave")
        self.template = template
        self._stems = dict(stems or {})  # item id -> its rendered stem (`{n}` left in), with --name
        # Each manifest id owns its own single-image name; case-folded twins (Fox, fox): the smallest id wins.
        # Under the default names an id whose stem key is itself (`fox`, nearly all) is not stored: `_owner`
        # finds it among the ids (a dict of 100,000 such entries was 5 MB of a resume).
        self._ids = manifest_ids if isinstance(manifest_ids, AbstractSet) else frozenset(manifest_ids)
        self._own = not self._stems
        self._planned: dict[str, str] = {}
        planned = self._planned
        for item_id in () if self._own and _keys_are_ids(self._ids) else self._ids:
            key = self._stems.get(item_id, item_id).replace(N, "1").casefold()  # _key, inline
            if self._own and key == item_id:
                continue
            held = planned.get(key)
            if held is None and self._own and key in self._ids:
                held = key  # the twin whose key is its own id, not stored
            if held is None or item_id < held:  # the smallest wins: no sort of 100,000 ids
                planned[key] = item_id
        # stem key -> the item credited with it, or the items when several are (one set per file was 21 MB of a
        # 100,000-item resume). Made now, not at the first download: made later, it was ~4 MB more at a
        # 100,000-item resume's peak for ~0.05 s sooner to the first createTask.
        self._credited: dict[str, str | set[str]] = {}
        self._credit(self._credited, credited)

    def credit(self, item_id: str, files: Iterable[str]) -> None:
        """The ledger now credits these files to this item."""
        self._credit(self._credited, ((item_id, files),))

    @staticmethod
    def _credit(credited: dict[str, str | set[str]], credits: Iterable[tuple[str, Iterable[str]]]) -> None:
        for item_id, files in credits:  # every finished item of a 100,000-item ledger: stem_of and _key inline
            for name in files:
                dot = name.rfind(".")
                plain = "/" not in name and 0 < dot < len(name) - 1  # `fox.png`: stem_of's answer is `fox`
                key = name[:dot].casefold() if plain else _key(stem_of(name))
                if key == item_id:
                    key = item_id  # the id's own string (the default names): a string less per file kept
                held = credited.get(key)
                if held is None or held == item_id:
                    credited[key] = item_id
                elif isinstance(held, set):
                    held.add(item_id)
                else:
                    credited[key] = {held, item_id}

    def credited_to_other(self, item_id: str, file_name: str) -> bool:
        """Whether the ledger credits this file to an item other than `item_id`."""
        return self._other(_key(stem_of(file_name)), item_id)

    def held_by_other(self, item_id: str, file_name: str) -> bool:
        """Whether the ledger credits this file to an item other than `item_id`, or another item of the manifest
        plans that name (a changed --name can give one item's old name to another)."""
        return not self._free(item_id, stem_of(file_name))

    def stems(self, item_id: str, count: int) -> list[str]:
        """The stems for an item's `count` images: SPEC §4's names, unless another item holds one."""
        base = self._stems.get(item_id, item_id)
        if N in base:
            wanted = [base.replace(N, str(n)) for n in range(1, count + 1)]
        else:
            wanted = [base] if count == 1 else [f"{base}_{n}" for n in range(1, count + 1)]
        wanted = [unreserved(stem) for stem in wanted]
        # A case-folded twin that does not own its id (`fox` beside `Fox`) never uses a plain name, so that
        # which of the two finishes first cannot decide who gets `Fox_1`. Between other items `<id>_<n>` is
        # unique: the digits after the last `_` are n, so the id before them is the item's own.
        twin = (self._owner(_key(base.replace(N, "1"))) or item_id) != item_id
        taken: set[str] = set()
        result = []
        for stem in wanted:
            chosen = _distinct(stem, item_id, 1) if twin else stem
            turn = 1 if twin else 0
            while not self._free(item_id, chosen) or _key(chosen) in taken:
                turn += 1
                chosen = _distinct(stem, item_id, turn)
            taken.add(_key(chosen))
            result.append(chosen)
        return result

    def _free(self, item_id: str, stem: str) -> bool:
        key = _key(stem)
        planned = self._owner(key)
        if planned is not None and planned != item_id:
            return False
        return not self._other(key, item_id)

    def _owner(self, key: str) -> str | None:
        """The manifest item that plans the stem with this key, if one does."""
        owner = self._planned.get(key)
        if owner is None and self._own and key in self._ids:
            return key
        return owner

    def _other(self, key: str, item_id: str) -> bool:
        """Whether an item other than `item_id` is credited with this stem."""
        held = self._credited.get(key)
        if held is None:
            return False
        return bool(held - {item_id}) if isinstance(held, set) else held != item_id


def unreserved(stem: str) -> str:
    """`stem`, or `_stem` when it (or its first folder) would be a name batchgen keeps for itself (SPEC §3):
    `results.json*` (an id `results.json` would write `results.json.png` beside the ledger and its damaged copies),
    `index.html`, `.batchgen`. An id starts with a letter or digit, so no item's own name is ever `_…`."""
    first = _key(stem).split("/", 1)[0]
    return f"_{stem}" if first.startswith(("results.json", "index.html", ".batchgen")) else stem


def _distinct(stem: str, item_id: str, turn: int) -> str:
    """A name for `stem` that no manifest item can want: `~` is outside the id grammar, so no id or `<id>_n`
    equals it; the hash of the item id keeps it deterministic, the counter clears files credited earlier."""
    digest = hashlib.sha256(item_id.encode()).hexdigest()[:8]
    return f"{stem}~{digest}" if turn == 1 else f"{stem}~{digest}-{turn}"
