"""The simulator serves every model card (SPEC §5), and results are typed by their bytes (SPEC §2 "Models")."""

from __future__ import annotations

import hashlib
import io
import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import aiohttp
import pytest
from PIL import Image

from batchgen import download
from batchgen.errors import DownloadError

from .helpers import AUTH_HEADERS as KEY
from .helpers import CREATE, cli, create, run_args, wait_state


def of(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "input": {"prompt": "a lighthouse at dusk", **fields}}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (of("nano-banana-pro", seed=3), "input.seed is not a supported parameter"),
        (of("nano-banana-pro", prompt="a"), "input.prompt: too short (1 character; at least 2)"),
        (of("nano-banana-pro", output_format="jpeg"), "input.output_format: expected one of png"),
        (
            of(
                "nano-banana-pro",
                image_input=["https://x.example.org/a.png"] * 2,
                reference_images=["https://x.example.org/b.png", "https://x.example.org/c.png"],
            ),
            "input.reference_images: at most 3 in all",
        ),
        (of("flux-2-pro", width=512), "input.height: width and height go together"),
        (of("flux-2-pro", width=2000, height=512), "input.width: expected an integer from 256 to 1440, got 2000"),
        (of("seedream-v4-5", aspect_ratio="5:4"), "input.aspect_ratio: expected one of"),
        (of("imagen4-ultra", resolution="2K"), "input.resolution is not a supported parameter"),
        (of("dall-e-3"), "unsupported model: dall-e-3"),
    ],
)
async def test_the_simulator_validates_each_model_by_its_card(sim_factory, payload, message):
    async with sim_factory() as sim, aiohttp.ClientSession() as s:
        status, answer = await create(s, sim, payload)
        assert status == 400 and answer["msg"].startswith(message), answer
        assert sim.stats.creates == 0


async def _result(s: aiohttp.ClientSession, sim, payload: dict[str, Any]) -> tuple[str, bytes, str, str]:
    status, answer = await create(s, sim, payload)
    assert status == 200, answer
    record = await wait_state(s, sim, answer["data"]["taskId"], {"success"})
    assert record["model"] == payload["model"] and answer["data"]["taskId"].startswith(f"task_{payload['model']}_")
    (url,) = json.loads(record["resultJson"])["resultUrls"]
    async with s.get(url) as r:
        assert r.status == 200
        return url, await r.read(), r.content_type, record["model"]


