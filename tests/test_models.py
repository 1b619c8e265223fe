"""Model cards (SPEC §2 "Models"): the cards as data, per-model validation, and ids that do not move."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchgen import manifest, models, schema
from batchgen.errors import CardError, ManifestError
from batchgen.sim import SimConfig, Simulator
from batchgen.sim.model import invalid as model_invalid

from .helpers import cli, env_without_config, run_args

FIXTURES = Path(__file__).parent / "fixtures"
CARDS = models.builtin()


def _old_schema() -> Any:
    """batchgen/schema.py as it was before model cards (a frozen copy)."""
    spec = importlib.util.spec_from_file_location("schema_v0", FIXTURES / "schema_v0.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["schema_v0"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


OLD = _old_schema()

# Every kind of value a manifest can hand a field: YAML's types, CSV's text, spellings, bounds and beyond.
PROBES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2,
    42,
    99,
    100,
    101,
    1.5,
    2**63 - 1,
    2**63,
    -(2**63),
    10**40,
    10**41,
    "",
    " ",
    "   ",
    "0",
    "1",
    "-1",
    "01",
    "+3",
    "1_0",
    "0x10",
    " 3 ",
    "٣",
    "³",
    "42",
    "100",
    "101",
    "9223372036854775807",
    "9223372036854775808",
    "1" * 40,
    "1" * 41,
    "-" + "1" * 41,
    "true",
    "True",
    "TRUE",
    " yes ",
    "Yes",
    "no",
    "NO",
    "on",
    "Off",
    "1",
    "0",
    "perhaps",
    "y",
    "n",
    "png",
    "PNG",
    " png ",
    "jpeg",
    "jpg",
    "JPG",
    "image/jpeg",
    "image/png",
    "Image/PNG",
    "webp",
    "gif",
    "1:1",
    "9:16",
    "16:9",
    "3:4",
    "4:3",
    "21:9",
    "square_1_1",
    "SQUARE_1_1",
    "widescreen_16_9",
    " 16:9 ",
    "dont_allow",
    "allow_adult",
    "allow_all",
    "Allow_All",
    "block_none",
    "block_only_high",
    "BLOCK_LOW_AND_ABOVE",
    "auto",
    "en",
    "zh",
    "zh-CN",
    "zh-cn",
    "ZH-CN",
    "hi",
    "ja",
    "ko",
    "pt",
    "es",
    "fr",
    "a prompt",
    "x" * 20_000,
    "x" * 20_001,
    " " * 20_001,
    "é" * 19_999,
    [],
    ["a"],
    {},
    {"a": 1},
]


def _outcome(spec: Any, value: Any, error: type[Exception]) -> tuple[str, Any]:
    try:
        result = spec.normalise(value)
    except error as exc:
        return "error", str(exc)
    return "ok", (type(result), result)


def test_the_imagen4_ultra_card_reproduces_the_old_table_exactly():
    card = CARDS.get("imagen4-ultra")
    assert card is not None and card.source == "built-in"
    assert list(card.fields) == list(OLD.INPUT_FIELDS)
    compared = 0
    for name, old in OLD.INPUT_FIELDS.items():
        new = card.fields[name]
        for value in PROBES:
            assert _outcome(new, value, schema.FieldError) == _outcome(old, value, OLD.FieldError), (name, value)
            compared += 1
        for value in (*old.choices, *old.aliases):  # every documented spelling, and each in other cases
            for spelling in (value, value.upper(), value.lower(), f" {value} "):
                assert _outcome(new, spelling, schema.FieldError) == _outcome(old, spelling, OLD.FieldError)
    assert compared == len(OLD.INPUT_FIELDS) * len(PROBES)
    assert dict(card.sizes) == OLD.IMAGE_SIZES and schema.IMAGE_SIZES == OLD.IMAGE_SIZES
    assert {k: schema.EXTENSIONS[k] for k in OLD.EXTENSIONS} == OLD.EXTENSIONS
    assert schema.MODEL == OLD.MODEL and schema.MAX_SEED == OLD.MAX_SEED == 2**63 - 1
    assert card.fields["prompt"].max_length == OLD.MAX_TEXT == 20_000
    assert card.fields["aspect_ratio"].default == "square_1_1"  # documentation only: see the id test below


def test_every_built_in_card_is_there_and_defaults_stay_out_of_requests_and_ids(write):
    assert set(CARDS.cards) == {
        "imagen4-ultra",
        "nano-banana-pro",
        "nano-banana-pro-flash",
        "seedream-v4-5",
        "z-image",
        "flux-2-pro",
    }
    path = write("d.yaml", "- prompt: a fox\n- prompt: a fox\n  model: nano-banana-pro\n")
    plain, nano = manifest.load(path)
    assert plain.request == {"model": "imagen4-ultra", "input": {"prompt": "a fox"}}
    assert nano.request == {"model": "nano-banana-pro", "input": {"prompt": "a fox"}}  # no 1:1, no 2K added
    assert plain.id == manifest.derive_id('{"input":{"prompt":"a fox"},"model":"imagen4-ultra"}')
    assert nano.id == manifest.derive_id('{"input":{"prompt":"a fox"},"model":"nano-banana-pro"}')


# ---------------------------------------------------------------- per-model validation tables

URL = "https://img.example.org/ref"
# (model, fields beside a valid prompt, the problem expected as "field: message start", or None when valid).
# Every constraint MODELS.md states (not those it marks [I]) has a failing and a passing case.
TABLE: list[tuple[str, dict[str, Any], str | None]] = [
    # imagen4-ultra (the seed table)
    ("imagen4-ultra", {"prompt": "   "}, "prompt: must not be blank"),
    ("imagen4-ultra", {"prompt": "x" * 20_000}, None),
    ("imagen4-ultra", {"prompt": "x" * 20_001}, "prompt: too long"),
    ("imagen4-ultra", {"aspect_ratio": "16:9"}, None),
    ("imagen4-ultra", {"aspect_ratio": "2:3"}, "aspect_ratio: expected one of square_1_1"),
    ("imagen4-ultra", {"person_generation": "allow_all"}, None),
    ("imagen4-ultra", {"person_generation": "everyone"}, "person_generation: expected one of"),
    ("imagen4-ultra", {"safety_settings": "block_none"}, None),
    ("imagen4-ultra", {"safety_settings": "block_all"}, "safety_settings: expected one of"),
    ("imagen4-ultra", {"seed": 1}, None),
    ("imagen4-ultra", {"seed": 0}, "seed: expected an integer >= 1"),
    ("imagen4-ultra", {"enhance_prompt": "yes"}, None),
    ("imagen4-ultra", {"enhance_prompt": "maybe"}, "enhance_prompt: expected true or false"),
    ("imagen4-ultra", {"language": "zh-CN"}, None),
    ("imagen4-ultra", {"language": "fr"}, "language: expected one of"),
    ("imagen4-ultra", {"output_format": "image/jpeg"}, None),
    ("imagen4-ultra", {"output_format": "webp"}, "output_format: expected one of png, jpeg"),
    ("imagen4-ultra", {"compression_quality": 100}, None),
    ("imagen4-ultra", {"compression_quality": 0}, "compression_quality: expected an integer from 1 to 100"),
    ("imagen4-ultra", {"resolution": "2K"}, "resolution: model 'imagen4-ultra' has no field 'resolution'"),
    # nano-banana-pro
    ("nano-banana-pro", {"prompt": "ab"}, None),
    ("nano-banana-pro", {"prompt": "a"}, "prompt: too short (1 character; at least 2)"),
    ("nano-banana-pro", {"prompt": "x" * 3000}, None),
    ("nano-banana-pro", {"prompt": "x" * 3001}, "prompt: too long (3,001 characters; the limit is 3,000)"),
    ("nano-banana-pro", {"aspect_ratio": "21:9"}, None),
    ("nano-banana-pro", {"aspect_ratio": "widescreen_16_9"}, "aspect_ratio: expected one of 1:1, 2:3"),
    ("nano-banana-pro", {"resolution": "4K"}, None),
    ("nano-banana-pro", {"resolution": "8K"}, "resolution: expected one of 1K, 2K, 4K, low, medium, high"),
    ("nano-banana-pro", {"output_format": "png"}, None),
    ("nano-banana-pro", {"output_format": "jpeg"}, "output_format: expected one of png;"),
    ("nano-banana-pro", {"image_input": [f"{URL}.png", f"{URL}.JPG"], "reference_images": [f"{URL}.webp"]}, None),
    (
        "nano-banana-pro",
        {"image_input": [f"{URL}.png", f"{URL}.jpg"], "reference_images": [f"{URL}.webp", f"{URL}.jpeg"]},
        "reference_images: at most 3 in all of image_input, reference_images; got 4",
    ),
    ("nano-banana-pro", {"image_input": [f"{URL}.gif"]}, "image_input: item 1: the URL's path must end in .png"),
    ("nano-banana-pro", {"image_input": ["http://img.example.org/a.png"]}, "image_input: item 1: expected an https"),
    ("nano-banana-pro", {"image_input": ["data:image/webp;base64,UklGRg=="]}, None),
    ("nano-banana-pro", {"image_input": ["data:image/gif;base64,R0lGOD=="]}, "image_input: item 1: expected a base64"),
    ("nano-banana-pro", {"image_input": [URL + "1.png"] * 4}, "image_input: 4 references; at most 3"),
    ("nano-banana-pro", {"seed": 1}, "seed: model 'nano-banana-pro' has no field 'seed'; models that have it"),
    ("nano-banana-pro", {"use_google_search_tool": True}, "use_google_search_tool: model 'nano-banana-pro' has no"),
    # nano-banana-pro-flash: the same table, and the search tool
    ("nano-banana-pro-flash", {"use_google_search_tool": "yes"}, None),
    ("nano-banana-pro-flash", {"use_google_search_tool": "often"}, "use_google_search_tool: expected true or false"),
    ("nano-banana-pro-flash", {"prompt": "a"}, "prompt: too short"),
    ("nano-banana-pro-flash", {"resolution": "1K"}, None),
    ("nano-banana-pro-flash", {"image_input": [f"{URL}.png"] * 2, "reference_images": [f"{URL}2.png"]}, None),
    ("nano-banana-pro-flash", {"output_format": "jpg"}, "output_format: expected one of png;"),
    (
        "nano-banana-pro-flash",
        {"image_input": [f"{URL}.png"] * 2, "reference_images": [f"{URL}2.png"] * 2},
        "reference_images: at most 3 in all",
    ),
    # seedream-v4-5
    ("seedream-v4-5", {"aspect_ratio": "21:9"}, None),
    ("seedream-v4-5", {"aspect_ratio": "widescreen_16_9"}, None),
    ("seedream-v4-5", {"aspect_ratio": "5:4"}, "aspect_ratio: expected one of 1:1, 16:9"),
    ("seedream-v4-5", {"seed": 4294967296}, None),  # the upstream's range is an inference: not enforced
    ("seedream-v4-5", {"seed": "x"}, "seed: expected an integer"),
    ("seedream-v4-5", {"enable_safety_checker": False}, None),
    ("seedream-v4-5", {"enable_safety_checker": "sometimes"}, "enable_safety_checker: expected true or false"),
    ("seedream-v4-5", {"output_format": "png"}, "output_format: model 'seedream-v4-5' has no field"),
    ("seedream-v4-5", {"image_input": [f"{URL}.png"]}, "image_input: model 'seedream-v4-5' has no field"),
    ("seedream-v4-5", {"prompt": " "}, "prompt: must not be blank"),
    # z-image
    ("z-image", {"image_size": "landscape_16_9", "aspect_ratio": "16:9"}, None),  # image_size wins: not an error
    ("z-image", {"image_size": "anything_the_upstream_knows"}, None),  # upstream values [I]: passed through
    ("z-image", {"image_size": ["a"]}, "image_size: expected text, got a list"),
    ("z-image", {"num_inference_steps": 80}, None),  # upstream 1-50 [I]: not enforced
    ("z-image", {"num_inference_steps": 1.5}, "num_inference_steps: expected an integer"),
    ("z-image", {"seed": "-3"}, None),
    ("z-image", {"seed": "three"}, "seed: expected an integer"),
    ("z-image", {"output_format": "png"}, None),
    ("z-image", {"enable_safety_checker": "no"}, None),
    ("z-image", {"reference_images": [f"{URL}.png"]}, "reference_images: model 'z-image' has no field"),
    # flux-2-pro
    ("flux-2-pro", {"width": 256, "height": 1440}, None),
    ("flux-2-pro", {"width": 255, "height": 1440}, "width: expected an integer from 256 to 1440, got 255"),
    ("flux-2-pro", {"width": 1024, "height": 1441}, "height: expected an integer from 256 to 1440, got 1441"),
    ("flux-2-pro", {"width": 1024}, "height: width and height go together: give all of them or none"),
    ("flux-2-pro", {"height": 768}, "width: width and height go together"),
    ("flux-2-pro", {"aspect_ratio": "3:2"}, None),
    ("flux-2-pro", {"aspect_ratio": "5:4"}, "aspect_ratio: expected one of 1:1, 16:9"),
    ("flux-2-pro", {"input_image": f"{URL}.png", "input_image_4": "https://x.example.org/any"}, None),
    ("flux-2-pro", {"input_image_2": "ftp://x.example.org/a.png"}, "input_image_2: expected an https:// URL"),
    ("flux-2-pro", {"input_image": "data:image/png;base64,iVBORw=="}, "input_image: a data URI is not accepted"),
    (
        "flux-2-pro",
        {"input_image": f"{URL}1", "input_image_2": f"{URL}2", "reference_images": [f"{URL}3", f"{URL}4"]},
        None,
    ),
    (
        "flux-2-pro",
        {"input_image": f"{URL}1", "input_image_2": f"{URL}2", "reference_images": [f"{URL}3", f"{URL}4", f"{URL}5"]},
        "reference_images: at most 4 in all of input_image, input_image_2, input_image_3, input_image_4, "
        "reference_images; got 5",
    ),
    ("flux-2-pro", {"seed": 0, "prompt_upsampling": "on"}, None),
    ("flux-2-pro", {"prompt_upsampling": "always"}, "prompt_upsampling: expected true or false"),
    ("flux-2-pro", {"output_format": "png"}, "output_format: model 'flux-2-pro' has no field 'output_format'"),
]


def _problems_of(write, model: str, fields: dict[str, Any]) -> list[str]:
    item = {"id": "a", "model": model, "prompt": "a valid prompt", **fields}
    path = write("t.yaml", yaml.safe_dump([item], allow_unicode=True, width=1_000_000))
    try:
        manifest.load(path)
    except ManifestError as exc:
        return [str(p).split(": item 'a': ", 1)[1] for p in exc.problems]
    return []


@pytest.mark.parametrize(("model", "fields", "expected"), TABLE, ids=[f"{m}-{i}" for i, (m, *_) in enumerate(TABLE)])
def test_per_model_validation_table(write, model, fields, expected):
    found = _problems_of(write, model, fields)
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].startswith(expected), found


def test_the_table_covers_every_card_and_each_constraint_fails_and_passes():
    for card in CARDS.cards.values():
        rows = [row for row in TABLE if row[0] == card.name]
        assert any(e is None for *_, e in rows) and any(e is not None for *_, e in rows), card.name
        for constraint in card.constraints:  # a row that breaks it, and one that gives its fields and does not
            named = [row for row in rows if set(row[1]) & set(constraint.fields)]
            said = "go together" if constraint.kind == "together" else f"at most {constraint.limit} in all"
            assert any(e is None for *_, e in named) and any(e and said in e for *_, e in named), constraint


# ---------------------------------------------------------------- model per item, in defaults, from an axis


def test_a_defaults_field_the_model_lacks_is_skipped_on_the_item_it_is_an_error(write):
    path = write(
        "mixed.yaml",
        """\
