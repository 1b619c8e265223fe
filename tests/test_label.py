"""The AI-generated label (issue 21, SPEC §3): an XMP sidecar beside each image, and with --metadata png the
packet inside PNG, JPEG and WebP files without re-encoding them; C2PA files untouched; a prompt cannot break
the packet. And issue 16: a good PNG with bytes after IEND is never failed by the metadata step."""

from __future__ import annotations

import hashlib
import io
import json
import struct
from xml.etree import ElementTree as ET

import pytest
from PIL import Image

from batchgen import ledger, provenance, xmp
from batchgen.sim.images import render, with_c2pa, with_trailer

from .helpers import KEY, cli, run_args

SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
IPTC = "{http://iptc.org/std/Iptc4xmpExt/2008-02-29/}"
XMP_NS = "{http://ns.adobe.com/xap/1.0/}"
HOSTILE = 'a fox </rdf:li></rdf:Alt><x:evil/> ]]> &amp; <?xpacket end="w"?> \x01 $(touch pwned) "\' \u202e'


def fields(packet: bytes) -> dict[str, str]:
    """The label's fields, parsed with ElementTree (not batchgen's own reader)."""
    start, end = packet.index(b"<x:xmpmeta"), packet.rindex(b"</x:xmpmeta>") + len(b"</x:xmpmeta>")
    root = ET.fromstring(packet[start:end])
    (desc,) = root.iter("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description")
    found = {child.tag: child.text or "" for child in desc}
    found["description"] = next(desc.iter("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}li")).text or ""
    return found


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, at = [], 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        chunks.append((kind, data[at + 8 : at + 8 + length]))
        at += 12 + length
        if kind == b"IEND":
            break
    return chunks


MANIFEST = """\
- id: fox
  prompt: {prompt}
  seed: 7
- id: owl
  prompt: an owl
  output_format: jpeg
"""


async def test_sidecar_mode_writes_an_xmp_label_beside_each_image(sim_factory, tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST.format(prompt=json.dumps(HOSTILE)), encoding="utf-8")
    out = tmp_path / "out"
    async with sim_factory(api_key=KEY) as sim:
        code, _, stderr = await cli(run_args(path, out, sim, "--metadata", "sidecar"))
    assert code == 0, stderr
    label = fields((out / "fox.png.xmp").read_bytes())
    assert label[f"{IPTC}DigitalSourceType"] == SOURCE_TYPE
    assert label[f"{IPTC}AISystemUsed"] == "imagen4-ultra"
    assert label[f"{IPTC}AIPromptInformation"] == HOSTILE.replace("\x01", "\ufffd") == label["description"]
    assert label[f"{XMP_NS}CreatorTool"].startswith("batchgen ") and label[f"{XMP_NS}CreateDate"].endswith("Z")
    assert fields((out / "owl.jpg.xmp").read_bytes())[f"{IPTC}AIPromptInformation"] == "an owl"
    assert not (tmp_path / "pwned").exists() and not (out / "pwned").exists()
    # sidecar mode: the images are as received
    items = ledger.load(out).items
    assert all(r["sha256"] == r["sha256_received"] for r in items.values())


async def test_png_mode_puts_the_label_inside_png_and_jpeg(sim_factory, tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST.format(prompt="a fox"), encoding="utf-8")
    out = tmp_path / "out"
    async with sim_factory(api_key=KEY) as sim:
        code, _, stderr = await cli(run_args(path, out, sim, "--metadata", "png"))
    assert code == 0, stderr
    data = (out / "fox.png").read_bytes()
    kinds = [kind for kind, _ in png_chunks(data)]
    xmp_at = [n for n, (kind, body) in enumerate(png_chunks(data)) if body.startswith(b"XML:com.adobe.xmp\x00")]
    assert len(xmp_at) == 1 and kinds[xmp_at[0]] == b"iTXt" and xmp_at[0] < kinds.index(b"IDAT")
    packet = png_chunks(data)[xmp_at[0]][1].split(b"\x00", 5)[-1]
    assert fields(packet)[f"{IPTC}DigitalSourceType"] == SOURCE_TYPE
    assert packet == (out / "fox.png.xmp").read_bytes()
    with Image.open(out / "fox.png") as image:
        assert fields(image.info["XML:com.adobe.xmp"].encode())[f"{IPTC}AIPromptInformation"] == "a fox"
        image.load()
    with Image.open(out / "owl.jpg") as image:
        assert fields(image.info["xmp"])[f"{IPTC}AIPromptInformation"] == "an owl"
        image.load()


@pytest.mark.parametrize("trailer", ["garbage", "double_iend"])
async def test_png_mode_keeps_a_good_png_with_bytes_after_iend(sim_factory, tmp_path, trailer):
    # Issue 16: such a PNG verifies, and `--metadata none` accepts it; `png` used to fail the item for good
    # ("not a whole PNG"), and every --retry-failed paid again and failed again.
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST.split("- id: owl")[0].format(prompt="a fox"), encoding="utf-8")
    out = tmp_path / "out"
    async with sim_factory(api_key=KEY, png_trailer=trailer) as sim:
        code, _, stderr = await cli(run_args(path, out, sim, "--metadata", "png"))
        assert sim.stats.creates == 1
    assert code == 0, stderr
    record = ledger.load(out).items["fox"]
    assert record["state"] == "succeeded"
    data = (out / "fox.png").read_bytes()
    assert data.endswith(with_trailer(b"", trailer))  # what followed IEND is kept byte for byte
    assert json.loads(provenance.read_png_text(out / "fox.png") or "")["id"] == "fox"
    assert record["sha256"] == [hashlib.sha256(data).hexdigest()] != record["sha256_received"]


