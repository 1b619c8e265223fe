"""Manifest validation: every rule, with the exact file:line: item: field in the message."""

from __future__ import annotations

import hashlib
import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from batchgen import manifest

from .helpers import problems


def test_yaml_with_defaults_normalises_aliases_and_keeps_lines(write):
    path = write(
        "m.yaml",
        """\
defaults:
  aspect_ratio: "16:9"
  output_format: image/jpeg
items:
  - id: a
    prompt: first
    seed: 42
  - prompt: second
    aspect_ratio: 9:16
    output_format: jpg
    enhance_prompt: yes
  - id: c
    prompt: third
    output_format: PNG
    language: zh-CN
""",
    )
    a, b, c = manifest.load(path)
    assert (a.id, a.line) == ("a", 5)
    assert a.request == {
        "model": "imagen4-ultra",
        "input": {"prompt": "first", "seed": 42, "aspect_ratio": "widescreen_16_9", "output_format": "jpeg"},
    }
    assert b.line == 8
    assert b.input["aspect_ratio"] == "social_story_9_16"  # unquoted 9:16 is base-60 to YAML 1.1: text wins
    assert b.input["output_format"] == "jpeg" and b.input["enhance_prompt"] is True
    assert c.input["output_format"] == "png" and c.input["language"] == "zh-CN"


def test_top_level_list_and_item_is_immutable(write):
    (item,) = manifest.load(write("m.yml", "- prompt: hello\n"))
    with pytest.raises(TypeError):
        item.input["prompt"] = "changed"  # type: ignore[index]
    with pytest.raises(AttributeError):
        item.id = "x"  # type: ignore[misc]


def test_derived_id_is_sha256_of_canonical_request(write):
    (item,) = manifest.load(write("m.yaml", "- prompt: hello\n  aspect_ratio: '1:1'\n  seed: 3\n"))
    request = {"model": "imagen4-ultra", "input": {"prompt": "hello", "aspect_ratio": "square_1_1", "seed": 3}}
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"))
    assert item.id == hashlib.sha256(canonical.encode()).hexdigest()[:12]


def test_derived_ids_are_stable_across_order_formats_and_aliases(write):
    yaml_items = manifest.load(write("m.yaml", "- {prompt: one, seed: 1}\n- {prompt: two, aspect_ratio: '4:3'}\n"))
    reordered = manifest.load(
        write("r.yaml", "- {aspect_ratio: classic_4_3, prompt: two}\n- {seed: '1', prompt: one}\n")
    )
    csv_items = manifest.load(write("m.csv", "prompt,seed,aspect_ratio\none,1,\ntwo,,4:3\n"))
    ids = sorted(i.id for i in yaml_items)
    assert ids == sorted(i.id for i in reordered) == sorted(i.id for i in csv_items)


def test_csv_bom_quotes_newlines_types_and_row_lines(write):
    path = write(
        "m.csv",
        "\ufeffid,prompt,seed,enhance_prompt,compression_quality\n"
        'a,"a prompt, with a comma",5,no,\n'
        'b,"two\nlines",,TRUE,80\n'
        ",,,,\n"
        "c,third,,1,\n",
    )
    a, b, c = manifest.load(path)
    assert a.input == {"prompt": "a prompt, with a comma", "seed": 5, "enhance_prompt": False}
    assert b.input == {"prompt": "two\nlines", "enhance_prompt": True, "compression_quality": 80}
    assert (a.line, b.line, c.line) == (2, 3, 6)
    assert c.input["enhance_prompt"] is True


