"""The manifest's YAML read by libyaml's parser (issue 18: the pure-Python parser was ~6 % of a run's CPU).

libyaml's node tree must be the pure-Python parser's: the same tags, values and line numbers (every problem names
its line), and any text it refuses is read again by the pure-Python parser, whose messages the other tests pin.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchgen import readers

from .helpers import problems

needs_libyaml = pytest.mark.skipif(not getattr(yaml, "__with_libyaml__", False), reason="PyYAML without libyaml")


def shape(node: yaml.Node | None) -> Any:
    """A node tree as plain data: kind, tag, line, column and value (children in order)."""
    if node is None:
        return None
    mark = (node.start_mark.line, node.start_mark.column)
    if isinstance(node, yaml.ScalarNode):
        return ("scalar", node.tag, mark, node.value, node.style or None)  # plain: libyaml "", PyYAML None
    if isinstance(node, yaml.SequenceNode):
        return ("sequence", node.tag, mark, [shape(child) for child in node.value])
    assert isinstance(node, yaml.MappingNode)
    return ("mapping", node.tag, mark, [(shape(k), shape(v)) for k, v in node.value])


def pure(text: str) -> yaml.Node | None:
    return yaml.compose(text, Loader=yaml.SafeLoader)


MANIFESTS = [
    "- id: a\n  prompt: 'A harbour at dawn'\n  aspect_ratio: '16:9'\n",
    "defaults:\n  model: flux\n  seed: 7\nitems:\n  - id: a\n    prompt: one\n    aspect_ratio: 16:9\n"
    "    enhance: yes\n",
    "- id: a\r\n  prompt: |\r\n    two\r\n    lines\r\n  seed: 0x1F\r\n",
    "- id: é\u2028  prompt: >\n    folded\n    text\n  n: ~\n  f: 1.5e3\n  t: 2026-12-05\n",
    'base: &b {model: flux, seed: 1}\nitems:\n  - <<: *b\n    id: a\n    prompt: "\\u00e9 \\U0001F600"\n',
    '# comment\n\n\n- {id: x, prompt: "a\\tb", images: [u1, u2, {k: v}]}\n- id: y\n  prompt: 😀 emoji\n',
    "--- \n- id: a\n  prompt: one\n...\n",
    "",
    "   \n# only a comment\n",
    "- id: a\n  matrix:\n    style: [oil, ink]\n    light: [dawn]\n  prompt: '{style} at {light}'\n",
]


@needs_libyaml
@pytest.mark.parametrize("text", MANIFESTS)
def test_libyaml_gives_the_pure_parsers_tree_and_lines(text: str) -> None:
    assert shape(readers.compose(text)) == shape(pure(text))


BROKEN = [
    "- id: a\n  prompt: [unclosed\n",
    "- id: a\n prompt: bad indent\n",
    "- id: a\n  prompt: \x7f\n",
    "- id: a\n  prompt: *nowhere\n",
    "key: 'unterminated\n",
    "- id: a\n\t- tab\n",
]


@pytest.mark.parametrize("text", BROKEN)
def test_text_libyaml_refuses_raises_the_pure_parsers_error(text: str) -> None:
    with pytest.raises(yaml.YAMLError) as pure_error:
        pure(text)
    with pytest.raises(yaml.YAMLError) as ours:
        readers.compose(text)
    assert type(ours.value) is type(pure_error.value)
    assert str(ours.value) == str(pure_error.value)


_SCALAR = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)


@needs_libyaml
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_SCALAR, _SCALAR, st.sampled_from(["'", '"', ""])), min_size=1, max_size=5))
def test_any_text_is_read_as_the_pure_parser_reads_it(rows: list[tuple[str, str, str]]) -> None:
    lines = []
    for key, value, quote in rows:
        shown = value.replace("\\", "\\\\").replace('"', '\\"') if quote == '"' else value.replace("'", "''")
        lines.append(f"- id: {key}\n  prompt: {quote}{shown}{quote}\n")
    text = "".join(lines)
    try:
        expected = shape(pure(text))
    except yaml.YAMLError as exc:
        with pytest.raises(yaml.YAMLError) as ours:
            readers.compose(text)
        assert str(ours.value) == str(exc)
        return
    assert shape(readers.compose(text)) == expected


@pytest.mark.parametrize(
    ("depth", "expected"),
    [pytest.param(600, "prompt: expected text, got a mapping", marks=needs_libyaml), (100_000, "nested too deeply")],
)
def test_a_deeply_nested_value_is_one_clear_problem(tmp_path, depth, expected):
    """libyaml composes deeper than the pure-Python parser (which stops at Python's recursion limit): a value
    nested 600 deep is now refused for what it is (a mapping where text belongs, at its line), one 100,000 deep
    as too deeply nested — one problem either way, never a traceback."""
    path = tmp_path / "m.yaml"
    path.write_text("- id: a\n  prompt: " + "{a: " * depth + "1" + "}" * depth + "\n", encoding="utf-8")
    (found,) = problems(path)
    assert expected in found
