"""The contact sheet (DIR/index.html): a night's report from a real run, checked as files and in headless Chromium."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest
from PIL import Image

from batchgen import manifest as manifest_module
from batchgen import report, runner, sheet
from batchgen.errors import UsageError
from batchgen.ledger import Ledger, error_record
from batchgen.progress import Reporter

from .browser import ARTEFACTS, chromium, needs_browser
from .helpers import COUNT_CARDS, KEY, LIGHTBOX, SHOWN_IDS, make_settings

# A prompt that tries every way out of its element: of the JSON <script> block, of an attribute, of the text.
HOSTILE = '</script><script>document.title="pwned"</script><img src=x onerror=alert(1)> & \u2028 <!-- "quotes"'


def manifest_of(path: Path, prompts: dict[str, str], **fields: object) -> Path:
    """A YAML manifest of {id: prompt}; values written as JSON (a YAML subset) to keep every character."""
    lines = []
    for item_id, prompt in prompts.items():
        lines.append(f"- id: {item_id}\n  prompt: {json.dumps(prompt)}\n")
        lines.extend(f"  {k}: {json.dumps(v)}\n" for k, v in fields.items())
    path.write_text("".join(lines), encoding="utf-8")
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------- the run's figures for the page


def test_last_run_figures_round_trip_and_absent(tmp_path):
    assert sheet.last_run_figures(tmp_path) is None  # no run has written them: the page shows counts only
    figures = {"paid_creates": 12, "retries": 3, "rate_limited": 2, "seconds": 81.5, "exit_code": 1}
    path = sheet.write_last_run(tmp_path, {**figures, "note": "not a number", "flag": True})
    assert path == tmp_path / ".batchgen" / "last-run.json"
    assert sheet.last_run_figures(tmp_path) == figures  # numbers only; a bool is not a figure
    assert sorted(p.name for p in path.parent.iterdir()) == ["last-run.json"]  # no temporary file left


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"only": "text"}', b""])
def test_last_run_figures_damaged_is_none(tmp_path, content):
    (tmp_path / ".batchgen").mkdir()
    (tmp_path / ".batchgen" / "last-run.json").write_bytes(content)
    assert sheet.last_run_figures(tmp_path) is None


def test_write_last_run_replaces_the_file_whole(tmp_path):
    sheet.write_last_run(tmp_path, {"paid_creates": 1, "exit_code": 0})
    path = tmp_path / ".batchgen" / "last-run.json"
    with path.open("rb") as reader:  # a reader of the old file keeps it whole: a rename, not a rewrite in place
        sheet.write_last_run(tmp_path, {"paid_creates": 2, "exit_code": 5})
        assert json.loads(reader.read()) == {"exit_code": 0, "paid_creates": 1}
    assert sheet.last_run_figures(tmp_path) == {"exit_code": 5, "paid_creates": 2}


# ---------------------------------------------------------------- escaping the inline data


def test_script_json_cannot_leave_its_element():
    value = {"prompt": HOSTILE, "more": "a\u2029b</SCRIPT >"}
    text = sheet.script_json(value)
    assert not set(text) & {"<", ">", "&", "\u2028", "\u2029"}
    assert json.loads(text) == value  # the escapes mean the same characters: nothing is lost


# ---------------------------------------------------------------- a real night against the simulator


async def _night(sim_factory, tmp_path: Path) -> Path:
    """A folder with every state the sheet shows: succeeded, failed, submitted, pending, no longer in manifest."""
    out = tmp_path / "out"
    fields = {"seed": 7, "aspect_ratio": "16:9"}
    first = ["a calm sea at dawn", HOSTILE, "rejected [sim:fail-policy]", "an old lighthouse", "a red kite"]
    first = {f"item-{n:02d}": prompt for n, prompt in enumerate(first)}
    path = manifest_of(tmp_path / "m.yaml", first, **fields)
    async with sim_factory(latency=0.1) as sim:
        outcome = await runner.run(make_settings(path, out, sim), Reporter(stream=io.StringIO()))
        assert outcome.exit_code == 1
        # The next night drops item-04, adds a slow item (it outlives --task-timeout: stays submitted) and one
        # more that --limit leaves pending.
        del first["item-04"]
        later = {**first, "item-05": "a slow storm [sim:slow]", "item-06": "a quiet harbour"}
        manifest_of(tmp_path / "m.yaml", later, **fields)
        settings = make_settings(path, out, sim, limit=1, task_timeout=0.3)
        outcome = await runner.run(settings, Reporter(stream=io.StringIO()))
    # Where the integrator calls it: at the end of the run, with the figures the summary line prints.
    sheet.write_last_run(out, runner.figures(outcome))
    counts = report.status(out)["counts"]
    assert counts == {"pending": 1, "submitted": 1, "succeeded": 3, "failed": 1}, counts
    assert outcome.exit_code == 5
    return out


async def test_report_files_are_escaped_shareable_and_reused(sim_factory, tmp_path):
    out = await _night(sim_factory, tmp_path)
    (out / ".batchgen" / "thumbs").mkdir(mode=0o700, parents=True)  # as an older batchgen, or a strict umask, left it
    old = os.umask(0o077)  # nightly.sh's umask: the sheet must still be readable by others
    try:
        page = sheet.write_report(out).read_text()
    finally:
        os.umask(old)
    # Shareable: every thumbnail 0644 in a 0755 folder outside the private state folder; the page 0644.
    thumbs = sorted((out / ".batchgen" / "thumbs").iterdir())
    assert [p.name for p in thumbs] == ["item-00.png.jpg", "item-01.png.jpg", "item-03.png.jpg", "item-04.png.jpg"]
    assert (
        mode(out / ".batchgen") == 0o711
        and mode(out / ".batchgen" / "thumbs") == 0o755
        and {mode(p) for p in thumbs} == {0o644}
    )
    assert mode(out / "index.html") == 0o644
    # Escaped: the prompt cannot end the data block; only the page's own two scripts exist; nothing to fetch.
    assert page.count("<script") == 2 and page.count("</script>") == 2
    assert "<img src=x" not in page and "\\u003c/script\\u003e\\u003cscript\\u003e" in page  # there, as data
    assert "http://" not in page and "https://" not in page
    assert KEY not in page
    data = page.split('<script type="application/json" id="sheet-data">')[1].split("</script>")[0]
    items = json.loads(data)["items"]
    assert next(i for i in items if i["id"] == "item-01")["prompt"] == HOSTILE  # exactly the prompt, as text
    # Labelled facts, as data: the seed, the generation time, the reason of a failure, the retired item.
    calm = next(i for i in items if i["id"] == "item-00")
    assert calm["seed"] == 7 and calm["took"] >= 0 and calm["thumb"] == ".batchgen/thumbs/item-00.png.jpg"
    assert {i["id"]: i["state"] for i in items} == {
        "item-00": "succeeded",
        "item-01": "succeeded",
        "item-02": "failed",
        "item-03": "succeeded",
        "item-04": "retired",
        "item-05": "submitted",
        "item-06": "pending",
    }
    assert "task_policy" in next(i for i in items if i["id"] == "item-02")["reason"]
    assert json.loads(data)["run"]["exit_code"] == 5
    # Thumbnails are reused, not remade.
    before = {p: p.stat().st_mtime_ns for p in thumbs}
    sheet.write_report(out)
    assert {p: p.stat().st_mtime_ns for p in thumbs} == before


def test_thumbnail_folder_through_a_symlink_is_refused(tmp_path):
    out = _big_ledger(tmp_path, 3)
    (tmp_path / "elsewhere").mkdir()
    (out / ".batchgen").mkdir(exist_ok=True)
    (out / ".batchgen" / "thumbs").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UsageError, match="symbolic link"):
        sheet.write_report(out)


def test_ledger_file_names_outside_the_folder_are_neither_linked_nor_read(tmp_path):
    out = _big_ledger(tmp_path, 2)
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    with Ledger.open(out, "big.yaml") as ledger:  # a ledger edited by hand, or by someone else
        ledger.succeeded("item-01", ["../outside.png"], ["0" * 64])
    page = sheet.write_report(out).read_text()
    data = json.loads(page.split('id="sheet-data">')[1].split("</script>")[0])
    entry = next(i for i in data["items"] if i["id"] == "item-01")
    assert "file" not in entry and "thumb" not in entry and "no image file" in entry["reason"]
    assert not (out / "outside.png.jpg").exists() and "outside" not in page


# ---------------------------------------------------------------- in a real browser


@needs_browser
async def test_contact_sheet_in_chromium(sim_factory, tmp_path):
    out = await _night(sim_factory, tmp_path)
    url = sheet.write_report(out).as_uri()
    async with chromium(tmp_path / "profile", 1280, 900) as page:
        await page.goto(url)
        await page.wait_for(f"{COUNT_CARDS} === 7")
        assert await page.evaluate("document.title") == "m.yaml · batchgen contact sheet"  # not "pwned"
        text = await page.evaluate("document.body.innerText")
        assert HOSTILE.replace("\u2028", "") in text.replace("\u2028", "")  # the prompt shows as text
        # The run's figures at the top, from last-run.json.
        figures = await page.evaluate("document.getElementById('figures').innerText")
        for label in ("EXIT CODE", "PAID CREATES", "RETRIES", "429S", "WALL TIME"):
            assert label in figures.upper()
        assert "incomplete" in figures
        # Labelled seed and generation time on a card.
        card = await page.evaluate("document.querySelector('.card[data-id=\"item-00\"]').innerText")
        assert "seed 7" in card and "generated in" in card
        # Uniform boxes: every thumbnail box has the same size, and it is square (object-fit: contain inside).
        boxes = await page.evaluate(
            "Array.from(document.querySelectorAll('.thumb')).map(b => [b.offsetWidth, b.offsetHeight])"
        )
        assert len(set(map(tuple, boxes))) == 1 and boxes[0][0] == boxes[0][1] > 100
        assert await page.evaluate(
            "Array.from(document.querySelectorAll('.thumb img')).every(i => i.loading === 'lazy' && "
            "getComputedStyle(i).objectFit === 'contain')"
        )
        await page.wait_for("Array.from(document.querySelectorAll('.thumb img')).every(i => i.naturalWidth > 0)")
        await page.screenshot(ARTEFACTS / "contact-sheet-1280.png")

        # Filter by state: one click per chip, the grid holds exactly that state.
        for state, ids in [
            ("failed", ["item-02"]),
            ("submitted", ["item-05"]),
            ("pending", ["item-06"]),
            ("retired", ["item-04"]),
            ("succeeded", ["item-00", "item-01", "item-03"]),
        ]:
            await page.click(f'#chips button[data-state="{state}"]')
            assert await page.wait_for(
                f"JSON.stringify({SHOWN_IDS}) === {json.dumps(json.dumps(ids, separators=(',', ':')))}"
            )
        # Search by prompt, within the filter; then by id across all.
        await page.type("#q", "LIGHTHOUSE")
        await page.wait_for(f"JSON.stringify({SHOWN_IDS}) === '[\"item-03\"]'")
        await page.click('#chips button[data-state="all"]')
        await page.type("#q", "item-05")
        await page.wait_for(f"JSON.stringify({SHOWN_IDS}) === '[\"item-05\"]'")
        await page.type("#q", "no such thing")
        await page.wait_for(
            f"{COUNT_CARDS} === 0 && document.getElementById('shown').textContent.startsWith('Nothing')"
        )
        await page.type("#q", "")
        await page.wait_for(f"{COUNT_CARDS} === 7")

        # The lightbox: open by clicking a thumbnail, next and previous by button and by arrow key, Escape closes.
        await page.click('.card[data-id="item-00"] .thumb')
        assert await page.wait_for(LIGHTBOX) == "item-00"
        await page.wait_for("document.getElementById('lb-img').naturalWidth > 0")  # the full image, not the thumb
        assert await page.evaluate("document.getElementById('lb-img').getAttribute('src')") == "item-00.png"
        info = await page.evaluate("document.getElementById('lb-info').innerText")
        assert "Seed\n7" in info and "Generation time" in info and "×" in info
        await page.click("#lb-next")
        assert await page.wait_for(f"{LIGHTBOX} === 'item-01'")
        await page.key("ArrowRight")
        assert await page.wait_for(f"{LIGHTBOX} === 'item-02'")
        assert "task_policy" in await page.evaluate("document.getElementById('lb-none').textContent")
        await page.key("ArrowLeft")
        await page.wait_for(f"{LIGHTBOX} === 'item-01'")
        await page.click("#lb-prev")
        await page.wait_for(f"{LIGHTBOX} === 'item-00'")
        assert await page.evaluate("document.getElementById('lb-prev').disabled")  # the first: nothing before it
        await page.key("Escape")
        await page.wait_for(f"{LIGHTBOX} === null")
        # The lightbox walks what the filter shows: failed only -> one item, both directions closed.
        await page.click('#chips button[data-state="succeeded"]')
        await page.click('.card[data-id="item-03"] .thumb')
        await page.wait_for(f"{LIGHTBOX} === 'item-03'")
        assert await page.evaluate("document.getElementById('lb-next').disabled")
        await page.screenshot(ARTEFACTS / "contact-sheet-lightbox-1280.png")
        await page.click("#lb-close")
        await page.wait_for(f"{LIGHTBOX} === null")

        # Narrow: a phone's width, the same page.
        await page.click('#chips button[data-state="all"]')
        await page.resize(420, 900)
        await page.evaluate("window.scrollTo(0, 0)")
        await page.wait_for(f"{COUNT_CARDS} === 7")
        assert await page.evaluate("document.documentElement.scrollWidth <= 420")  # nothing sticks out sideways
        await page.screenshot(ARTEFACTS / "contact-sheet-420.png")
        await page.click('.card[data-id="item-01"] .thumb')
        await page.wait_for(f"{LIGHTBOX} === 'item-01'")
        await page.screenshot(ARTEFACTS / "contact-sheet-lightbox-420.png")
        await page.evaluate("0")  # let the last events arrive
        assert page.errors == []  # no exception, no CSP violation
        assert page.requests and all(u.startswith("file://") for u in page.requests), page.requests  # no network

        # Defence in depth: were some text ever left unescaped, the page's policy runs only its own script.
        tampered = out / "tampered.html"
        html = (out / "index.html").read_text()
        tampered.write_text(html.replace("<main", "<script>document.title='pwned'</script><main", 1))
        await page.goto(tampered.as_uri())
        await page.wait_for(f"{COUNT_CARDS} === 7")
        assert await page.evaluate("document.title") != "pwned"
        assert any("Content Security Policy" in error for error in page.errors)


def _big_ledger(tmp_path: Path, n: int) -> Path:
    """A real ledger of n items (through the Ledger API, as a run writes it), most with an image."""
    path = manifest_of(tmp_path / "big.yaml", {f"item-{k:02d}": f"prompt number {k}" for k in range(n)}, seed=3)
    items = manifest_module.load(path)
    out = tmp_path / "out"
    out.mkdir()
    image = out / "source.png"
    Image.new("RGB", (48, 32), (40, 90, 160)).save(image)
    with Ledger.open(out, path.name) as ledger:
        ledger.track(items)
        for k, item in enumerate(items):
            if k % 500 == 7:
                continue  # pending
            ledger.start_submit(item.id, item.request)
            ledger.submitted(item.id, f"task-{k}")
            if k % 1000 == 3:
                ledger.failed(item.id, error_record("task_policy", "400", f"flagged {k}"))
            elif k % 2000 != 11:  # submitted otherwise
                name = f"{item.id}.png"
                os.link(image, out / name)
                ledger.succeeded(item.id, [name], ["0" * 64])
    image.unlink()
    return out


@needs_browser
@pytest.mark.slow
async def test_ten_thousand_items_keep_one_page_in_the_dom(tmp_path):
    out = _big_ledger(tmp_path, 10_000)
    url = sheet.write_report(out).as_uri()
    assert sheet.last_run_figures(out) is None
    async with chromium(tmp_path / "profile", 1280, 900) as page:
        await page.goto(url)
        await page.wait_for(f"{COUNT_CARDS} > 0")
        assert await page.evaluate(COUNT_CARDS) == sheet.PAGE_SIZE  # one page of cards, not 10,000
        assert await page.evaluate("document.querySelectorAll('img').length") <= sheet.PAGE_SIZE + 1
        assert await page.evaluate("document.getElementById('no-run') !== null")  # counts only: no figures kept
        assert "Showing 1–200 of 10,000 cards" in await page.evaluate("document.getElementById('shown').textContent")
        # Lazy: far fewer thumbnails fetched than cards on the page.
        assert len([u for u in page.requests if "/thumbs/" in u]) < sheet.PAGE_SIZE / 2
        await page.click('#pager button[data-go="next"]')
        await page.wait_for("document.querySelector('#grid .card').dataset.id === 'item-200'")
        assert await page.evaluate(COUNT_CARDS) == sheet.PAGE_SIZE
        await page.click('#chips button[data-state="failed"]')
        await page.wait_for(f"{COUNT_CARDS} === 10")
        await page.type("#q", "prompt number 9999")
        await page.wait_for(f"JSON.stringify({SHOWN_IDS}) === '[]'")  # 9999 did not fail: search within the filter
        await page.click('#chips button[data-state="all"]')
        await page.wait_for(f"JSON.stringify({SHOWN_IDS}) === '[\"item-9999\"]'")
        # The lightbox crosses pages: from the last card of page 1, next opens the first of page 2.
        await page.type("#q", "")
        await page.wait_for(f"{COUNT_CARDS} === {sheet.PAGE_SIZE}")
        await page.click('.card[data-id="item-199"] .thumb')
        await page.wait_for(f"{LIGHTBOX} === 'item-199'")
        await page.key("ArrowRight")
        await page.wait_for(f"{LIGHTBOX} === 'item-200'")
        assert await page.evaluate("document.querySelector('#grid .card').dataset.id") == "item-200"
        assert await page.evaluate(COUNT_CARDS) == sheet.PAGE_SIZE
        await page.evaluate("0")
    assert page.errors == []