# (manifest file name, content, the exact problems expected)
CASES = [
    (
        "seed.yaml",
        "- id: a\n  prompt: p\n  seed: 0\n",
        ["seed.yaml:1: item 'a': seed: expected an integer >= 1, got 0"],
    ),
    (
        "seedtype.yaml",
        "- id: a\n  prompt: p\n  seed: 1.5\n",
        ["seedtype.yaml:1: item 'a': seed: expected an integer, got a number (1.5)"],
    ),
    (
        "quality.yaml",
        "- id: a\n  prompt: p\n  compression_quality: 101\n",
        ["quality.yaml:1: item 'a': compression_quality: expected an integer from 1 to 100, got 101"],
    ),
    ("blank.yaml", "- id: a\n  prompt: '   '\n", ["blank.yaml:1: item 'a': prompt: must not be blank"]),
    ("missing.yaml", "- id: a\n  seed: 3\n", ["missing.yaml:1: item 'a': prompt: required, and missing"]),
    ("noid.yaml", "- prompt: ok\n- seed: 3\n", ["noid.yaml:2: item #2: prompt: required, and missing"]),
    (
        "model.yaml",
        "- id: a\n  prompt: p\n  model: imagen3\n",
        [
            "model.yaml:1: item 'a': model: unknown model 'imagen3'; did you mean 'imagen4-ultra'? "
            "(`batchgen models` lists them)"
        ],
    ),
    (
        "enum.yaml",
        "- id: a\n  prompt: p\n  person_generation: everyone\n",
        [
            "enum.yaml:1: item 'a': person_generation: expected one of dont_allow, allow_adult, allow_all; "
            "got 'everyone'"
        ],
    ),
    (
        "lang.yaml",
        "- id: a\n  prompt: p\n  language: fr\n",
        ["lang.yaml:1: item 'a': language: expected one of auto, en, zh, zh-CN, hi, ja, ko, pt, es; got 'fr'"],
    ),
    (
        "safety.yaml",
        "- id: a\n  prompt: p\n  safety_settings: none\n",
        [
            "safety.yaml:1: item 'a': safety_settings: expected one of block_low_and_above, block_medium_and_above, "
            "block_only_high, block_none; got 'none'"
        ],
    ),
    (
        "bool.yaml",
        "- id: a\n  prompt: p\n  enhance_prompt: maybe\n",
        ["bool.yaml:1: item 'a': enhance_prompt: expected true or false (or yes/no, 1/0); got 'maybe'"],
    ),
    (
        "unknown.yaml",
        "- id: a\n  prompt: p\n  aspect-ratio: '16:9'\n",
        ["unknown.yaml:1: item 'a': aspect-ratio: unknown field; did you mean 'aspect_ratio'?"],
    ),
    (
        "unknown2.yaml",
        "- id: a\n  prompt: p\n  negative_prompt: x\n",
        [
            "unknown2.yaml:1: item 'a': negative_prompt: unknown field; known fields are id, model, callBackUrl, "
            "prompt, aspect_ratio, person_generation, safety_settings, seed, enhance_prompt, language, output_format, "
            "compression_quality, width, height, input_image, input_image_2, input_image_3, input_image_4, "
            "reference_images, prompt_upsampling, resolution, image_input, use_google_search_tool, "
            "enable_safety_checker, image_size, num_inference_steps, matrix, count"
        ],
    ),
    (
        "badid.yaml",
        "- id: -bad\n  prompt: p\n",
        [
            "badid.yaml:1: item '-bad': id: expected letters, digits, '.', '_' or '-' (at most 100, starting with a "
            "letter or digit); got '-bad'"
        ],
    ),
    (
        "dupid.yaml",
        "- id: a\n  prompt: p\n- id: a\n  prompt: q\n",
        ["dupid.yaml:3: item 'a': id: id 'a' is already used by the item on line 1"],
    ),
    (
        "duprequest.yaml",
        "- prompt: same\n  seed: 2\n- seed: 2\n  prompt: same\n",
        [
            "duprequest.yaml:3: item #2: the same request as the item on line 1 (id '3088164f9f48'); "
            "give one of them an id, or remove it"
        ],
    ),
    (
        "http.yaml",
        "- id: a\n  prompt: p\n  callBackUrl: http://example.com/cb\n",
        ["http.yaml:1: item 'a': callBackUrl: must be https:// (plain http:// is allowed only to a loopback address)"],
    ),
    (
        "ftp.yaml",
        "- id: a\n  prompt: p\n  callBackUrl: ftp://example.com/cb\n",
        ["ftp.yaml:1: item 'a': callBackUrl: expected an https:// URL; got 'ftp://example.com/cb'"],
    ),
    ("twice.yaml", "- id: a\n  prompt: p\n  prompt: q\n", ["twice.yaml:1: item 'a': prompt: given twice"]),
    (
        "defaults.yaml",
        "defaults:\n  seed: -1\n  id: x\nitems:\n  - prompt: p\n",
        [
            "defaults.yaml:3: defaults.id: an id cannot be a default: each item has its own",
            "defaults.yaml:2: defaults.seed: expected an integer >= 1, got -1",
        ],
    ),
    (
        "toplevel.yaml",
        "prompt: p\n",
        [
            "toplevel.yaml:1: unknown top-level key 'prompt': expected 'defaults' and 'items', or a list of items "
            "(a single item must still be inside a list)",
            "toplevel.yaml:1: no 'items' list",
        ],
    ),
    ("notlist.yaml", "items: 3\n", ["notlist.yaml:1: items: expected a list of items"]),
    ("emptylist.yaml", "items: []\n", ["emptylist.yaml:1: no items: the list is empty"]),
    ("scalar.yaml", "- just a string\n", ["scalar.yaml:1: item #1: expected a mapping of field: value"]),
    ("empty.yaml", "", ["empty.yaml: the file is empty: expected a list of items"]),
    ("comments.yaml", "# nothing but a comment\n", ["comments.yaml: the file is empty: expected a list of items"]),
    ("empty.csv", "", ["empty.csv: the file is empty: expected a list of items"]),
    ("header.csv", "id,prompt\n", ["header.csv:1: no items: the file has a header row only"]),
    ("noprompt.csv", "id,seed\na,1\n", ["noprompt.csv:1: prompt: the header has no 'prompt' column"]),
    (
        "csvunknown.csv",
        "id,prompt,Aspect Ratio\na,p,1:1\n",
        ["csvunknown.csv:1: Aspect Ratio: unknown field; did you mean 'aspect_ratio'?"],
    ),
    ("cells.csv", "prompt,seed\np,1,extra\n", ["cells.csv:2: item #1: row has 3 cells but the header names 2"]),
    (
        "csvtypes.csv",
        "id,prompt,seed,enhance_prompt\na,p,x,\nb,q,,perhaps\n",
        [
            "csvtypes.csv:2: item 'a': seed: expected an integer, got 'x'",
            "csvtypes.csv:3: item 'b': enhance_prompt: expected true or false (or yes/no, 1/0); got 'perhaps'",
        ],
    ),
    ("manifest.json", "[]", ["manifest.json: unknown manifest type '.json': name it .yaml, .yml or .csv"]),
]