defaults:
  language: en
  resolution: 4K
  model: nano-banana-pro
items:
  - id: banana
    prompt: a fox
  - id: imagen
    model: imagen4-ultra
    prompt: a fox
  - id: flux
    model: flux-2-pro
    prompt: a fox
""",
    )
    banana, imagen, flux = manifest.load(path)
    assert banana.request == {"model": "nano-banana-pro", "input": {"prompt": "a fox", "resolution": "4K"}}
    assert imagen.request == {"model": "imagen4-ultra", "input": {"prompt": "a fox", "language": "en"}}
    assert flux.request == {"model": "flux-2-pro", "input": {"prompt": "a fox"}}
    bad = write(
        "bad.yaml",
        "defaults:\n  resolution: 4K\nitems:\n  - id: x\n    prompt: a fox\n    language: en\n    model: flux-2-pro\n",
    )
    with pytest.raises(ManifestError) as info:
        manifest.load(bad)
    assert [str(p) for p in info.value.problems] == [
        f"{bad}:4: item 'x': language: model 'flux-2-pro' has no field 'language'; models that have it: imagen4-ultra"
    ]


def test_a_matrix_axis_compares_models_and_unknown_models_suggest_the_nearest_card(write):
    path = write(
        "compare.yaml",
        """\
- id: cmp
  prompt: "a lighthouse at dusk"
  model: "{m}"
  matrix:
    m: [imagen4-ultra, nano-banana-pro, seedream-v4-5, flux-2-pro]
