"""--name TEMPLATE (issue 12, SPEC §3): names from an item's fields, subfolders inside DIR, collisions and names
outside DIR refused before anything is sent, and resume, status and the contact sheet following the ledger."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from batchgen import ledger, manifest, names
from batchgen.errors import UsageError

from .helpers import KEY, cli, env, manifest_of, run_args

GRID = """\
items:
  - id: zoo
    prompt: "A {animal} in the snow, photographed at dawn with a long lens"
    aspect_ratio: "{ratio}"
    matrix:
      animal: [fox, "snowy owl"]
      ratio: ["16:9", "1:1"]
  - id: plain
    prompt: "Ünïcode ☃"
"""


def test_render_stems_normalises_slugs_and_fills_unset_with_none(tmp_path):
    items = manifest.load(_grid(tmp_path))
    stems = names.render_stems(items, "{animal}/{aspect_ratio}_{seed}_{copy}-{prompt}", started=0)
    by_cell = {item.id: stems[item.id] for item in items}
    fox_wide = next(i.id for i in items if getattr(i, "cell", {}) == {"animal": "fox", "ratio": "16:9"})
    assert by_cell[fox_wide] == "fox/widescreen_16_9_none_1-a-fox-in-the-snow-photographed"
    owl = [s for s in stems.values() if s.startswith("snowy-owl/")]
    assert len(owl) == 2
    # An item without the axis renders it as `none`; a prompt with nothing safe left becomes a hash.
    plain = stems["plain"]
    assert plain.startswith("none/")
    assert names.slug("☃") == names.slug("☃") and len(names.slug("☃")) == 8
    assert names.slug("x" * 100).startswith("x" * 31 + "-") and len(names.slug("x" * 100)) == names.MAX_VALUE
    assert names.render_stems(items, "{date}/{id}", started=0)["plain"].startswith("1970-01-0")


def _grid(tmp_path: Path) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(GRID, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("{aspect_ratio}", "the name of item"),  # two cells share a ratio
        ("../{id}", "not a path inside DIR"),
        ("{id}/../../x", "not a path inside DIR"),
        ("/tmp/{id}", "absolute"),
        (".batchgen/{id}", "hidden"),
        ("results.json{id}", "keeps for itself"),
        ("results.json/{id}", "keeps for itself"),  # a folder of that name too
        ("index.html/{id}", "keeps for itself"),  # refused, never silently renamed to _index.html/...
        ("Index.HTML/{id}", "keeps for itself"),  # a case-insensitive disk
        ("{colour}", "no placeholder here"),
        ("{id}:{n}", "only letters"),
        ("fixed", "no placeholder"),
    ],
)
def test_bad_templates_are_refused(tmp_path, template, says):
    items = manifest.load(_grid(tmp_path))
    with pytest.raises(UsageError) as caught:
        names.render_stems(items, template)
    assert says in str(caught.value)


async def test_a_colliding_template_exits_2_before_anything_is_sent(sim_factory, tmp_path):
    path = _grid(tmp_path)
    async with sim_factory(api_key=KEY) as sim:
        code, _, stderr = await cli(run_args(path, tmp_path / "out", sim, "--name", "{animal}"))
        assert sim.stats.creates == 0
    assert code == 2, stderr
    assert "grid.yaml:2: item 'zoo-" in stderr and "gives it 'fox', the name of item 'zoo-" in stderr
    assert not (tmp_path / "out" / "results.json").exists()
    # --dry-run refuses it the same way
    async with sim_factory(api_key=KEY) as sim:
        code, _, stderr = await cli(run_args(path, tmp_path / "out", sim, "--name", "../{id}", "--dry-run"))
    assert code == 2 and "not a path inside DIR" in stderr


async def test_template_names_with_subfolders_resume_status_and_contact_sheet(sim_factory, tmp_path):
    path = _grid(tmp_path)
    out = tmp_path / "out"
    template = "{animal}/{aspect_ratio}-{n}"
    async with sim_factory(api_key=KEY, results_per_task=2) as sim:  # one service: the rerun fetches by task id
        code, _, stderr = await cli(run_args(path, out, sim, "--name", template, "--report"))
        assert code == 0, stderr
        assert sim.stats.creates == 5
        await _rest(sim, path, out, template)


async def _rest(sim, path: Path, out: Path, template: str) -> None:
    files = {name for record in ledger.load(out).items.values() for name in record["files"]}
    assert {"fox/widescreen_16_9-1.png", "fox/widescreen_16_9-2.png", "snowy-owl/square_1_1-2.png"} <= files
    assert {f for f in files if f.startswith("none/")} == {"none/none-1.png", "none/none-2.png"}
    assert all((out / name).is_file() for name in files) and len(files) == 10
    page = (out / "index.html").read_text()
    assert "fox/widescreen_16_9-1.png" in page
    assert (out / ".batchgen" / "thumbs" / "fox%2Fwidescreen_16_9-1.png.jpg").is_file()

    # A file gone: the rerun fetches it again, by task id, to the name the ledger recorded; nothing is paid.
    (out / "fox/widescreen_16_9-2.png").unlink()
    code, stdout, _ = await cli([sys.executable, "-m", "batchgen", "status", str(out), "--json"], env=env())
    assert json.loads(stdout)["missing_files"][0]["files"] == ["fox/widescreen_16_9-2.png"]
    code, _, stderr = await cli(run_args(path, out, sim, "--name", template))
    assert code == 0, stderr
    assert sim.stats.creates == 5  # none more
    assert (out / "fox/widescreen_16_9-2.png").is_file()
    code, stdout, _ = await cli([sys.executable, "-m", "batchgen", "status", str(out), "--json"], env=env())
    assert json.loads(stdout)["missing_files"] == []


async def test_a_symlinked_subfolder_is_never_written_through(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a"])
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "sub").symlink_to(elsewhere)
    async with sim_factory(api_key=KEY) as sim:
        code, _, stderr = await cli(run_args(path, out, sim, "--name", "sub/{id}"))
        # Found before anything is sent (issue 16): a paid image is never failed for a folder in the way.
        assert code == 2 and sim.stats.create_calls == 0, stderr
    assert "item 'item-00': --name: its folder 'sub' in" in stderr and "is a symbolic link" in stderr
    assert list(elsewhere.iterdir()) == []


def test_without_name_the_names_stay_spec_4s():
    plain = names.Names(["x", "y"], [])
    assert plain.stems("x", 1) == ["x"] and plain.stems("y", 2) == ["y_1", "y_2"]
    assert names.stem_of("zoo/fox.png") == "zoo/fox" and names.stem_of("x") == "x"