@pytest.mark.parametrize(("name", "content", "expected"), CASES, ids=[c[0] for c in CASES])
def test_each_rule_names_file_line_item_and_field(write, name, content, expected):
    path = write(name, content)
    found = problems(path)
    assert found == [e.replace(name, str(path), 1) for e in expected]


def test_yaml_syntax_error_reports_its_line(write):
    path = write("syntax.yaml", "- id: a\n  prompt: ok\n- id: b\n  prompt: [unclosed\n- id: c\n")
    (message,) = problems(path)
    assert message.startswith(f"{path}:5: YAML syntax error")


def test_merge_keys_are_refused_with_a_pointer_to_defaults(write):
    path = write("merge.yaml", "defaults: &b {seed: 1}\nitems:\n  - <<: *b\n    prompt: p\n")
    found = problems(path)
    assert f"{path}:3: item #1: <<: YAML merge keys (<<) are not supported; use 'defaults:'" in found


def test_all_problems_reported_in_one_pass(write):
    path = write("many.yaml", "".join(f"- id: i{n}\n  prompt: p{n}\n  seed: 0\n" for n in range(50)))
    assert len(problems(path)) == 50


def test_long_prompt_is_refused(write):
    path = write("long.csv", "prompt\n" + "x" * 30_000 + "\n")
    assert problems(path) == [f"{path}:2: item #1: prompt: too long (30,000 characters; the limit is 20,000)"]


