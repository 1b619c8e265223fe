"""The review page in headless Chromium, served by a real `batchgen review` subprocess: approve and reject by
click and by key, the decision filter, a reload shows what was kept, and a 10,000-item night keeps one page of
cards in the DOM. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from batchgen import decisions, sheet
from batchgen.ledger import Ledger, error_record

from .browser import ARTEFACTS, Page, chromium, needs_browser
from .helpers import start

CARDS = "document.querySelectorAll('#grid .card').length"
SHOWN_IDS = "JSON.stringify(Array.from(document.querySelectorAll('#grid .card')).map(c => c.dataset.id))"
LETTERS = {"a": 65, "r": 82, "ArrowRight": 39, "ArrowLeft": 37, "ArrowDown": 40}


HOSTILE = '</script><script>document.title="pwned"</script><img src=x onerror=alert(1)> & \u2028 "q"'


def _night(out: Path, n: int) -> Path:
    """A real ledger of n items through the Ledger API: most succeeded with an image, every 97th failed."""
    out.mkdir(parents=True)
    source = out / "source.png"
    Image.new("RGB", (48, 32), (40, 90, 160)).save(source)
    with Ledger.open(out, "night.yaml") as ledger:
        for k in range(n):
            item = f"item-{k:02d}"
            ledger.start_submit(
                item,
                {"model": "imagen4-ultra", "input": {"prompt": HOSTILE if k == 4 else f"prompt number {k}", "seed": 3}},
            )
            ledger.submitted(item, f"task-{k}")
            if k % 97 == 5:
                ledger.failed(item, error_record("task_policy", "400", "flagged"))
                continue
            os.link(source, out / f"{item}.png")
            ledger.succeeded(item, [f"{item}.png"], ["0" * 64])
    source.unlink()
    return out


async def _press(page: Page, key: str) -> None:
    for kind in ("rawKeyDown", "keyUp"):
        await page.call("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=LETTERS[key])


async def _serve(out: Path) -> tuple[asyncio.subprocess.Process, str]:
    proc = await start([sys.executable, "-m", "batchgen", "review", str(out)])
    assert proc.stdout is not None
    url = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
    assert "/?token=" in url
    return proc, url


def _decision_of(item: str) -> str:
    return f"(document.querySelector('.card[data-id=\"{item}\"]') || {{dataset: {{}}}}).dataset.decision"


@needs_browser
async def test_review_by_click_and_keys_and_reload(tmp_path):
    out = _night(tmp_path / "out", 6)  # item-05 failed: no controls
    proc, url = await _serve(out)
    try:
        async with chromium(tmp_path / "profile", 1280, 900) as page:
            await page.goto(url)
            await page.wait_for(f"{CARDS} === 6")
            assert "pwned" not in await page.evaluate("document.title")  # the prompt stays text
            text = await page.evaluate("document.querySelector('.card[data-id=\"item-04\"] .prompt').textContent")
            assert text == HOSTILE
            # Accessible names on the controls; none on the failed card.
            labels = await page.evaluate(
                "Array.from(document.querySelectorAll('.card[data-id=\"item-00\"] .decide button'))"
                ".map(b => b.getAttribute('aria-label'))"
            )
            assert labels == ["approve item-00 (a)", "reject item-00 (r)"]
            assert await page.evaluate("document.querySelectorAll('.card[data-id=\"item-05\"] .decide').length") == 0
            # A click: kept on disk before the page shows it.
            await page.click('.card[data-id="item-00"] button[data-decision="approved"]')
            await page.wait_for(f"{_decision_of('item-00')} === 'approved'")
            assert decisions.read_all(out)["item-00"].decision == "approved"
            # Keys: the arrow moves to the next card, r rejects it, a approves the one after.
            await _press(page, "ArrowRight")
            await page.wait_for("document.activeElement.dataset.id === 'item-01'")
            await _press(page, "r")
            await page.wait_for(f"{_decision_of('item-01')} === 'rejected'")
            await _press(page, "ArrowDown")
            await page.wait_for("document.activeElement.dataset.id === 'item-02'")
            await _press(page, "a")
            await page.wait_for(f"{_decision_of('item-02')} === 'approved'")
            await _press(page, "ArrowLeft")
            await page.wait_for("document.activeElement.dataset.id === 'item-01'")
            await _press(page, "a")  # a change of mind: the latest wins
            await page.wait_for(f"{_decision_of('item-01')} === 'approved'")
            await page.click('.card[data-id="item-03"] button[data-decision="rejected"]')
            await page.wait_for(f"{_decision_of('item-03')} === 'rejected'")
            assert {k: v.decision for k, v in decisions.read_all(out).items()} == {
                "item-00": "approved",
                "item-01": "approved",
                "item-02": "approved",
                "item-03": "rejected",
            }
            await page.screenshot(ARTEFACTS / "review-1280.png")
            # A reload shows what was kept, pressed buttons and the filter by decision.
            await page.goto(url)
            await page.wait_for(f"{CARDS} === 6")
            assert await page.evaluate(_decision_of("item-03")) == "rejected"
            assert (
                await page.evaluate(
                    'document.querySelector(\'.card[data-id="item-03"] button[data-decision="rejected"]\')'
                    ".getAttribute('aria-pressed')"
                )
                == "true"
            )
            await page.click('#verdicts button[data-verdict="rejected"]')
            await page.wait_for(f"{SHOWN_IDS} === '[\"item-03\"]'")
            await page.click('#verdicts button[data-verdict="undecided"]')
            await page.wait_for(f"{SHOWN_IDS} === '[\"item-04\"]'")
            await page.click('#verdicts button[data-verdict="approved"]')
            await page.wait_for(f"{CARDS} === 3")
            await page.screenshot(ARTEFACTS / "review-filter-approved.png")
            await page.evaluate("0")
            assert page.errors == [], [u for u in page.requests if "token=" not in u]  # no exception, no CSP violation
            origin = url.split("/?")[0]
            assert all(u.startswith(origin) for u in page.requests), page.requests  # nothing fetched elsewhere
    finally:
        proc.kill()
        await proc.wait()
    # The static page (report) shows the decisions too, and offers no controls.
    static = sheet.write_report(out).read_text()
    data = json.loads(static.split('id="sheet-data">')[1].split("</script>")[0])
    assert {i["id"]: i.get("decision") for i in data["items"]}["item-03"] == "rejected"
    assert "review" not in data


@needs_browser
@pytest.mark.slow
async def test_ten_thousand_item_review_keeps_one_page_in_the_dom(tmp_path):
    out = _night(tmp_path / "out", 10_000)
    proc, url = await _serve(out)
    try:
        async with chromium(tmp_path / "profile", 1280, 900) as page:
            await page.goto(url)
            await page.wait_for(f"{CARDS} > 0", 60)
            assert await page.evaluate(CARDS) == sheet.PAGE_SIZE
            assert await page.evaluate("document.querySelectorAll('.decide button').length") <= 2 * sheet.PAGE_SIZE
            await page.click('#pager button[data-go="next"]')
            await page.wait_for("document.querySelector('#grid .card').dataset.id === 'item-200'")
            await page.click('.card[data-id="item-201"] button[data-decision="rejected"]')
            await page.wait_for(f"{_decision_of('item-201')} === 'rejected'")
            assert await page.evaluate(CARDS) == sheet.PAGE_SIZE  # still one page, still page 2
            assert await page.evaluate("document.querySelector('#grid .card').dataset.id") == "item-200"
            await page.click('#verdicts button[data-verdict="rejected"]')
            await page.wait_for(f"{SHOWN_IDS} === '[\"item-201\"]'")
            await page.screenshot(ARTEFACTS / "review-10000.png")
            assert page.errors == []
    finally:
        proc.kill()
        await proc.wait()
    assert decisions.read_all(out)["item-201"].decision == "rejected"