def test_a_png_that_cannot_be_walked_is_kept_as_received_and_said_so():
    png = render(32, 16, "png", 90, 1)
    broken = png[:-12] + struct.pack(">I", 999) + b"IEND" + b"\x00" * 4  # IEND claims 999 bytes it does not have
    mark = provenance.label({"request": {"model": "m", "input": {"prompt": "p"}}, "id": "x"}, completed=None)
    kept, note = provenance.embed(broken, mark)
    assert kept is broken and note and "could not be walked" in note


def test_c2pa_files_are_never_modified_in_any_format():
    mark = provenance.label({"request": {"model": "m", "input": {"prompt": "p"}}, "id": "x"}, completed=None)
    png = with_c2pa(render(32, 16, "png", 90, 1))
    jpeg = render(32, 16, "jpeg", 90, 1)
    app11 = b"\xff\xeb" + struct.pack(">H", 2 + 16) + b"JP\x02\x11\x00\x00\x00\x01" + b"\x00\x00\x00\x08jumb"
    jpeg_c2pa = jpeg[:2] + app11 + jpeg[2:]
    webp_c2pa = _webp_with_chunk(_webp(lossless=True), b"C2PA", b"\x00\x00\x00\x08jumb")
    for data in (png, jpeg_c2pa, webp_c2pa):
        assert provenance.has_c2pa(data)
        kept, note = provenance.embed(data, mark)
        assert kept == data and note is None
    assert not provenance.has_c2pa(jpeg)


def _webp(*, lossless: bool, alpha: bool = False) -> bytes:
    image = Image.new("RGBA" if alpha else "RGB", (37, 21), (10, 200, 30, 128) if alpha else (10, 200, 30))
    out = io.BytesIO()
    image.save(out, "WEBP", lossless=lossless, quality=80)
    return out.getvalue()


def _webp_with_chunk(data: bytes, kind: bytes, payload: bytes) -> bytes:
    body = data[12:] + kind + struct.pack("<I", len(payload)) + payload + b"\x00" * (len(payload) & 1)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


@pytest.mark.parametrize(("lossless", "alpha"), [(True, False), (False, False), (True, True)])
def test_webp_gets_an_xmp_chunk_and_a_vp8x_flag_without_re_encoding(lossless, alpha):
    data = _webp(lossless=lossless, alpha=alpha)
    mark = provenance.label({"request": {"model": "m", "input": {"prompt": HOSTILE}}, "id": "x"}, completed=1.7e9)
    labelled, note = provenance.embed(data, mark)
    assert note is None and labelled != data
    chunks = xmp.webp_chunks(labelled)
    assert chunks[0][0] == b"VP8X" and chunks[0][1][0] & 0x04 and bool(chunks[0][1][0] & 0x10) == alpha
    assert chunks[-1] == (b"XMP ", mark.xmp)
    assert [c for c in chunks if c[0] in (b"VP8 ", b"VP8L")] == [c for c in xmp.webp_chunks(data) if c[0] != b"VP8X"]
    with Image.open(io.BytesIO(labelled)) as image, Image.open(io.BytesIO(data)) as original:
        assert image.size == original.size == (37, 21)
        assert fields(image.info["xmp"])[f"{IPTC}AIPromptInformation"] == HOSTILE.replace("\x01", "\ufffd")
        assert image.tobytes() == original.tobytes()  # the pixels as received
    again, _ = provenance.embed(labelled, mark)
    assert again == labelled  # one XMP chunk, never two


def test_a_prompt_too_long_for_a_jpeg_segment_is_cut_there_and_whole_in_the_sidecar():
    prompt = "字" * 20_000  # 60,000 bytes of UTF-8, twice in the packet
    mark = provenance.label({"request": {"model": "m", "input": {"prompt": prompt}}, "id": "x"}, completed=None)
    assert mark.jpeg_xmp is not None and len(mark.jpeg_xmp) <= xmp.MAX_JPEG_PACKET < len(mark.xmp)
    cut = fields(mark.jpeg_xmp)[f"{IPTC}AIPromptInformation"]
    assert prompt.startswith(cut) and len(cut) > 5_000
    assert fields(mark.xmp)[f"{IPTC}AIPromptInformation"] == prompt
    jpeg = render(32, 16, "jpeg", 90, 1)
    labelled, note = provenance.embed(jpeg, mark)
    assert note is None
    with Image.open(io.BytesIO(labelled)) as image:
        assert fields(image.info["xmp"])[f"{IPTC}AIPromptInformation"] == cut
        image.load()
        assert image.tobytes() == Image.open(io.BytesIO(jpeg)).tobytes()  # the pixels as received


def test_an_existing_xmp_packet_is_kept_and_not_doubled():
    mark = provenance.label({"request": {"model": "m", "input": {"prompt": "p"}}, "id": "x"}, completed=None)
    once, _ = provenance.embed(render(32, 16, "png", 90, 1), mark)
    twice, _ = provenance.embed(once, mark)
    assert sum(body.startswith(b"XML:com.adobe.xmp\x00") for _, body in png_chunks(twice)) == 1
    jpeg_once, _ = provenance.embed(render(32, 16, "jpeg", 90, 1), mark)
    jpeg_twice, _ = provenance.embed(jpeg_once, mark)
    assert jpeg_twice == jpeg_once
