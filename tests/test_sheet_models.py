"""The sample manifest that compares models runs offline, and its contact sheet filters by model."""

from __future__ import annotations

import json
from pathlib import Path

from batchgen import sheet

from .browser import ARTEFACTS, chromium, needs_browser
from .helpers import COUNT_CARDS, SHOWN_IDS, cli, run_args

SAMPLE = Path(__file__).resolve().parents[1] / "sample_manifests" / "compare_models.yaml"
MODELS = ["flux-2-pro", "imagen4-ultra", "nano-banana-pro", "seedream-v4-5"]


async def _compare_night(sim_factory, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    async with sim_factory() as sim:
        code, _, err = await cli(run_args(SAMPLE, out, sim, "--metadata", "sidecar"))
        assert code == 0, err
        assert sim.stats.creates == 8
    return out


async def test_the_comparison_sample_runs_each_model_with_its_own_fields(sim_factory, tmp_path):
    out = await _compare_night(sim_factory, tmp_path)
    items = json.loads((out / "results.json").read_text())["items"]
    inputs = {item["request"]["model"]: item["request"]["input"] for item in items.values() if "harbor" in str(item)}
    assert inputs["imagen4-ultra"] == {
        "prompt": inputs["imagen4-ultra"]["prompt"],
        "aspect_ratio": "widescreen_16_9",
        "enhance_prompt": False,
    }
    assert inputs["nano-banana-pro"]["resolution"] == "2K" and "enhance_prompt" not in inputs["nano-banana-pro"]
    assert set(inputs["flux-2-pro"]) == {"prompt", "aspect_ratio"}
    assert {Path(f).suffix for item in items.values() for f in item["files"]} == {".png", ".jpg", ".webp"}
    data = json.loads(sheet.write_report(out).read_text().split('id="sheet-data">')[1].split("</script>")[0])
    params = {entry["id"]: entry.get("params", []) for entry in data["items"]}
    nano = next(k for k in params if "nano" in k and k.startswith("harbor"))
    assert params[nano][:2] == ["16:9", "2K"]  # the card's fields, not imagen4-ultra's list


@needs_browser
async def test_the_contact_sheet_filters_by_model_and_shows_a_prompts_models_side_by_side(sim_factory, tmp_path):
    out = await _compare_night(sim_factory, tmp_path)
    url = sheet.write_report(out).as_uri()
    async with chromium(tmp_path / "profile", 1280, 900) as page:
        await page.goto(url)
        await page.wait_for(f"{COUNT_CARDS} === 8")
        assert not await page.evaluate("document.getElementById('model').hidden")
        options = await page.evaluate("Array.from(document.getElementById('model').options).map(o => o.value)")
        assert options == ["", *MODELS]
        shown = await page.evaluate(SHOWN_IDS)
        assert [i.split("-")[0] for i in shown] == ["harbor"] * 4 + ["lighthouse"] * 4  # one prompt's models together
        card = await page.evaluate(f"document.querySelector('.card[data-id=\"{shown[0]}\"]').innerText")
        assert "model flux-2-pro" in card
        await page.evaluate(
            "(() => { const s = document.getElementById('model'); s.value = 'seedream-v4-5';"
            " s.dispatchEvent(new Event('change')); })()"
        )
        await page.wait_for(f"{COUNT_CARDS} === 2")
        shown = await page.evaluate(SHOWN_IDS)
        assert all("seedream" in i for i in shown), shown
        await page.type("#q", "lighthouse")
        await page.wait_for(f"{COUNT_CARDS} === 1")
        await page.screenshot(ARTEFACTS / "contact-sheet-models-1280.png")
        await page.type("#q", "")
        await page.evaluate(
            "(() => { const s = document.getElementById('model'); s.value = '';"
            " s.dispatchEvent(new Event('change')); })()"
        )
        await page.wait_for(f"{COUNT_CARDS} === 8")


async def test_a_one_model_sheet_has_no_model_picker(sim_factory, tmp_path, write):
    path = write("one.yaml", "- prompt: a fox\n- prompt: an owl\n")
    out = tmp_path / "one"
    async with sim_factory() as sim:
        code, _, err = await cli(run_args(path, out, sim))
        assert code == 0, err
    page = sheet.write_report(out).read_text()
    assert '<select id="model" aria-label="model" hidden></select>' in page
    assert '"model":"imagen4-ultra"' in page
