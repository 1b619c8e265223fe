"""The command-line reference is generated from the parser (issue 19): docs/cli.md and docs/batchgen.1 are what
`python -m batchgen.gendocs` makes of the parser as it is, and the parser takes its defaults from the settings."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from batchgen import args, config, gendocs

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_the_generated_reference_in_docs_is_current():
    for name, text in gendocs.generated().items():
        assert (DOCS / name).read_text(encoding="utf-8") == text, f"docs/{name} is stale: python -m batchgen.gendocs"


def test_check_finds_a_stale_file_and_writes_nothing_then_the_script_mends_it(tmp_path):
    gendocs.main([str(tmp_path)])
    assert gendocs.main([str(tmp_path), "--check"]) == 0
    page = tmp_path / "cli.md"
    page.write_text(page.read_text(encoding="utf-8").replace("--concurrency N", "--concurrency M"), encoding="utf-8")
    assert gendocs.main([str(tmp_path), "--check"]) == 1
    assert "--concurrency M" in page.read_text(encoding="utf-8")
    assert gendocs.main([str(tmp_path)]) == 0
    assert gendocs.main([str(tmp_path), "--check"]) == 0


def test_the_reference_holds_every_command_option_default_and_exit_code():
    root = args.build_parser()
    page = gendocs.generated()["cli.md"]
    roff = gendocs.generated()["batchgen.1"]
    for name, parser in gendocs.commands(root).items():
        assert f"## batchgen {name}" in page and f".SS batchgen {name}" in roff
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}" in page or f", {flag}" in page, flag
                    assert gendocs.roff(flag) in roff, flag
    assert "most tasks in flight at once (default 100," in page
    for code in ("70", "3", "2", "4", "128+N", "5", "1", "0"):
        assert f"| {code} |" in page and f".B {code}\n" in roff


def test_the_man_page_renders_when_man_is_there(tmp_path):
    if not shutil.which("man"):
        pytest.skip("no man on this machine")
    page = tmp_path / "batchgen.1"
    page.write_text(gendocs.generated()["batchgen.1"], encoding="utf-8")
    proc = subprocess.run(
        ["man", "-l", str(page)], capture_output=True, text=True, env={**os.environ, "MANWIDTH": "100"}
    )
    assert proc.returncode == 0, proc.stderr
    assert "EXIT STATUS" in proc.stdout and "--max-attempts N" in proc.stdout


def test_no_default_is_written_twice_in_the_parser():
    """A default lives in the settings; a help text shows it through %(default)s, never as a second literal."""
    root = args.build_parser()
    for name, parser in gendocs.commands(root).items():
        for action in parser._actions:
            default = action.default
            if default is None or isinstance(default, bool) or default is argparse.SUPPRESS or not action.help:
                continue
            literals = {str(default), f"{default:g}" if isinstance(default, float) else str(default)}
            for literal in literals:
                assert not re.search(rf"default:? {re.escape(literal)}\b", action.help), (name, action.dest)


def test_the_run_parser_takes_its_defaults_from_the_settings():
    parsed = args.build_parser().parse_args(["run", "m.yaml", "--out", "x"])
    for field in ("concurrency", "poll_rate", "max_attempts", "task_timeout", "name", "metadata", "log_format"):
        assert getattr(parsed, field) == config.run_default(field), field
    assert args.parse_rate(parsed.create_rate, "--create-rate") == config.run_default("create_rate")
    assert parsed.poll_interval == config.run_default("poll").first


def test_gendocs_runs_as_a_module(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "batchgen.gendocs", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batchgen.1", "cli.md"]


ROOT = DOCS.parent
# Pages other branches write (issue 19's integration links them from docs/index.md).
ELSEWHERE = {"guarantees-seams.md", "network.md", "pace.md", "models.md", "night-end.md"}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_readme_is_short_and_keeps_the_ci_test_command():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test,dev]' && python -m pytest\n" in text


def test_every_link_between_the_pages_leads_somewhere():
    pages = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *DOCS.glob("*.md")]
    anchors = {
        page.resolve(): {slug(h) for h in re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.M)}
        for page in pages
    }
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://")):
                continue
            name, _, anchor = target.partition("#")
            path = (page.parent / name).resolve() if name else page.resolve()
            if path.name in ELSEWHERE and path.parent == DOCS:
                continue
            assert path.exists(), f"{page.name}: {target}"
            if anchor and path in anchors:
                assert anchor in anchors[path], f"{page.name}: {target}"


def test_text_that_would_be_markup_is_escaped():
    # roff: a line starting with . or ' is a request, a backslash an escape, - a hyphen (not a minus) otherwise
    assert gendocs.roff(".TH evil") == "\\&.TH evil"
    assert gendocs.roff("'br") == "\\&'br"
    assert gendocs.roff("a\\fB--b\n.c") == "a\\efB\\-\\-b .c"
    # Markdown: a | would end the table cell, a newline the row
    assert gendocs.md("a|b\nc") == "a\\|b c"
