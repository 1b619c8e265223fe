"""Manifests a hostile tester wrote: directories, look-alike integers, cells that are one request, odd line ends."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from batchgen import manifest, schema
from batchgen.errors import ManifestError

from .helpers import batchgen, problems


def validate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return batchgen("validate", *args, cwd=cwd)


def test_a_directory_named_as_the_manifest_is_a_problem_not_a_crash(tmp_path):
    (tmp_path / "d.yaml").mkdir()
    done = validate("d.yaml", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "d.yaml: cannot read the file: a directory" in done.stdout + done.stderr


def test_a_directory_named_as_a_wildcard_file_is_a_problem_at_its_line(tmp_path):
    (tmp_path / "adir").mkdir()
    (tmp_path / "m.yaml").write_text('items:\n  - prompt: "a {s}"\n    matrix:\n      s: {file: adir}\n')
    done = validate("m.yaml", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "m.yaml:4: item #1: matrix.s: cannot read 'adir': a directory" in done.stdout + done.stderr


@pytest.mark.parametrize(("written", "shown"), [("٣", "'٣'"), ("+3", "'+3'"), ('" 3 "', "' 3 '"), ("1_0", "'1_0'")])
def test_count_and_seed_take_plain_ascii_digits_only(write, written, shown):
    path = write("c.yaml", f"- id: a\n  prompt: p\n  count: {written}\n- id: b\n  prompt: q\n  seed: {written}\n")
    assert problems(path) == [
        f"{path}:3: item 'a': count: expected an integer, got {shown}",  # count: at its value's line
        f"{path}:4: item 'b': seed: expected an integer, got {shown}",
    ]


def test_csv_count_takes_plain_ascii_digits_only(write):
    path = write("c.csv", "prompt,count\na,٣\nb, 3 \nc,+3\nd,1_0\ne,3\n")
    assert problems(path) == [
        f"{path}:2: item #1: count: expected an integer, got '٣'",
        f"{path}:3: item #2: count: expected an integer, got ' 3 '",
        f"{path}:4: item #3: count: expected an integer, got '+3'",
        f"{path}:5: item #4: count: expected an integer, got '1_0'",
    ]


def test_a_seed_too_large_says_so_and_names_the_bound(write):
    path = write(
        "s.yaml", "- id: a\n  prompt: p\n  seed: 99999999999999999999999\n- id: b\n  prompt: p\n  seed: '9' \n"
    )
    huge = "9" * 5000  # int() of this many digits raises ValueError: never reached
    path2 = write("s2.csv", f"prompt,seed\np,{huge}\n")
    assert problems(path) == [
        f"{path}:1: item 'a': seed: too large: expected an integer from 1 to {schema.MAX_SEED}, "
        "got 99999999999999999999999"
    ]
    (found,) = problems(path2)
    assert found.startswith(f"{path2}:2: item #1: seed: too large: expected an integer from 1 to {schema.MAX_SEED}")
    assert (
        manifest.load(write("ok.yaml", f"- prompt: p\n  seed: {schema.MAX_SEED}\n"))[0].input["seed"] == schema.MAX_SEED
    )


def test_cells_that_normalise_to_one_request_are_a_duplicate_error(write):
    path = write(
        "dup.yaml",
        """\
items:
  - id: r
    prompt: "a fox"
    aspect_ratio: "{r}"
    matrix:
      r: ["16:9", "WIDESCREEN_16_9", "1:1"]
  - id: s
    prompt: "an owl"
    seed: "{s}"
    matrix:
      s: ["1", "01", "2"]
""",
    )
    assert problems(path) == [
        f"{path}:2: item 'r': matrix: cells {{r: '16:9'}} and {{r: 'WIDESCREEN_16_9'}} make the same request; "
        "remove one value",
        f"{path}:7: item 's': matrix: cells {{s: '1'}} and {{s: '01'}} make the same request; remove one value",
    ]


def test_copies_of_one_cell_may_share_a_request_but_copies_of_two_may_not(write):
    draws = write("draws.yaml", '- prompt: "a {s}"\n  count: 3\n  matrix:\n    s: [fox, owl]\n')
    assert len(manifest.load(draws)) == 6  # count without a seed: three draws of each request, on purpose
    path = write("meet.yaml", '- id: m\n  prompt: "a fox"\n  seed: "{s}"\n  count: 2\n  matrix:\n    s: ["1", "2"]\n')
    assert problems(path) == [
        f"{path}:1: item 'm': matrix: cells {{s: '1'}} (copy 2) and {{s: '2'}} make the same request; remove one value"
    ]


def test_a_wildcard_file_with_cr_only_line_ends_is_one_value_per_line(write):
    write("styles.txt", b"oil\rwatercolour\r\r# a comment\rink\r\n")
    path = write("m.yaml", '- id: z\n  prompt: "a fox, {style}"\n  matrix:\n    style: {file: styles.txt}\n')
    assert sorted(item.cell["style"] for item in manifest.load(path)) == ["ink", "oil", "watercolour"]


def test_a_nul_inside_a_yaml_value_is_refused_as_in_the_file_itself(write):
    path = write(
        "n.yaml",
        '- id: z\n  prompt: "a {s}"\n  matrix:\n    s: ["x\\0y", "b"]\n'
        '- id: f\n  prompt: "a {s}"\n  matrix:\n    s: {file: "x\\0y"}\n',
    )
    assert problems(path) == [
        f"{path}:4: item 'z': matrix.s: value 'x\\x00y' contains a NUL character (a \\0 escape): "
        "text fields cannot hold one",
        f"{path}:8: item 'f': matrix.s: expected a file name; got 'x\\x00y'",
    ]
    plain = write("p.yaml", '- id: p\n  prompt: "a\\0b"\n')
    assert problems(plain) == [
        f"{plain}:1: item 'p': prompt: contains a NUL character (a \\0 escape): text fields cannot hold one"
    ]


def test_a_problem_names_its_item_by_the_bare_id_and_prints_it_quoted(write):
    path = write("b.yaml", "- id: zoo-fox\n  prompt: p\n  seed: 0\n- prompt: q\n  seed: 0\n")
    with pytest.raises(ManifestError) as info:
        manifest.load(path)
    assert [p.item for p in info.value.problems] == ["zoo-fox", "#2"]
    assert [str(p) for p in info.value.problems] == [
        f"{path}:1: item 'zoo-fox': seed: expected an integer >= 1, got 0",
        f"{path}:4: item #2: seed: expected an integer >= 1, got 0",
    ]
    csv = write("b.csv", "id,prompt,seed\nzoo-fox,p,0\n")
    with pytest.raises(ManifestError) as info:
        manifest.load(csv)
    assert [p.item for p in info.value.problems] == ["zoo-fox"]
