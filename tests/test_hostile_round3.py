"""Hostile checks of round 3's fast paths: results.json read in pieces (snapshots.py) must give json.loads's
answer for every text, and the manifest composed by libyaml (readers.py) the pure composer's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchgen import snapshots

RECORD = '{\n   "state": "succeeded",\n   "task_id": "t-1"\n  }'
ITEMS = '\n "items": {\n  "a": ' + RECORD + ',\n  "b": ' + RECORD + "\n }"


def same_as_json_loads(path: Path, text: str, block: int) -> None:
    """Both readers (whole file and pieces of `block` bytes) give what json.loads gives, key order too."""
    data = text.encode()
    path.write_bytes(data)
    expected = json.loads(data.decode("utf-8-sig"))
    got: Any = snapshots.read(path, 1 << 30)
    assert json.dumps(got) == json.dumps(expected)
    in_pieces = snapshots.pieces(path, block)
    assert in_pieces is None or json.dumps(in_pieces) == json.dumps(expected)


@pytest.mark.parametrize("block", [1, 7, 64, snapshots.BLOCK])
@pytest.mark.parametrize(
    "text",
    [
        # a second "items" key written with an escape, after the real one: json.loads keeps the later (empty) one
        '{\n "version": 1,' + ITEMS + ',\n "\\u0069tems": {}\n}',
        '{\n "version": 1,' + ITEMS + ',\n "item\\u0073": {}\n}',
        # ... before it: the real one wins, as in json.loads
        '{\n "\\u0069tems": {"z": 1},' + ITEMS + "\n}",
        # the writer's layout one level down (a hand-made object), the top-level items escaped
        '{\n "meta": {' + ITEMS + '\n },\n "\\u0069tems": {}\n}',
        # an escaped "items" inside the document around the items: still json.loads's answer
        '{\n "version": 1,' + ITEMS + ',\n "counts": {"\\u0069tems": {}}\n}',
    ],
)
def test_an_escaped_items_key_is_read_as_json_loads_reads_it(tmp_path, text, block):
    same_as_json_loads(tmp_path / "results.json", text, block)