""",
    )
    items = manifest.load(path)
    assert [(i.id, i.model) for i in items] == [
        ("cmp-imagen4_ultra_0b0820c2", "imagen4-ultra"),
        ("cmp-nano_banana_pro_33aa9999", "nano-banana-pro"),
        ("cmp-seedream_v4_5_0c650b22", "seedream-v4-5"),
        ("cmp-flux_2_pro_ccf65a32", "flux-2-pro"),
    ]
    assert all(i.input == {"prompt": "a lighthouse at dusk"} for i in items)
    bad = write("typo.yaml", "- prompt: p\n  model: '{m}'\n  matrix:\n    m: [flux-pro, dall-e-3, imagen3]\n")
    with pytest.raises(ManifestError) as info:
        manifest.load(bad)
    messages = [p.message for p in info.value.problems]
    assert "unknown model 'flux-pro'; did you mean 'flux-2-pro'?" in messages[0]
    assert messages[1] == (
        "unknown model 'dall-e-3'; known models: flux-2-pro, imagen4-ultra, nano-banana-pro, "
        "nano-banana-pro-flash, seedream-v4-5, z-image (`batchgen models` lists them)"
    )
    assert "unknown model 'imagen3'; did you mean 'imagen4-ultra'?" in messages[2]


def test_every_problem_of_every_model_at_once(write):
    path = write(
        "many.yaml",
        """\
