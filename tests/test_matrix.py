"""Matrices, counts and wildcard files: what a grid expands to, its ids, and every error at its line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchgen import ids, manifest

from .helpers import problems

ZOO = """\
items:
  - id: zoo
    prompt: "A {animal} in {place}, {style} {{not a placeholder}}"
    aspect_ratio: "{ratio}"
    matrix:
      animal: [fox, owl]
      place: [snow, "a pine forest"]
      style: {file: styles.txt}
      ratio: ["16:9", "1:1"]
    count: 2
    seed: 7
"""
STYLES = "# one style per line\noil painting\n\n  watercolour  \n"


def by_id(path: Path) -> dict[str, manifest.Item]:
    return {item.id: item for item in manifest.load(path)}


def test_a_grid_expands_to_every_cell_times_count_with_seeds_and_literal_braces(write):
    write("styles.txt", STYLES)
    items = manifest.load(write("zoo.yaml", ZOO))
    assert len(items) == 2 * 2 * 2 * 2 * 2
    first = items[0]
    assert first.id == "zoo-fox-snow-16_9_cb140f95-oil_painting"  # axes in name order: animal place ratio style
    assert dict(first.input) == {
        "prompt": "A fox in snow, oil painting {not a placeholder}",
        "aspect_ratio": "widescreen_16_9",
        "seed": 7,
    }
    assert dict(first.cell) == {"animal": "fox", "place": "snow", "ratio": "16:9", "style": "oil painting"}
    assert (first.copy, first.line) == (1, 2)
    second = items[1]
    assert second.id == first.id + "-2" and second.copy == 2 and second.input["seed"] == 8
    assert {i.input["prompt"] for i in items if i.cell["place"] == "a pine forest"} == {
        "A fox in a pine forest, oil painting {not a placeholder}",
        "A fox in a pine forest, watercolour {not a placeholder}",
        "A owl in a pine forest, oil painting {not a placeholder}",
        "A owl in a pine forest, watercolour {not a placeholder}",
    }
    assert all(manifest.ID_PATTERN.fullmatch(i.id) for i in items)
    assert len({i.id for i in items}) == len(items)


def test_wildcard_file_is_read_relative_to_the_manifest_not_the_cwd(write, tmp_path, monkeypatch):
    write("styles.txt", STYLES)
    path = write("zoo.yaml", ZOO)
    monkeypatch.chdir("/")
    assert len(manifest.load(path)) == 32


def test_braces_without_a_matrix_keep_their_request_and_id(write):
    path = write(
        "old.yaml", "- prompt: 'A {animal} with {{braces}} and a lone {'\n- id: b\n  prompt: '{x}'\n  count: 2\n"
    )
    plain, b1, b2 = manifest.load(path)
    request = {"model": "imagen4-ultra", "input": {"prompt": "A {animal} with {{braces}} and a lone {"}}
    assert plain.request == request
    assert plain.id == manifest.derive_id(json.dumps(request, sort_keys=True, separators=(",", ":")))
    assert (b1.id, b2.id, b1.input["prompt"], b2.input["prompt"]) == ("b", "b-2", "{x}", "{x}")


@pytest.mark.parametrize("spelled", ["id: keep\n  ", ""])
def test_adding_count_keeps_the_first_copys_id_and_request(write, spelled):
    before = manifest.load(write("a.yaml", f"- {spelled}prompt: a lighthouse\n  seed: 5\n"))
    after = manifest.load(write("b.yaml", f"- {spelled}prompt: a lighthouse\n  seed: 5\n  count: 3\n"))
    assert after[0].id == before[0].id and after[0].request == before[0].request
    assert [i.id for i in after[1:]] == [before[0].id + "-2", before[0].id + "-3"]
    assert [i.input["seed"] for i in after] == [5, 6, 7]


def test_count_in_csv_and_in_defaults(write):
    rows = manifest.load(write("c.csv", "id,prompt,count,seed\na,first,2,10\nb,second,,\n"))
    assert [(i.id, i.input.get("seed")) for i in rows] == [("a", 10), ("a-2", 11), ("b", None)]
    items = manifest.load(write("d.yaml", "defaults:\n  count: 2\nitems:\n  - id: x\n    prompt: p\n"))
    assert [i.id for i in items] == ["x", "x-2"]
    assert items[0].request == items[1].request  # no seed: two draws of one request


def _ids(write, text: str) -> dict[str, dict]:
    write("styles.txt", STYLES)
    return {i.id: i.request for i in manifest.load(write("m.yaml", text))}


def test_ids_are_stable_when_values_or_axes_are_reordered(write):
    before = _ids(write, ZOO)
    reordered = ZOO.replace("[fox, owl]", "[owl, fox]").replace('["16:9", "1:1"]', '["1:1", "16:9"]')
    lines = reordered.splitlines(keepends=True)
    lines[5:9] = lines[5:9][::-1]  # the four axes, last first
    assert "".join(lines) != ZOO
    assert _ids(write, "".join(lines)) == before


def test_adding_a_value_adds_only_its_cells_and_removing_one_retires_only_its_cells(write):
    before = _ids(write, ZOO)
    added = _ids(write, ZOO.replace("[fox, owl]", "[fox, owl, heron]"))
    assert set(before) < set(added)
    assert all(added[k] == v for k, v in before.items())
    assert len(set(added) - set(before)) == 16 and all("-heron-" in k for k in set(added) - set(before))
    removed = _ids(write, ZOO.replace('["16:9", "1:1"]', '["16:9"]'))
    assert set(removed) < set(before) and all(before[k] == v for k, v in removed.items())
    raised = _ids(write, ZOO.replace("count: 2", "count: 3"))
    assert set(before) < set(raised) and len(raised) == 48
    assert all(k.endswith("-3") for k in set(raised) - set(before))


def test_a_derived_prefix_comes_from_the_item_without_matrix_and_count(write):
    text = ZOO.replace("  - id: zoo\n    prompt", "  - prompt")
    derived = _ids(write, text)
    prefix = next(iter(derived)).split("-")[0]
    assert len(prefix) == 12 and all(k.startswith(prefix + "-") for k in derived)
    assert set(_ids(write, text.replace("count: 2", "count: 3"))) > set(derived)  # count is not in the prefix
    assert set(_ids(write, text.replace("[fox, owl]", "[fox, owl, heron]"))) > set(derived)
    changed = _ids(write, text.replace("A {animal}", "One {animal}"))
    assert not set(changed) & set(derived)  # a new template is a new request for every cell


def test_unsafe_and_long_values_keep_the_grammar_and_never_collide(write):
    long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
    values = ["a b", "a-b", "a_b", "a  b", "A b", "ab", "16:9", "16/9", "", "ü", "../..", long_a, long_b]
    text = "- id: " + "p" * 100 + "\n  prompt: 'v={v}'\n  count: 2\n  matrix:\n    v: " + json.dumps(values) + "\n"
    items = manifest.load(write("u.yaml", text))
    assert len(items) == 2 * len(values) == len({i.id for i in items})
    assert all(manifest.ID_PATTERN.fullmatch(i.id) for i in items), [i.id for i in items]
    assert {i.input["prompt"] for i in items} == {f"v={v}" for v in values}
    assert ids.token("a b") == "a_b" and ids.token("a_b").startswith("a_b_")


def test_fit_shortens_with_a_hash_of_the_whole_never_a_bare_cut():
    a, b = "p" * 95 + "-one", "p" * 95 + "-two"
    assert ids.fit(a) != ids.fit(b) and len(ids.fit(a)) <= 100
    assert ids.fit(a)[:80] == a[:80] and ids.fit("short") == "short"


def test_two_values_whose_tokens_meet_are_a_validation_error(write):
    # found by search: two punctuation-only values whose 32-bit token hashes are equal
    assert ids.token("##%$!$") == ids.token("^#*^^%")
    path = write("c.yaml", "- id: a\n  prompt: '{v}'\n  matrix:\n    v: ['##%$!$', '^#*^^%']\n")
    assert problems(path) == [
        f"{path}:4: item 'a': matrix.v: values '##%$!$' and '^#*^^%' would share the id part "
        f"{ids.token('##%$!$')!r}; change one"
    ]


def test_a_plain_value_that_spells_another_values_slug_and_hash_is_refused_without_blaming_a_hash(write):
    # No collision needed: a plain value may end in any 8 hex digits, so it can be written as another's token.
    plain = "a b " + ids.token("a_b").rsplit("_", 1)[1]
    assert ids.token(plain) == ids.token("a_b")
    path = write("c.yaml", f"- id: a\n  prompt: '{{v}}'\n  matrix:\n    v: ['{plain}', 'a_b']\n")
    assert problems(path) == [
        f"{path}:4: item 'a': matrix.v: values {plain!r} and 'a_b' would share the id part "
        f"{ids.token('a_b')!r}; change one"
    ]


def test_a_cell_id_that_meets_another_items_id_is_a_validation_error(write):
    path = write("d.yaml", "- id: zoo-fox\n  prompt: p\n- id: zoo\n  prompt: '{a}'\n  matrix: {a: [fox]}\n")
    assert problems(path) == [f"{path}:3: item 'zoo': id: id 'zoo-fox' is already used by the item on line 1"]


# (content, the exact problems) — each at its line, naming the item and the field
ERRORS = [
    (
        "- id: a\n  prompt: 'A {colour}'\n  matrix:\n    animal: [fox]\n",
        [":2: item 'a': prompt: {colour} has no axis in the matrix (axes: animal)"],
    ),
    (
        "- id: a\n  prompt: 'A {animal}'\n  matrix:\n    animal: [fox]\n    place: [snow]\n",
        [":5: item 'a': matrix.place: no field uses {place}"],
    ),
    (
        "- id: a\n  prompt: '{x}'\n  matrix:\n    x: []\n",
        [":4: item 'a': matrix.x: empty: an axis needs at least one value"],
    ),
    (
        "- id: a\n  prompt: '{x}'\n  matrix:\n    x: {file: nowhere.txt}\n",
        [":4: item 'a': matrix.x: cannot read 'nowhere.txt': No such file or directory"],
    ),
    (
        "- id: a\n  prompt: '{x}'\n  matrix:\n    x: {file: blank.txt}\n",
        [":4: item 'a': matrix.x: 'blank.txt' has no values (blank lines and # lines are skipped)"],
    ),
    (
        "- id: a\n  prompt: '{x}'\n  matrix:\n    x: {file: latin1.txt}\n",
        [":4: item 'a': matrix.x: 'latin1.txt' line 2: not UTF-8 text; save it as UTF-8"],
    ),
    (
        "- id: a\n  prompt: 'A {x} and { y'\n  matrix: {x: [1]}\n",
        [":2: item 'a': prompt: '{' at character 11 is not a placeholder: write {{ and }} for a literal brace"],
    ),
    (
        "- id: a\n  prompt: 'A {x} and {}'\n  matrix: {x: [1]}\n",
        [":2: item 'a': prompt: '{}' at character 11 is not a placeholder: write {{ and }} for a literal brace"],
    ),
    ("- id: a\n  prompt: '{x}'\n  matrix: {x: [1, 2, 1]}\n", [":3: item 'a': matrix.x: value '1' given twice"]),
    (
        "- id: a\n  prompt: '{x}'\n  matrix: {x: [[1]]}\n",
        [":3: item 'a': matrix.x: a value is text or a number; got a list (on line 3)"],
    ),
    (
        "- id: a\n  prompt: '{x}'\n  matrix: {x: [~]}\n",
        [":3: item 'a': matrix.x: a value is text or a number; got nothing (on line 3)"],
    ),
    (
        "- id: a\n  prompt: '{x}'\n  matrix: {x: [\"\\ud83d\"]}\n",
        [
            ":3: item 'a': matrix.x: text that cannot be encoded as UTF-8 (a lone surrogate, U+D83D, at character 1); "
            "write the character itself, or one \\U0001F600-style escape, not a \\ud83d\\ude00 pair"
        ],
    ),
    (
        "- id: a\n  prompt: p\n  matrix: {x-y: [1]}\n",
        [":3: item 'a': matrix: an axis is named by a letter or '_', then letters, digits or '_'; got 'x-y'"],
    ),
    (
        "- id: a\n  prompt: p\n  matrix: [a, b]\n",
        [":3: item 'a': matrix: expected a mapping of axis: [values, …] or axis: {file: PATH}"],
    ),
    (
        "- id: a\n  prompt: p\n  matrix:\n",
        [":3: item 'a': matrix: expected a mapping of axis: [values, …] or axis: {file: PATH}"],
    ),
    (
        "- id: a\n  prompt: '{x}'\n  matrix: {x: {path: s.txt}}\n",
        [":3: item 'a': matrix.x: expected a list of values or {file: PATH}"],
    ),
    (
        "- id: a\n  prompt: '{s}'\n  seed: {s}\n  matrix: {s: [1]}\n",
        [":3: item 'a': seed: a YAML mapping: put a placeholder in quotes, e.g. seed: \"{name}\""],
    ),
    ("- id: a\n  prompt: p\n  count: 0\n", [":3: item 'a': count: expected an integer from 1 to 100000, got 0"]),
    (
        "defaults:\n  matrix: {x: [1]}\n  count: 0\nitems:\n  - prompt: p\n",
        [
            ":2: defaults.matrix: a matrix cannot be a default: give it to the items it expands",
            ":3: defaults.count: expected an integer from 1 to 100000, got 0",
        ],
    ),
    (
        "- id: a\n  prompt: 'A {r}'\n  aspect_ratio: '{r}'\n  matrix: {r: ['16:9', '2:1', '5:4'], x: [1, 2]}\n"
        "  seed: '{x}'\n",
        [
            ":1: item 'a': aspect_ratio: expected one of square_1_1, social_story_9_16, widescreen_16_9, "
            "traditional_3_4, classic_4_3; got '2:1'",
            ":1: item 'a': aspect_ratio: expected one of square_1_1, social_story_9_16, widescreen_16_9, "
            "traditional_3_4, classic_4_3; got '5:4'",
        ],
    ),
]


@pytest.mark.parametrize(("content", "expected"), ERRORS, ids=[str(n) for n in range(len(ERRORS))])
def test_each_matrix_error_names_its_line_item_and_field(write, content, expected):
    write("blank.txt", "\n# nothing here\n   \n")
    write("latin1.txt", "fine\ncaf\u00e9\n".encode("latin-1"))
    path = write("e.yaml", content)
    assert problems(path) == [f"{path}{e}" for e in expected]


def test_csv_has_no_matrix(write):
    path = write("m.csv", "prompt,matrix\np,x\n")
    assert problems(path) == [f"{path}:1: matrix: a matrix needs YAML (a CSV row gets `count` only)"]


def test_an_expansion_past_the_limit_is_refused_before_it_is_made(write):
    write("n.txt", "\n".join(str(n) for n in range(1000)))
    path = write(
        "big.yaml",
        "- id: big\n  prompt: '{a} {b} {c}'\n  matrix: {a: {file: n.txt}, b: {file: n.txt}, c: {file: n.txt}}\n",
    )
    # Sized from the axes' lengths, never made one by one (that would take hours): how fast is benchmarks/run.py's
    # matrix_limit figure, not an assertion here.
    assert problems(path) == [
        f"{path}:1: item 'big': matrix: 1,000 a × 1,000 b × 1,000 c = 1,000,000,000 items; the limit is 100,000"
    ]


def test_the_limit_counts_the_manifests_other_items(write):
    plain = "".join(f"- prompt: plain {n}\n" for n in range(10))
    path = write("m.yaml", plain + "- id: c\n  prompt: p\n  count: 99995\n")
    assert problems(path) == [
        f"{path}:11: item 'c': count: count 99,995 = 99,995 items, beside the manifest's other 10; the limit is 100,000"
    ]
    assert len(manifest.load(write("ok.yaml", plain + "- id: c\n  prompt: p\n  count: 99990\n"))) == 100_000


def test_text_a_grid_would_make_is_bounded_before_it_is_made(write):
    write("long.txt", "\n".join(f"{n:05d}" + "x" * 10_000 for n in range(1000)))
    write("n.txt", "\n".join(str(n) for n in range(100)))
    path = write("t.yaml", "- id: t\n  prompt: '{a} {b}'\n  matrix: {a: {file: long.txt}, b: {file: n.txt}}\n")
    found = problems(path)
    assert found == [
        f"{path}:1: item 't': matrix: would expand to 1,000,790,000 characters of text; the limit is 536,870,912"
    ]
    write("huge.txt", "y" * 20_001 + "\n")
    path = write("h.yaml", "- id: h\n  prompt: '{a}'\n  matrix: {a: {file: huge.txt}}\n")
    assert problems(path) == [f"{path}:3: item 'h': matrix.a: a value of 20,001 characters; the limit is 20,000"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a FIFO")
def test_a_fifo_or_device_as_a_wildcard_file_is_refused_without_blocking(write, tmp_path):
    os.mkfifo(tmp_path / "fifo.txt")
    path = write("f.yaml", "- id: f\n  prompt: '{a}{b}'\n  matrix: {a: {file: fifo.txt}, b: {file: /dev/zero}}\n")
    assert problems(path) == [
        f"{path}:3: item 'f': matrix.a: cannot read 'fifo.txt': not a regular file",
        f"{path}:3: item 'f': matrix.b: '/dev/zero' is an absolute path; a wildcard file is one in the manifest's "
        "folder or below it",
    ]
    os.mkfifo(tmp_path / "m.yaml")
    assert problems(tmp_path / "m.yaml") == [f"{tmp_path / 'm.yaml'}: cannot read the file: not a regular file"]


def test_aliases_in_a_matrix_stay_bounded(write):
    values = "[" + ",".join(str(n) for n in range(400)) + "]"
    path = write(
        "a.yaml",
        f"- id: a\n  prompt: '{{a}}{{b}}{{c}}'\n  matrix: {{a: &x {values}, b: *x, c: *x}}\n",
    )
    (found,) = problems(path)
    assert "= 64,000,000 items" in found


def test_validate_cli_prints_counts_before_and_after_expansion(write):
    write("styles.txt", STYLES)
    path = write("zoo.yaml", ZOO + "  - prompt: plain\n")
    proc = subprocess.run([sys.executable, "-m", "batchgen", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == f"{path}: 2 items listed, 33 after expansion, valid"


# Any small grid: ids are unique, within the grammar, and the same whatever the order of values and axes.
# No NUL (a value may not hold one), and no \x1e: it separates the placeholders in the prompt, so that two cells
# never make one prompt (`a b` + `c` and `a` + `b c` would be one request: a duplicate error, rightly). Values
# are distinct as ids.identity sees them, and hold no zero-width character (which would join across axes).
axis_values = st.lists(
    st.text(
        st.characters(
            max_codepoint=0xFFFF, exclude_categories=["Cs"], exclude_characters="\0\x1e\u200b\u200c\u200d\u2060\ufeff"
        ),
        max_size=8,
    ),
    min_size=1,
    max_size=4,
    unique_by=ids.identity,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    grid=st.dictionaries(st.from_regex(r"[a-z]{1,3}", fullmatch=True), axis_values, min_size=1, max_size=3),
    count=st.integers(1, 3),
    data=st.data(),
)
def test_any_grid_has_unique_grammatical_ids_that_ignore_order(tmp_path_factory, grid, count, data):
    folder = tmp_path_factory.mktemp("g")

    def load(axes: dict[str, list[str]]) -> dict[str, dict]:
        prompt = "\x1e".join("{" + name + "}" for name in sorted(axes)) + " x"
        path = folder / "g.yaml"
        item = {"id": "g", "prompt": prompt, "count": count, "matrix": axes}
        path.write_text(json.dumps([item]), encoding="utf-8")
        return {i.id: i.request for i in manifest.load(path)}

    first = load(grid)
    size = count
    for values in grid.values():
        size *= len(values)
    assert len(first) == size
    assert all(manifest.ID_PATTERN.fullmatch(i) for i in first)
    shuffled = {n: data.draw(st.permutations(v)) for n, v in data.draw(st.permutations(list(grid.items())))}
    assert load(shuffled) == first


def test_the_sample_grid_validates_with_its_wildcard_file():
    root = Path(__file__).resolve().parents[1] / "sample_manifests"
    proc = subprocess.run(
        [sys.executable, "-m", "batchgen", "validate", str(root / "grid.yaml")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{root / 'grid.yaml'}: 2 items listed, 51 after expansion, valid\n"
    items = by_id(root / "grid.yaml")
    assert "zoo-fox-snow-16_9_cb140f95-ink_drawing" in items  # the id the sample's comment shows
    assert {i.cell["style"] for i in items.values() if i.cell} == {"oil painting", "watercolour", "ink drawing"}
    assert [items[f"lighthouse{s}"].copy for s in ("", "-2", "-3")] == [1, 2, 3]
