"""Reference images from local files (SPEC §2 "Models"): sent as data URIs, recorded as sha256, never paid twice."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from batchgen import manifest
from batchgen.errors import ManifestError

from .helpers import cli, run_args


def image_bytes(colour: str, kind: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, kind)
    return out.getvalue()


def problems(path: Path) -> list[str]:
    with pytest.raises(ManifestError) as info:
        manifest.load(path)
    return [str(p).removeprefix(f"{path}:") for p in info.value.problems]


async def test_files_go_as_data_uris_the_ledger_keeps_sha256_and_an_edit_makes_one_new_create(
    tmp_path, write, sim_factory
):
    fox, owl = image_bytes("orange"), image_bytes("brown", "JPEG")
    write("fox.png", fox)
    (tmp_path / "refs").mkdir()
    write("refs/owl.jpg", owl)
    path = write(
        "night.yaml",
        """\
- id: fox
  model: nano-banana-pro
  prompt: a fox like this one
  image_input: [fox.png, "https://img.example.org/extra.webp"]
- id: owl
  model: nano-banana-pro
  prompt: an owl like this one
  reference_images: refs/owl.jpg
""",
    )
    fox_sha = "sha256:" + hashlib.sha256(fox).hexdigest()
    owl_sha = "sha256:" + hashlib.sha256(owl).hexdigest()
    out = tmp_path / "out"
    async with sim_factory() as sim:
        code, _, err = await cli(run_args(path, out, sim, "--metadata", "sidecar"))
        assert code == 0, err
        sent = {body["input"]["prompt"]: body["input"] for body in sim.created().values()}
        assert sent["a fox like this one"]["image_input"] == [
            "data:image/png;base64," + base64.b64encode(fox).decode(),
            "https://img.example.org/extra.webp",
        ]
        assert sent["an owl like this one"]["reference_images"] == [
            "data:image/jpeg;base64," + base64.b64encode(owl).decode()
        ]
        ledger = json.loads((out / "results.json").read_text())["items"]
        assert ledger["fox"]["request"]["input"]["image_input"] == [fox_sha, "https://img.example.org/extra.webp"]
        assert ledger["owl"]["request"]["input"]["reference_images"] == [owl_sha]
        for name in ("results.json", "fox.png.json", "owl.png.json", ".batchgen/journal.jsonl"):
            text = (out / name).read_text() if (out / name).exists() else ""
            assert "base64" not in text and "data:" not in text, name
        assert fox_sha in (out / "fox.png.json").read_text()

        code, _, err = await cli(run_args(path, out, sim))  # nothing changed: nothing is paid again
        assert code == 0 and sim.stats.creates == 2, err

        write("fox.png", image_bytes("red"))  # an edited file: its item changed, exactly one new create
        code, _, err = await cli(run_args(path, out, sim))
        assert code == 0 and sim.stats.creates == 3, err
        assert "1 to submit (0 new, 1 changed" in err
    ledger = json.loads((out / "results.json").read_text())["items"]
    assert (
        ledger["fox"]["request"]["input"]["image_input"][0]
        == "sha256:" + hashlib.sha256(image_bytes("red")).hexdigest()
    )


def test_ids_follow_the_files_bytes_not_their_names(tmp_path, write):
    write("a.png", image_bytes("blue"))
    write("b.png", image_bytes("blue"))
    path = write("m.csv", 'model,prompt,image_input\nnano-banana-pro,p q,"[""a.png""]"\n')
    (first,) = manifest.load(path)
    path = write("m.csv", "model,prompt,image_input\nnano-banana-pro,p q,b.png\n")
    (second,) = manifest.load(path)
    assert first.id == second.id and first.input == second.input  # the same bytes: the same request
    assert first.input["image_input"] == ["sha256:" + hashlib.sha256(image_bytes("blue")).hexdigest()]
    write("b.png", image_bytes("green"))
    (third,) = manifest.load(path)
    assert third.id != first.id


def test_a_reference_file_must_be_an_image_inside_the_manifests_folder(tmp_path, write):
    folder = tmp_path / "night"
    folder.mkdir()
    (tmp_path / "outside.png").write_bytes(image_bytes("white"))
    (folder / "link.png").symlink_to(tmp_path / "outside.png")
    (folder / "notes.png").write_text("not an image")
    (folder / "anim.gif").write_bytes(image_bytes("white", "GIF"))
    (folder / "big.png").write_bytes(image_bytes("white") + b"\0" * (7 * 1024 * 1024))
    (folder / "zero.png").symlink_to("/dev/zero")
    os.mkfifo(folder / "pipe.png")
    (folder / "sub").mkdir()
    (folder / "ok.webp").write_bytes(image_bytes("white", "WEBP"))
    cases = [
        "../outside.png",
        "link.png",
        "notes.png",
        "anim.gif",
        "big.png",
        "zero.png",
        "pipe.png",
        "sub",
        "missing.png",
        "/etc/passwd",
    ]
    items = "".join(
        f"- id: i{n}\n  model: nano-banana-pro\n  prompt: pp\n  image_input: [ok.webp, {name!r}]\n"
        for n, name in enumerate(cases)
    )
    path = folder / "m.yaml"
    path.write_text(items + "- id: flux\n  model: flux-2-pro\n  prompt: p\n  input_image: ok.webp\n")
    found = problems(path)
    expected = [
        "is outside the manifest's folder",
        "is outside the manifest's folder",
        "not a PNG, JPEG or WebP image (by its bytes)",
        "not a PNG, JPEG or WebP image (by its bytes)",
        "bytes; the limit is 7,340,032",
        "is outside the manifest's folder",
        "cannot read the reference image: not a regular file",
        "cannot read the reference image: a directory",
        "cannot read the reference image: No such file or directory",
        "is outside the manifest's folder",
    ]
    assert len(found) == len(cases) + 1, found
    for line, case, message in zip(found, cases, expected, strict=False):
        assert f"image_input: item 2: {case!r}" in line and message in line, (line, case)
    assert "item 'flux': input_image: expected an https:// URL of an image; got 'ok.webp'" in found[-1]


def test_a_matrix_axis_can_name_the_reference_file(tmp_path, write):
    write("a.png", image_bytes("red"))
    write("b.jpg", image_bytes("blue", "JPEG"))
    path = write(
        "m.yaml",
        '- id: look\n  model: nano-banana-pro\n  prompt: like this\n  image_input: "{ref}"\n'
        "  matrix:\n    ref: [a.png, b.jpg]\n",
    )
    first, second = manifest.load(path)
    assert first.cell == {"ref": "a.png"} and second.cell == {"ref": "b.jpg"}
    assert first.input["image_input"] == ["sha256:" + hashlib.sha256(image_bytes("red")).hexdigest()]
    body = second.wire()
    assert body["input"]["image_input"] == [
        "data:image/jpeg;base64," + base64.b64encode(image_bytes("blue", "JPEG")).decode()
    ]
    assert second.request["input"]["image_input"][0].startswith("sha256:")  # the request itself is unchanged
