"""Names batchgen keeps for itself (results.json*, index.html, .batchgen) are never given to an image."""

from __future__ import annotations

import json
import subprocess
import sys

from batchgen.names import Names


def test_names_never_hands_out_a_reserved_stem():
    names = Names(["results.json", "results.json.damaged-x", "index.html", "plain"], [])
    assert names.stems("results.json", 1) == ["_results.json"]
    assert names.stems("results.json.damaged-x", 2) == ["_results.json.damaged-x_1", "_results.json.damaged-x_2"]
    assert names.stems("index.html", 1) == ["_index.html"]
    assert names.stems("plain", 1) == ["plain"]
    twins = Names(["results.json", "Results.JSON"], [])  # case-folded twins: each a distinct, unreserved name
    (first,), (second,) = twins.stems("Results.JSON", 1), twins.stems("results.json", 1)
    assert first == "_Results.JSON" and second.startswith("_results.json~") and second.casefold() != first.casefold()


def test_items_named_like_the_ledger_leave_the_ledger_and_the_sheet_alone(tmp_path):
    (tmp_path / "m.yaml").write_text(
        "- id: results.json\n  prompt: a fox\n- id: results.json.damaged-x\n  prompt: an owl\n"
        "- id: index.html\n  prompt: a hare\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "batchgen", "run", "m.yaml", "--out", "o", "--simulate", "--no-progress", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    out = tmp_path / "o"
    images = sorted(p.name for p in out.iterdir() if p.suffix == ".png")
    assert images == ["_index.html.png", "_results.json.damaged-x.png", "_results.json.png"]
    ledger = json.loads((out / "results.json").read_text())
    assert ledger["items"]["results.json"]["files"] == ["_results.json.png"]
    report = subprocess.run(
        [sys.executable, "-m", "batchgen", "report", "o"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert report.returncode == 0, report.stderr
    assert (out / "index.html").read_text().startswith("<!")
    assert (out / "_index.html.png").read_bytes().startswith(b"\x89PNG")