- id: a
  model: flux-2-pro
  prompt: p
  width: 9000
  language: en
- id: b
  model: nano-banana-pro
  prompt: q
  seed: 3
- id: c
  model: nano_banana_pro
  prompt: r
  colour: red
""",
    )
    with pytest.raises(ManifestError) as info:
        manifest.load(path)
    assert [str(p).removeprefix(f"{path}:") for p in info.value.problems] == [
        "1: item 'a': width: expected an integer from 256 to 1440, got 9000",
        "1: item 'a': language: model 'flux-2-pro' has no field 'language'; models that have it: imagen4-ultra",
        "6: item 'b': prompt: too short (1 character; at least 2)",
        "6: item 'b': seed: model 'nano-banana-pro' has no field 'seed'; models that have it: flux-2-pro, "
        "imagen4-ultra, seedream-v4-5, z-image",
        "10: item 'c': colour: unknown field; known fields are " + ", ".join(schema.MANIFEST_FIELDS),
        "10: item 'c': model: unknown model 'nano_banana_pro'; did you mean 'nano-banana-pro'? "
        "(`batchgen models` lists them)",
    ]


def test_csv_lists_are_a_json_array_or_one_item(write):
    path = write(
        "refs.csv",
        "id,model,prompt,image_input\n"
        'a,nano-banana-pro,two refs,"[""https://x.example.org/a.png"", ""https://x.example.org/b.webp""]"\n'
        "b,nano-banana-pro,one ref,https://x.example.org/c.jpg\n",
    )
    a, b = manifest.load(path)
    assert a.input["image_input"] == ["https://x.example.org/a.png", "https://x.example.org/b.webp"]
    assert b.input["image_input"] == ["https://x.example.org/c.jpg"]


async def test_validate_model_checks_as_if_every_item_used_it(write):
    path = write("night.yaml", "- prompt: a fox\n  seed: 4\n- prompt: b\n  aspect_ratio: '16:9'\n")
    validate = [sys.executable, "-m", "batchgen", "validate", str(path)]
    code, out, err = await cli(validate)
    assert code == 0, err
    code, out, err = await cli([*validate, "--model", "nano-banana-pro"])
    assert code == 2
    assert f"{path}:1: item #1: seed: model 'nano-banana-pro' has no field 'seed'" in err
    assert f"{path}:3: item #2: prompt: too short (1 character; at least 2)" in err
    code, out, err = await cli([*validate, "--model", "seedream-v4-5"])
    assert code == 0 and "2 items, valid" in out, (out, err)
    code, out, err = await cli([*validate, "--model", "seedream"])
    assert code == 2 and "--model: unknown model 'seedream'; did you mean 'seedream-v4-5'?" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------- ids do not move


async def test_a_ledger_made_before_model_cards_keeps_every_id_and_nothing_is_paid_again(tmp_path, sim_factory):
    source = FIXTURES / "v0_ledger"
    path = tmp_path / "night.yaml"
    shutil.copy(source / "night.yaml", path)
    out = tmp_path / "out"
    shutil.copytree(source / "out", out)
    (out / ".batchgen" / "lock").unlink(missing_ok=True)
    import json

    before = json.loads((out / "results.json").read_text())["items"]
    assert {i.id for i in manifest.load(path)} == set(before)  # every id as the old code derived it
    for item in manifest.load(path):
        assert item.same_request(before[item.id]["request"])
    async with sim_factory() as sim:
        code, _, err = await cli(run_args(path, out, sim))
        assert code == 0, err
        assert sim.stats.creates == 0
    assert "0 to submit" in err and "10 done" in err


# ---------------------------------------------------------------- the card format


def test_a_malformed_card_is_one_error_naming_file_and_line():
    good = (Path(models.__file__).parent / "cards" / "flux-2-pro.json").read_bytes()
    assert models.parse(good, "f.json", "x").name == "flux-2-pro"
    cases = {
        b'{"card": 1, "model": "m",\n "fields": {"prompt": {"type": "text", "required": true}},\n}': (
            "f.json:3: not valid JSON"
        ),
        b'{"card": 2}': "f.json:1: card: expected 1",
        b'{"card": 1, "model": "m", "fields": {\n"prompt": {"type": "text"}}}': "f.json:1: fields: every model",
        b'{"card": 1, "model": "m", "fields": {"prompt": {"type": "text", "required": true},\n'
        b'"seed": {"type": "integer"}}}': "f.json:2: fields.seed.type: expected one of text, enum",
        b'{"card": 1, "model": "m", "fields": {"prompt": {"type": "text", "required": true},\n'
        b'"seed": {"type": "int", "values": [1]}}}': "f.json:2: fields.seed: 'values' does not apply",
        b'{"card": 1, "model": "m", "fields": {"prompt": {"type": "text", "required": true},\n'
        b'"r": {"type": "enum", "values": ["a"],\n "default": "b"}}}': "f.json:3: fields.r.default: expected one of a",
        b'{"card": 1, "model": "m", "fields": {"prompt": {"type": "text", "required": true}},\n'
        b'"constraints": [{"together": ["w", "h"]}]}': "f.json:2: constraints.together: 'w' is not a field",
        b'{"card": 1, "model": "m", "sunset": "soon",\n"fields": {"prompt": {"type": "text", "required": true}}}': (
            "f.json:1: sunset: expected a date"
        ),
        b'{"card": 1, "model": "m", "colour": 3}': "f.json:1: a card: unknown key 'colour'",
        b"\xff\xfe": "f.json:1: not UTF-8 text",
        b"[" * 10_000: "f.json",
        b'{"card": 1, "card": 1}': "f.json:1: a card.card: given twice",
    }
    for data, expected in cases.items():
        with pytest.raises(CardError) as info:
            models.parse(data, "f.json", "x")
        assert str(info.value).startswith(expected), (data[:60], str(info.value))
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------- user cards

FAST_CARD = """\
{"card": 1, "model": "imagen4-fast", "successor": "nano-banana-pro-flash",
 "fields": {"prompt": {"type": "text", "required": true, "max_length": 500},
            "aspect_ratio": {"type": "enum", "values": ["square_1_1", "widescreen_16_9"],
                             "aliases": {"16:9": "widescreen_16_9"}}}}
