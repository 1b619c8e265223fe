"""benchmarks/against.py measures the code it names on each side: a commit made slow reads slow, this code fast.

Its first version ran the working tree's batchgen on both sides when started from the repository's root (`python
-m` puts the current folder ahead of PYTHONPATH): every ratio it printed was this code against itself."""

from __future__ import annotations

import os
import random
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
    row = re.search(
        r"\| capacity \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| 1 of 1 \| ([\d.]+) \[([\d.]+), ([\d.]+)\] 0\.0% \|",
        done.stdout,
    )
    assert row, done.stdout
    mine, theirs, ratio, middle, low, high = (float(v) for v in row.groups())
    assert theirs > mine + 20 and ratio < 0.7, done.stdout  # ~1 s more CPU over 20 tasks, on the slow side only
    assert low == middle == high == pytest.approx(mine / theirs, abs=0.002), done.stdout  # one round: its own ratio


def test_the_rounds_ratios_give_a_median_and_an_interval_from_the_binomial():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from against import paired

    # Ten rounds, the other side at 10 ms throughout: ratios 0.80 ... 1.25 (shuffled, as rounds come).
    mine = [9.0, 12.5, 8.0, 11.0, 9.5, 8.5, 10.5, 12.0, 10.0, 11.5]
    middle, low, high, cover = paired(mine, [10.0] * 10)
    # The 2nd from each end: P(Binomial(10, 1/2) <= 1) = 11/1024 on each side, 97.85 %; the 3rd gives 89 %.
    assert (middle, low, high) == pytest.approx((1.025, 0.85, 1.2)) and cover == pytest.approx(1 - 22 / 1024)
    # Pairs, not sorted sides: the same figures against a drifting other side (each round its own 0.9).
    drift = [10.0, 12.0, 14.0, 16.0, 18.0, 20.0]
    assert paired([0.9 * v for v in drift], drift)[:3] == pytest.approx((0.9, 0.9, 0.9))
    # Five rounds cannot reach 95 %: the widest interval, with its own 1 - 2/32.
    five = paired([1.0, 2.0, 3.0, 4.0, 5.0], [2.0] * 5)
    assert five == pytest.approx((1.5, 0.5, 2.5, 0.9375))
    assert paired([8.0, 9.0, 10.0, 11.0, 12.0, 13.0], [10.0] * 6)[1:] == pytest.approx((0.8, 1.3, 1 - 2 / 64))


def test_a_name_that_is_no_scaled_scenario_is_refused_before_anything_runs():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "against.py"), "HEAD", "capacty"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "not a scaled scenario: capacty" in done.stderr, done.stderr


def test_the_interval_holds_the_true_median_ratio_as_often_as_it_says():
    """Drawn rounds (seeded) around a known median ratio, skewed noise and a drifting machine: the interval holds
    it in the share of draws it claims. An interval one rank too narrow holds it in 89 % of ten-round draws."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from against import paired

    rng = random.Random(18)
    for rounds in (6, 10, 21):
        held, claimed = 0, 0.0
        for _ in range(3000):
            theirs = [rng.uniform(5.0, 9.0) for _ in range(rounds)]  # the machine's speed, round by round
            mine = [0.94 * t * rng.lognormvariate(0.0, 0.08) for t in theirs]  # median ratio 0.94 exactly
            _, low, high, claimed = paired(mine, theirs)
            held += low <= 0.94 <= high
        assert abs(held / 3000 - claimed) < 0.012, (rounds, held / 3000, claimed)


def test_a_benchmark_never_writes_into_the_users_remembered_services(tmp_path):
    """Each scenario's runs remember the service in a folder of the benchmark's own. In the user's, every run left
    a file (582 here), and a port that came round again would have made a cold run start warm."""
    user = tmp_path / "user-state"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "capacity"],
        env={**os.environ, "XDG_STATE_HOME": str(user), "HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"scenario": "capacity"' in done.stdout and '"exit": 0' in done.stdout, done.stdout
    assert not user.exists() and not (tmp_path / "home").exists()
