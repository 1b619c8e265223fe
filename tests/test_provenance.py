"""--metadata none|sidecar|png (issue 12, SPEC §3): sidecars beside each image, the same text inside PNGs as
iTXt, a PNG carrying a C2PA manifest kept byte for byte as received, and both hashes in the ledger."""

from __future__ import annotations

import hashlib
import json

from PIL import Image

from batchgen import __version__, ledger, provenance
from batchgen.sim.images import with_c2pa

from .helpers import KEY, cli, run_args

MANIFEST = """\
- id: fox
  prompt: a fox in the snow
  seed: 7
  aspect_ratio: "16:9"
- id: owl
  prompt: an owl
  output_format: jpeg
"""

FIELDS = {
    "id",
    "request",
    "model",
    "seed",
    "task_id",
    "service_times",
    "sha256_received",
    "batchgen_version",
    "manifest",
    "line",
}


async def test_sidecar_beside_each_image_with_every_field(sim_factory, tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST, encoding="utf-8")
    out = tmp_path / "out"
    async with sim_factory(api_key=KEY) as sim:
        code, _, stderr = await cli(run_args(path, out, sim, "--metadata", "sidecar"))
    assert code == 0, stderr
    items = ledger.load(out).items
    assert items["fox"]["files"] == ["fox.png"] and items["owl"]["files"] == ["owl.jpg"]
    fox = json.loads((out / "fox.png.json").read_text())
    assert set(fox) == FIELDS
    assert fox["id"] == "fox" and fox["seed"] == 7 and fox["model"] == "imagen4-ultra"
    assert fox["request"]["input"]["aspect_ratio"] == "widescreen_16_9"
    assert fox["task_id"] == items["fox"]["task_id"] and fox["manifest"] == "m.yaml" and fox["line"] == 1
    assert fox["batchgen_version"] == __version__
    assert fox["service_times"]["created"] and fox["service_times"]["completed"]
    # sidecar only: the image is as received, and both hashes say so
    received = hashlib.sha256((out / "fox.png").read_bytes()).hexdigest()
    assert fox["sha256_received"] == received == items["fox"]["sha256"][0] == items["fox"]["sha256_received"][0]
    assert provenance.read_png_text(out / "fox.png") is None
    owl = json.loads((out / "owl.jpg.json").read_text())
    assert owl["line"] == 5 and owl["seed"] is None
    assert not list((out / ".batchgen" / "tmp").glob("*"))


async def test_png_mode_writes_itxt_into_pngs_and_keeps_both_hashes(sim_factory, tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST, encoding="utf-8")
    out = tmp_path / "out"
    async with sim_factory(api_key=KEY) as sim:
        code, _, stderr = await cli(run_args(path, out, sim, "--metadata", "png", "--name", "{id}-{seed}"))
    assert code == 0, stderr
    items = ledger.load(out).items
    assert items["fox"]["files"] == ["fox-7.png"] and items["owl"]["files"] == ["owl-none.jpg"]
    text = provenance.read_png_text(out / "fox-7.png")
    assert text is not None and json.loads(text) == json.loads((out / "fox-7.png.json").read_text())
    kept = hashlib.sha256((out / "fox-7.png").read_bytes()).hexdigest()
    assert items["fox"]["sha256"] == [kept] and items["fox"]["sha256_received"] != [kept]
    assert json.loads(text)["sha256_received"] == items["fox"]["sha256_received"][0]
    with Image.open(out / "fox-7.png") as image:
        image.verify()
    # JPEG: the JSON in the sidecar only; the XMP label goes inside (test_label.py), so its bytes change
    assert items["owl"]["sha256"] != items["owl"]["sha256_received"]
    assert (out / "owl-none.jpg.json").is_file()


async def test_a_png_with_a_c2pa_manifest_is_kept_byte_for_byte(sim_factory, tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST.split("- id: owl")[0], encoding="utf-8")
    out = tmp_path / "out"
    async with sim_factory(api_key=KEY, c2pa=True) as sim:
        code, _, stderr = await cli(run_args(path, out, sim, "--metadata", "png"))
    assert code == 0, stderr
    data = (out / "fox.png").read_bytes()
    assert provenance.has_c2pa(data) and provenance.read_png_text(out / "fox.png") is None
    (record,) = ledger.load(out).items.values()
    assert record["sha256"] == record["sha256_received"] == [hashlib.sha256(data).hexdigest()]
    assert json.loads((out / "fox.png.json").read_text())["sha256_received"] == record["sha256"][0]


def test_itxt_insertion_keeps_every_other_byte_and_reads_back(tmp_path):
    from batchgen.sim.images import render

    png = with_c2pa(render(32, 16, "png", 90, 1))
    assert provenance.has_c2pa(png)
    plain = render(32, 16, "png", 90, 1)
    written = provenance.with_itxt(plain, '{"é": 1}\n')
    assert written[: len(plain) - 12] == plain[:-12] and written.endswith(plain[-12:])
    target = tmp_path / "x.png"
    target.write_bytes(written)
    assert provenance.read_png_text(target) == '{"é": 1}\n'


async def test_the_contact_sheet_shows_the_parameters_of_the_sidecar_and_links_it(sim_factory, tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST, encoding="utf-8")
    out = tmp_path / "out"
    async with sim_factory(api_key=KEY) as sim:
        code, _, stderr = await cli(run_args(path, out, sim, "--metadata", "sidecar", "--name", "a/{id}", "--report"))
    assert code == 0, stderr
    page = (out / "index.html").read_text()
    data = page.split('<script type="application/json" id="sheet-data">')[1].split("</script>")[0]
    fox = next(i for i in json.loads(data)["items"] if i["id"] == "fox")
    task_id = ledger.load(out).items["fox"]["task_id"]
    assert fox["sidecar"] == "a/fox.png.json"
    assert fox["params"] == ["widescreen_16_9", "model imagen4-ultra", f"task_id {task_id}", "m.yaml:1"]
