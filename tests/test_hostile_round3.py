"""Hostile checks of round 3's fast paths: results.json read in pieces (snapshots.py) must give json.loads's
answer for every text, and the manifest composed by libyaml (readers.py) the pure composer's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchgen import readers, snapshots

from .helpers import problems

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


# ---------------------------------------------------------------- the manifest composed by libyaml


def shape(node: yaml.Node | None) -> Any:
    """A node tree as plain data: kind, tag, line, column and value (children in order)."""
    if node is None:
        return None
    mark = (node.start_mark.line, node.start_mark.column)
    if isinstance(node, yaml.ScalarNode):
        return ("scalar", node.tag, mark, node.value, node.style or None)
    if isinstance(node, yaml.SequenceNode):
        return ("sequence", node.tag, mark, [shape(child) for child in node.value])
    assert isinstance(node, yaml.MappingNode)
    return ("mapping", node.tag, mark, [(shape(k), shape(v)) for k, v in node.value])


def pure(text: str) -> Any:
    """The pure-Python composer's tree, or its error (type and message)."""
    try:
        return shape(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        return (type(exc).__name__, str(exc))


def composed(text: str) -> Any:
    try:
        return shape(readers.compose(text))
    except yaml.YAMLError as exc:
        return (type(exc).__name__, str(exc))


LENIENT = [  # text libyaml reads and the pure-Python parser refuses (or reads with other lines)
    "- id: a\n  prompt: a cat\twith a hat\n",
    "- id: a\n  prompt: a cat \twith a hat\n",
    "- id: a\n  prompt: |#note\n    two\n    lines\n",
    "- id: a\n  prompt: >-#note\n    folded\n",
    "items:\n\ufeff- id: a\n  prompt: b\n",
    "\ufeff- id: a\n  prompt: b\n\ufeff",
    "defaults:\n  ? seed\nitems:\n- id: a\n  prompt: b\n",
    "- ? prompt\n  id: a\n",
    "\ufeff? 'q'",
    "- {id: a, prompt: why?}\n",
    "- id: a\n  images: [https://example.com/a.png?s=1]\n",
]


@pytest.mark.parametrize("text", LENIENT)
def test_text_libyaml_is_more_lenient_with_is_read_as_the_pure_parser_reads_it(text):
    assert composed(text) == pure(text)


@pytest.mark.parametrize("name", ["tab", "bar"])
def test_a_manifest_the_pure_parser_refuses_is_refused_with_its_line(tmp_path, name):
    text = {"tab": "- id: a\n  prompt: a cat\twith a hat\n", "bar": "- id: a\n  prompt: |#x\n    two\n"}[name]
    path = tmp_path / "m.yaml"
    path.write_text(text)
    found = problems(path)
    assert found and all("line 2" in p or ":2" in p for p in found), found
