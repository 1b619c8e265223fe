"""Manifest text a journal cannot hold, odd keys, and YAML's own scalars: each a clear problem, never a crash.

The journal and results.json are UTF-8; a string that cannot be encoded (a lone surrogate, which YAML's
`"\\ud83d"` escapes produce) used to validate and then crash the run at the journal write, after paying.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchgen import manifest
from batchgen.errors import ManifestError

from .helpers import problems

UNENCODABLE = "text that cannot be encoded as UTF-8"


def test_json_dumped_emoji_read_as_yaml_is_refused_naming_line_and_field(write):
    # json.dump escapes an emoji as a surrogate pair; JSON readers join the pair, YAML's reader does not.
    text = "[\n" + json.dumps({"id": "a", "prompt": "a fox 😀"}) + ",\n" + json.dumps({"prompt": "fine"}) + "\n]\n"
    assert "\\ud83d\\ude00" in text
    path = write("dumped.yaml", text)
    (found,) = problems(path)
    assert found.startswith(f"{path}:2: item 'a': prompt: {UNENCODABLE} (a lone surrogate, U+D83D, at character 7)")


@pytest.mark.parametrize(
    ("content", "where"),
    [
        ('- id: a\n  prompt: "\\ud83d"\n', ":1: item 'a': prompt: "),
        ('- id: "\\ud83d"\n  prompt: p\n', ":1: item '\\ud83d': id: "),
        ('- id: a\n  prompt: p\n  aspect_ratio: "16:9\\udc00"\n', ":1: item 'a': aspect_ratio: "),
        ('- id: a\n  prompt: p\n  callBackUrl: "https://x.example/\\ud800"\n', ":1: item 'a': callBackUrl: "),
        ('defaults:\n  prompt: "\\ud83d"\nitems:\n  - id: a\n', ":2: defaults.prompt: "),
        ('- id: a\n  prompt: p\n  "\\ud83d": 1\n', ":1: item 'a': '\\ud83d': "),
        ('"\\ud83d": 1\nitems:\n  - prompt: p\n', ":1: '\\ud83d': "),
    ],
    ids=["prompt", "id", "enum", "callback", "defaults", "key", "top-level-key"],
)
def test_lone_surrogates_anywhere_are_refused(write, content, where):
    path = write("s.yaml", content)
    found = problems(path)
    assert len(found) == 1, found
    assert found[0].startswith(f"{path}{where}{UNENCODABLE}"), found
    found[0].encode("utf-8")  # the message itself can be printed and logged


def test_csv_cannot_smuggle_surrogates(write):
    path = write("s.csv", b"id,prompt\na,x\xed\xa0\xbdy\n")  # a surrogate encoded as if it were UTF-8 (CESU-8)
    (found,) = problems(path)
    assert found.startswith(f"{path}:2: not UTF-8 text (byte 0xed")


def test_a_manifest_whose_name_is_not_utf8_is_refused(tmp_path):
    name = os.fsdecode(b"night\xff.yaml")  # the name as Python sees it: '\udcff' in place of the byte
    path = tmp_path / name
    path.write_text("- prompt: p\n", encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        manifest.load(path)
    (problem,) = info.value.problems
    assert problem.message.startswith("the file name cannot be encoded as UTF-8")


@pytest.mark.parametrize(("text", "expected"), [("1", True), ("0", False), ("'1'", True), ("yes", True)])
def test_yaml_enhance_prompt_takes_1_and_0_as_the_message_says(write, text, expected):
    (item,) = manifest.load(write("b.yaml", f"- prompt: p\n  enhance_prompt: {text}\n"))
    assert item.input["enhance_prompt"] is expected
    (item,) = manifest.load(write("d.yaml", f"defaults:\n  enhance_prompt: {text}\nitems:\n  - prompt: p\n"))
    assert item.input["enhance_prompt"] is expected


def test_yaml_enhance_prompt_refuses_other_numbers(write):
    path = write("b.yaml", "- id: a\n  prompt: p\n  enhance_prompt: 2\n")
    assert problems(path) == [f"{path}:1: item 'a': enhance_prompt: expected true or false (or yes/no, 1/0); got '2'"]


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ('"bad\\nkey"', "'bad\\nkey': unknown field; known fields are"),
        ('"tab\\there"', "'tab\\there': unknown field; known fields are"),
        ("1", "a field name must be text; got a number (1)"),
        ("~", "a field name must be text; got nothing"),
        ("true", "a field name must be text; got a boolean (true)"),
        ("[1, 2]", "a field name must be text; got a list"),
        ("{a: 1}", "a field name must be text; got a mapping"),
        ('"' + "k" * 500 + '"', "'" + "k" * 59 + "…': unknown field; known fields are"),
    ],
    ids=["newline", "tab", "int", "null", "bool", "list", "mapping", "long"],
)
def test_odd_keys_give_one_clear_line(write, key, shown):
    path = write("k.yaml", f"- id: a\n  prompt: p\n  {key}: 1\n")
    (found,) = problems(path)
    assert "\n" not in found
    assert found.startswith(f"{path}:1: item 'a': {shown}"), found


def test_odd_keys_in_csv_headers_and_defaults_give_one_clear_line(write):
    path = write("k.csv", 'id,"bad\nkey",prompt\na,1,p\n')
    (found,) = problems(path)
    assert found.startswith(f"{path}:1: 'bad\\nkey': unknown field"), found
    path = write("d.yaml", 'defaults:\n  "a\\nb": 1\n  3: x\nitems:\n  - prompt: p\n')
    assert problems(path) == [
        f"{path}:3: a field name must be text; got a number (3)",
        f"{path}:2: 'defaults.a\\nb': unknown field; known fields are " + ", ".join(manifest.schema.MANIFEST_FIELDS),
    ]


def test_a_character_yaml_forbids_is_one_line_at_its_line(write):
    path = write("del.yaml", "- id: a\n  prompt: p\n- id: b\n  prompt: 'x\x7fy'\n")
    assert problems(path) == [f"{path}:4: YAML does not allow the character U+007F (column 13)"]


def test_validate_cli_prints_unencodable_text_as_a_problem_not_a_traceback(write):
    path = write("s.yaml", '- id: a\n  prompt: "\\ud83d\\ude00"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "batchgen", "validate", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"{path}:1: item 'a': prompt: {UNENCODABLE}")


# Any string YAML can express, in any place of an item: a manifest either loads into requests the journal can
# write, or is refused with problems that are each one printable line.
any_text = st.text(st.characters(codec=None, categories=None), max_size=12)  # surrogates included
keys = st.one_of(st.sampled_from(manifest.schema.MANIFEST_FIELDS), any_text)
scalars = st.one_of(
    any_text, st.sampled_from(["{a}", "{{", "}", "{b}x{a}"]), st.integers(-3, 3), st.booleans(), st.none()
)
matrices = st.dictionaries(
    st.one_of(st.sampled_from(["a", "b"]), any_text),
    st.one_of(st.lists(scalars, max_size=3), st.fixed_dictionaries({"file": any_text}), scalars),
    max_size=3,
)
fields = st.one_of(scalars, st.lists(scalars, max_size=2), matrices)
hostile_items = st.dictionaries(keys, fields, min_size=1, max_size=5)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=st.lists(hostile_items, min_size=1, max_size=3))
def test_any_string_anywhere_loads_writable_or_is_refused_in_one_line_each(tmp_path_factory, document):
    path = tmp_path_factory.mktemp("t") / "m.yaml"
    path.write_text(json.dumps(document), encoding="ascii")  # JSON is YAML; escapes carry the surrogates
    try:
        loaded = manifest.load(path)
    except ManifestError as exc:
        for problem in exc.problems:
            line = str(problem)
            assert "\n" not in line and "\r" not in line, line
            line.encode("utf-8")
        return
    for item in loaded:
        json.dumps({"id": item.id, "request": item.request}, ensure_ascii=False).encode("utf-8")


def test_property_test_would_see_a_surrogate(tmp_path: Path) -> None:
    # guards the strategy above: JSON written with escapes really does put a lone surrogate into YAML's hands
    path = tmp_path / "m.yaml"
    path.write_text(json.dumps([{"prompt": "\ud800"}]), encoding="ascii")
    with pytest.raises(ManifestError):
        manifest.load(path)
