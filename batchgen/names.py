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
File-name templates (`--name`) will come through `Names(template=...)`; today only `{id}` is accepted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import PurePosixPath

DEFAULT_TEMPLATE = "{id}"


def _key(stem: str) -> str:
    return stem.casefold()


def stem_of(file_name: str) -> str:
    return PurePosixPath(file_name).stem if "." in file_name else file_name


class Names:
    """Who may use which stem. Built from the manifest's ids and the ledger's credited files; told of new
    credits as items succeed (`credit`)."""

    def __init__(
        self,
        manifest_ids: Iterable[str],
        credited: Iterable[tuple[str, Iterable[str]]],
        *,
        template: str = DEFAULT_TEMPLATE,
    ) -> None:
        if template != DEFAULT_TEMPLATE:
            raise ValueError(f"file-name template {template!r}: only {DEFAULT_TEMPLATE!r} is supported yet")
        self.template = template
        # Each manifest id owns its own single-image name; case-folded twins (Fox, fox): the smallest id wins.
        self._planned: dict[str, str] = {}
        for item_id in sorted(manifest_ids):
            self._planned.setdefault(_key(item_id), item_id)
        self._credited: dict[str, set[str]] = {}
        for item_id, files in credited:
            self.credit(item_id, files)

    def credit(self, item_id: str, files: Iterable[str]) -> None:
        """The ledger now credits these files to this item."""
        for name in files:
            self._credited.setdefault(_key(stem_of(name)), set()).add(item_id)

    def credited_to_other(self, item_id: str, file_name: str) -> bool:
        """Whether the ledger credits this file to an item other than `item_id`."""
        return bool(self._credited.get(_key(stem_of(file_name)), set()) - {item_id})

    def stems(self, item_id: str, count: int) -> list[str]:
        """The stems for an item's `count` images: SPEC §4's names, unless another item holds one."""
        wanted = [item_id] if count == 1 else [f"{item_id}_{n}" for n in range(1, count + 1)]
        wanted = [unreserved(stem) for stem in wanted]
        # A case-folded twin that does not own its id (`fox` beside `Fox`) never uses a plain name, so that
        # which of the two finishes first cannot decide who gets `Fox_1`. Between other items `<id>_<n>` is
        # unique: the digits after the last `_` are n, so the id before them is the item's own.
        twin = self._planned.get(_key(item_id), item_id) != item_id
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
        planned = self._planned.get(key)
        if planned is not None and planned != item_id:
            return False
        return not (self._credited.get(key, set()) - {item_id})


def unreserved(stem: str) -> str:
    """`stem`, or `_stem` when it (or its first folder) would be a name batchgen keeps for itself (SPEC §3):
    `results.json*` (an id `results.json` would write `results.json.png` beside the ledger and its damaged copies),
    `index.html`, `.batchgen`. An id starts with a letter or digit, so no item's own name is ever `_…`."""
    first = _key(stem).split("/", 1)[0]
    return f"_{stem}" if first.startswith("results.json") or first in ("index.html", ".batchgen") else stem


def _distinct(stem: str, item_id: str, turn: int) -> str:
    """A name for `stem` that no manifest item can want: `~` is outside the id grammar, so no id or `<id>_n`
    equals it; the hash of the item id keeps it deterministic, the counter clears files credited earlier."""
    digest = hashlib.sha256(item_id.encode()).hexdigest()[:8]
    return f"{stem}~{digest}" if turn == 1 else f"{stem}~{digest}-{turn}"