@pytest.mark.parametrize(
    ("payload", "kind", "size"),
    [
        (of("imagen4-ultra", aspect_ratio="widescreen_16_9"), "PNG", (2816, 1536)),
        (of("imagen4-ultra", output_format="jpeg"), "JPEG", (2048, 2048)),
        (of("nano-banana-pro", aspect_ratio="21:9"), "PNG", (3136, 1344)),
        (of("nano-banana-pro", aspect_ratio="21:9", resolution="4K"), "PNG", (6272, 2688)),
        (of("nano-banana-pro-flash", aspect_ratio="9:16"), "PNG", (768, 1376)),
        (of("seedream-v4-5", aspect_ratio="16:9"), "JPEG", (2560, 1440)),
        (of("flux-2-pro", width=1440, height=512), "WEBP", (1440, 512)),
        (of("flux-2-pro"), "WEBP", (1024, 768)),
        (of("z-image", output_format="png"), "PNG", (1024, 1024)),
    ],
)
async def test_the_simulator_serves_each_models_type_and_size(sim_factory, payload, kind, size):
    scale = 0.05
    async with sim_factory(image_scale=scale) as sim, aiohttp.ClientSession() as s:
        url, data, content_type, _ = await _result(s, sim, payload)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == kind
        assert image.size == (max(16, round(size[0] * scale)), max(16, round(size[1] * scale)))
    assert content_type == f"image/{kind.lower()}"
    assert url.split("?")[0].endswith({"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}[kind])


@pytest.mark.parametrize("answer", ["400", "price", "503"])
async def test_the_unsupported_model_knob_answers_as_the_market_does(sim_factory, answer):
    async with sim_factory(unsupported_models=("imagen4-ultra",), unsupported_answer=answer) as sim:
        async with aiohttp.ClientSession() as s:
            status, body = await create(s, sim, of("imagen4-ultra"))
            ok, _ = await create(s, sim, of("flux-2-pro"))
    assert ok == 200 and sim.stats.creates == 1 and sim.stats.models_refused == 1
    if answer == "400":
        assert (status, body["code"], body["msg"]) == (400, 400, "unsupported model: imagen4-ultra")
    elif answer == "price":
        assert status == 400 and body["error"]["code"] == "model_price_error"
        assert "imagen4-ultra" in body["error"]["message"]
    else:
        assert status == 503 and body["error"]["code"] == "model_not_found"
        assert "no channel available for model imagen4-ultra" in body["error"]["message"]


def test_batchgen_sim_takes_the_unsupported_model_flag():
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchgen",
            "sim",
            "--port",
            "0",
            "--latency",
            "0.1",
            "--jitter",
            "0",
            "--unsupported-model",
            "nano-banana-pro",
            "--unsupported-answer",
            "503",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            api = re.search(r"api=(\S+)", proc.stdout.readline()).group(1)
            request = urllib.request.Request(
                api + CREATE,
                method="POST",
                headers={**KEY, "Content-Type": "application/json"},
                data=json.dumps(of("nano-banana-pro")).encode(),
            )
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(request, timeout=5)
            assert info.value.code == 503
            assert "no channel available for model nano-banana-pro" in info.value.read().decode()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0


# ---------------------------------------------------------------- results typed by their bytes


async def test_results_are_named_by_their_bytes_whatever_the_request_or_url_says(tmp_path, write, sim_factory):
    path = write(
        "mixed.yaml",
        """\
- id: imagen
  prompt: a fox
  output_format: png
- id: seedream
  model: seedream-v4-5
  prompt: a fox
- id: flux
  model: flux-2-pro
  prompt: a fox
- id: z
  model: z-image
  prompt: a fox
  output_format: jpeg
""",
    )
    out = tmp_path / "out"
    async with sim_factory(wrong_extension=True) as sim:  # every URL ends in .png and says image/png
        code, _, err = await cli(run_args(path, out, sim, "--metadata", "sidecar", "--report"))
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())["items"]
    assert {k: v["files"] for k, v in results.items()} == {
        "imagen": ["imagen.png"],
        "seedream": ["seedream.jpg"],
        "flux": ["flux.webp"],
        "z": ["z.jpg"],
    }
    for name, kind in [("imagen.png", "PNG"), ("seedream.jpg", "JPEG"), ("flux.webp", "WEBP"), ("z.jpg", "JPEG")]:
        with Image.open(out / name) as image:
            assert image.format == kind
        sidecar = json.loads((out / f"{name}.json").read_text())
        assert sidecar["sha256_received"] == hashlib.sha256((out / name).read_bytes()).hexdigest()
        assert sidecar["model"] == results[name.split(".")[0]]["request"]["model"]
        assert (out / ".batchgen" / "thumbs" / f"{name}.jpg").exists()
        assert name in (out / "index.html").read_text()


def test_a_webp_that_is_cut_short_or_padded_is_not_a_result(tmp_path):
    picture = Image.new("RGB", (32, 32), "teal")
    data = io.BytesIO()
    picture.save(data, "WEBP")
    whole = tmp_path / "whole.webp"
    whole.write_bytes(data.getvalue())
    assert download.verify_image(whole) == "webp"
    for name, broken in [("short", data.getvalue()[:-10]), ("padded", data.getvalue() + b"\0" * 10)]:
        path = tmp_path / f"{name}.bin"
        path.write_bytes(broken)
        with pytest.raises(DownloadError):
            download.verify_image(path)
    gif = tmp_path / "g.png"
    picture.save(gif, "GIF")
    with pytest.raises(DownloadError, match="result is GIF, not PNG, JPEG or WebP"):
        download.verify_image(gif)