"""


def _validate(path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "batchgen", "validate", str(path), *extra]


async def test_user_cards_add_a_model_from_the_flag_the_variable_or_the_config_folder(tmp_path, write):
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "imagen4-fast.json").write_text(FAST_CARD)
    path = write("fast.yaml", "- prompt: a fox\n  model: imagen4-fast\n  aspect_ratio: '16:9'\n")
    code, _, err = await cli(_validate(path), env=env_without_config())
    assert code == 2 and "unknown model 'imagen4-fast'; did you mean 'imagen4-ultra'?" in err
    code, out, err = await cli(_validate(path, "--models-dir", str(cards)), env=env_without_config())
    assert code == 0 and "1 item, valid" in out, err
    code, out, err = await cli(_validate(path), env=env_without_config(BATCHGEN_MODELS_DIR=str(cards)))
    assert code == 0, err
    xdg = tmp_path / "xdg"
    (xdg / "batchgen").mkdir(parents=True)
    shutil.copytree(cards, xdg / "batchgen" / "models")
    code, out, err = await cli(_validate(path), env=env_without_config(XDG_CONFIG_HOME=str(xdg)))
    assert code == 0, err
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    shutil.copytree(cards, home / ".config" / "batchgen" / "models")
    code, out, err = await cli(_validate(path), env=env_without_config(HOME=str(home)))
    assert code == 0, err
    long = write("long.yaml", f"- prompt: {'x' * 501}\n  model: imagen4-fast\n")
    code, out, err = await cli(_validate(long, "--models-dir", str(cards)), env=env_without_config())
    assert code == 2 and "prompt: too long (501 characters; the limit is 500)" in err
    code, out, err = await cli(_validate(path, "--models-dir", str(tmp_path / "none")), env=env_without_config())
    assert code == 2 and f"--models-dir: {tmp_path / 'none'} is not a directory" in err and "Traceback" not in err


async def test_a_user_card_that_replaces_a_built_in_one_says_so_and_the_ledger_records_its_sha256(
    tmp_path, write, sim_factory
):
    import hashlib
    import json

    cards = tmp_path / "cards"
    cards.mkdir()
    built_in = Path(models.__file__).parent / "cards" / "imagen4-ultra.json"
    strict = json.loads(built_in.read_text())
    strict["fields"]["prompt"]["max_length"] = 40
    text = json.dumps(strict)
    (cards / "mine.json").write_text(text)
    path = write("night.yaml", "- prompt: a fox in the snow\n")
    code, _, err = await cli(_validate(path, "--models-dir", str(cards)), env=env_without_config())
    assert code == 0 and f"model card {cards / 'mine.json'} replaces the built-in card of imagen4-ultra" in err
    async with sim_factory() as sim:
        code, _, err = await cli(
            run_args(path, tmp_path / "out", sim, "--models-dir", str(cards)), env=env_without_config()
        )
        assert code == 0, err
        assert f"model card {cards / 'mine.json'} replaces the built-in card of imagen4-ultra" in err
        recorded = json.loads((tmp_path / "out" / "results.json").read_text())["cards"]
        assert recorded == {
            "imagen4-ultra": {"sha256": hashlib.sha256(text.encode()).hexdigest(), "source": str(cards / "mine.json")}
        }
        code, _, err = await cli(run_args(path, tmp_path / "out2", sim), env=env_without_config())
        assert code == 0, err
    recorded = json.loads((tmp_path / "out2" / "results.json").read_text())["cards"]
    assert recorded == {
        "imagen4-ultra": {"sha256": hashlib.sha256(built_in.read_bytes()).hexdigest(), "source": "built-in"}
    }


async def test_a_malformed_or_hostile_card_file_is_one_clear_error(tmp_path, write):
    import os

    path = write("night.yaml", "- prompt: a fox\n")
    cards = tmp_path / "cards"
    cards.mkdir()
    bad = cards / "broken.json"
    bad.write_text(
        '{"card": 1, "model": "x",\n  "fields": {"prompt": {"type": "text", "required": true},\n'
        '    "steps": {"type": "int", "min": "one"}}}\n'
    )
    code, _, err = await cli(_validate(path, "--models-dir", str(cards)), env=env_without_config())
    assert code == 2 and "Traceback" not in err
    assert f"{bad}:3: fields.steps.min: expected an integer from" in err
    bad.write_text("{not json")
    code, _, err = await cli(_validate(path, "--models-dir", str(cards)), env=env_without_config())
    assert code == 2 and f"{bad}:1: not valid JSON" in err and "Traceback" not in err
    bad.unlink()
    os.mkfifo(cards / "fifo.json")  # read as any input is: never blocks on a FIFO
    code, _, err = await cli(_validate(path, "--models-dir", str(cards)), env=env_without_config())
    assert code == 2 and f"{cards / 'fifo.json'}: cannot read the card: not a regular file" in err
    (cards / "fifo.json").unlink()
    (cards / "zero.json").symlink_to("/dev/zero")
    code, _, err = await cli(_validate(path, "--models-dir", str(cards)), env=env_without_config())
    assert code == 2 and "cannot read the card: not a regular file" in err
    (cards / "zero.json").unlink()
    (cards / "big.json").write_bytes(b" " * (models.MAX_CARD_BYTES + 1))
    code, _, err = await cli(_validate(path, "--models-dir", str(cards)), env=env_without_config())
    assert code == 2 and "the card is 262,145 bytes; the limit is 262,144" in err
    (cards / "big.json").unlink()
    (cards / "a.json").write_text(FAST_CARD)
    (cards / "b.yaml").write_text(FAST_CARD)
    code, _, err = await cli(_validate(path, "--models-dir", str(cards)), env=env_without_config())
    assert code == 2 and f"{cards / 'b.yaml'}: model 'imagen4-fast' is already defined by {cards / 'a.json'}" in err


async def test_the_simulator_serves_the_users_cards_so_a_user_model_runs_offline(tmp_path, write):
    """SPEC §5 and issue 20: `run --simulate --models-dir` and `batchgen sim --models-dir` serve a user's card (a
    model the built-in cards do not know), validated by that card, instead of answering "unsupported model"."""
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "imagen4-fast.json").write_text(FAST_CARD)
    path = write("fast.yaml", "- prompt: a fox\n  model: imagen4-fast\n  aspect_ratio: '16:9'\n")
    out = tmp_path / "out"
    args = [sys.executable, "-m", "batchgen", "run", str(path), "--out", str(out), "--simulate"]
    code, _, err = await cli([*args, "--models-dir", str(cards)], env=env_without_config())
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["items"]
    assert {r["state"] for r in json.loads((out / "results.json").read_text())["items"].values()} == {"succeeded"}
    sim = Simulator(SimConfig(latency=0.05, jitter=0), models.registry(str(cards), {}, []))
    assert model_invalid({"model": "imagen4-fast", "input": {"prompt": "a fox"}}, sim.cards) is None
    assert model_invalid({"model": "imagen4-fast", "input": {"prompt": "x" * 501}}, sim.cards) is not None
    assert "unsupported model" in str(model_invalid({"model": "imagen4-fast", "input": {"prompt": "a"}}, CARDS))


# ---------------------------------------------------------------- batchgen models


async def test_models_lists_the_cards_and_shows_one_cards_fields(tmp_path):
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "imagen4-fast.json").write_text(FAST_CARD.replace('"successor"', '"sunset": "2026-08-17", "successor"'))
    command = [sys.executable, "-m", "batchgen", "models"]
    code, out, err = await cli([*command, "--models-dir", str(cards)], env=env_without_config())
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["model", "card", "successor", "sunset"]
    assert [line.split()[0] for line in lines[1:]] == sorted([*CARDS.cards, "imagen4-fast"])
    assert f"imagen4-fast           {cards / 'imagen4-fast.json'}  nano-banana-pro-flash  2026-08-17" in out
    assert "imagen4-ultra          built-in" in out and "nano-banana-pro" in out
    code, out, err = await cli([*command, "flux-2-pro"], env=env_without_config())
    assert code == 0, err
    assert "width              int              1024     integer 256 to 1440" in out
    assert "  width and height: all of them or none" in out
    assert "  at most 4 references in all of input_image, input_image_2, input_image_3, input_image_4," in out
    code, out, err = await cli([*command, "nano-banana"], env=env_without_config())
    assert code == 2 and "unknown model 'nano-banana'; did you mean 'nano-banana-pro" in err


def test_the_docs_quote_every_built_in_cards_table_as_the_cards_say():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    for card in CARDS.cards.values():
        table = models.field_table(card)
        body = "\n".join(table[table.index("") + 1 :])
        assert body in docs, f"docs/models.md: the table of {card.name} differs from its card"


def test_a_card_holds_only_printable_text_it_may_show():
    for bad in ('"title": "x\\u001b[2J"', '"successor": "a b"', '"page": "p\\u202e"'):
        data = (
            '{"card": 1, "model": "m", ' + bad + ', "fields": {"prompt": {"type": "text", "required": true}}}'
        ).encode()
        with pytest.raises(CardError, match=r"f\.json:1: "):
            models.parse(data, "f.json", "x")


async def test_a_card_file_name_with_escapes_is_shown_escaped(tmp_path):
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "evil\x1b[2J.json").write_text(FAST_CARD.replace("imagen4-fast", "imagen4-ultra"))
    code, out, err = await cli(
        [sys.executable, "-m", "batchgen", "models", "--models-dir", str(cards)], env=env_without_config()
    )
    assert code == 0, err
    assert "\x1b" not in out + err and "\\x1b[2J.json" in out and "\\x1b[2J.json" in err
    # escaped as every outside name is (escapes.inert_line), not as a Python repr in quotes
    assert f"{cards}/evil\\x1b[2J.json" in out and f"{cards}/evil\\x1b[2J.json" in err and f"'{cards}" not in out + err


def test_built_in_cards_read_by_libyaml_are_the_cards_the_pure_python_reader_makes():
    """The shipped cards are read with libyaml's parser (every start reads them); a user's card with PyYAML's own,
    whose messages the other tests pin. Both make the same cards of the shipped files."""
    import dataclasses
    from importlib import resources

    from batchgen import card_format

    for entry in (resources.files("batchgen") / "cards").iterdir():
        if entry.name.endswith(".json"):
            data = entry.read_bytes()
            fast = card_format.parse(data, entry.name, "built-in")
            slow = card_format.parse(data, entry.name, "user")
            assert fast == dataclasses.replace(slow, source="built-in"), entry.name