def test_validate_reports_every_file_in_one_pass(write):
    good = write("good.yaml", "- prompt: fine\n")
    bad1 = write("bad1.yaml", "- seed: 1\n")
    bad2 = write("bad2.csv", "prompt,seed\np,0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "batchgen", "validate", str(good), str(bad1), str(bad2)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert f"{good}: 1 item, valid" in proc.stdout
    assert proc.stderr.splitlines() == [
        f"{bad1}:1: item #1: prompt: required, and missing",
        f"{bad2}:2: item #1: seed: expected an integer >= 1, got 0",
        "2 problems found; nothing would be submitted",
    ]


# Hostile files: each is a clean exit 2 within a second or two, never a traceback.
def _hostile() -> dict[str, bytes]:
    laughs = ["a: &a [" + ",".join(['"lol"'] * 10) + "]"]
    for level in range(1, 10):
        laughs.append(f"{chr(97 + level)}: &{chr(97 + level)} [" + ",".join([f"*{chr(96 + level)}"] * 10) + "]")
    laughs.append("items: [*j, *j, *j]")
    return {
        "laughs.yaml": "\n".join(laughs).encode(),
        "laughs_items.yaml": (
            "x: &x [" + ",".join(["lol"] * 1000) + "]\nitems:\n" + "- {prompt: *x}\n" * 1000
        ).encode(),
        "deep.yaml": b"[" * 100_000 + b"]" * 100_000,
        "deepmap.yaml": b"".join(b"  " * d + b"k:\n" for d in range(3000)),
        "junk.yaml": bytes(range(256)) * 1200,
        "junk.csv": bytes(range(256)) * 1200,
        "nul.yaml": b"- prompt: a\0b\n",
        "nul.csv": b"prompt\na\0b\n",
        "bigcell.csv": b'prompt\n"' + b"x" * 3_000_000 + b'"\n',
        "hugecell.csv": b'prompt\n"' + b"x" * 9_000_000 + b'"\n',
        "tabs.yaml": b"- prompt: a\n\tseed: 1\n",
        "latin1.csv": "prompt\ncaf\u00e9\n".encode("latin-1"),
    }


@pytest.mark.parametrize("name", list(_hostile()))
def test_hostile_files_exit_2_within_cpu_and_memory_caps_without_traceback(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(_hostile()[name])
    cpu_seconds, memory = 10, 1536 * 1024 * 1024  # CPU time, not wall time: a loaded machine cannot fail it

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    proc = subprocess.run(
        [sys.executable, "-m", "batchgen", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=cap,
    )
    assert proc.returncode == 2, proc.stderr  # SIGXCPU or MemoryError would not be a clean exit 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(str(path)), proc.stderr


def test_validate_cli_exit_codes_and_sample_manifests():
    root = Path(__file__).resolve().parents[1] / "sample_manifests"
    ok = subprocess.run(
        [sys.executable, "-m", "batchgen", "validate", str(root / "demo.yaml"), str(root / "demo.csv")],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "demo.yaml: 8 items, valid" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "batchgen", "validate", str(root / "invalid.yaml")], capture_output=True, text=True
    )
    assert bad.returncode == 2
    lines = bad.stderr.splitlines()
    assert any(":10: item 'typo-field': aspect-ratio: unknown field; did you mean 'aspect_ratio'?" in x for x in lines)
    assert any("item 'good-one': id: id 'good-one' is already used by the item on line" in x for x in lines)
    assert lines[-1].endswith("nothing would be submitted")


def test_demo_yaml_and_csv_describe_the_same_requests():
    root = Path(__file__).resolve().parents[1] / "sample_manifests"
    from_yaml = {i.id: i.canonical for i in manifest.load(root / "demo.yaml")}
    from_csv = {i.id: i.canonical for i in manifest.load(root / "demo.csv")}
    assert from_yaml == from_csv
