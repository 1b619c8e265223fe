"""benchmarks/against.py measures the code it names on each side: a commit made slow reads slow, this code fast.

Its first version ran the working tree's batchgen on both sides when started from the repository's root (`python
-m` puts the current folder ahead of PYTHONPATH): every ratio it printed was this code against itself."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# About a second of CPU at import: at --quick's N = 20, ~50 ms a task more than batchgen's own ~20.
BUSY = "\n_busy = 0\nfor _i in range(25_000_000):\n    _busy += _i\n"


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs git and the repository")
def test_a_commit_made_slow_reads_slow_and_this_code_fast(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    # The code under test is the working tree's (a clone holds the last commit only): the tool and batchgen.
    for part in ("benchmarks", "batchgen"):
        shutil.rmtree(clone / part)
        shutil.copytree(ROOT / part, clone / part, ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    init = clone / "batchgen" / "__init__.py"
    fast = init.read_text(encoding="utf-8")
    init.write_text(fast + BUSY, encoding="utf-8")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "the working tree, slow at import"], check=True)
    init.write_text(fast, encoding="utf-8")  # the working tree (this code) is fast again; HEAD stays slow
    # Run from the clone's root, as CI and the docs do: the case that measured this code on both sides.
    done = subprocess.run(
        [sys.executable, "benchmarks/against.py", "HEAD", "capacity", "--quick", "--rounds", "1"],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    row = re.search(r"\| capacity \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", done.stdout)
    assert row, done.stdout
    mine, theirs, ratio = (float(v) for v in row.groups())
    assert theirs > mine + 20 and ratio < 0.7, done.stdout  # ~1 s more CPU over 20 tasks, on the slow side only


def test_a_name_that_is_no_scaled_scenario_is_refused_before_anything_runs():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "against.py"), "HEAD", "capacty"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "not a scaled scenario: capacty" in done.stderr, done.stderr
