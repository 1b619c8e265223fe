"""CPU per task of the scaled scenarios, this code against another commit's, in the same minutes.

    python benchmarks/against.py HEAD                        # the noise floor first: this code against itself
    python benchmarks/against.py 1d49613^                    # the four scaled scenarios, ten rounds
    python benchmarks/against.py REV capacity --rounds 3
    python benchmarks/against.py HEAD capacity --rounds 1 --quick   # tiny N: the smoke run CI does

CPU time on a shared machine moves by more than most changes from one quarter of an hour to the next (the same
code read 5.4 ms per task in `capacity` at one time and 8.75 ms twenty minutes later, here): a figure in ms
compares only with figures taken in the same minutes. So this runs both codes on the same simulator, one after
the other, alternating which goes first, and prints the medians and their ratio. With a commit's recorded
figures (the README it shipped with), the ratio says what this code reads on the machine that took them.

Each round's two runs, taken one beside the other, give a ratio of their own; the last column is the median of
those and an interval that holds the true median ratio with the confidence printed (`paired`: order statistics,
no assumption on the noise's shape). Its top end below 1: this code costs less, beyond the noise of those
rounds; an interval around 1 shows no difference (this code against itself must read so). Ten rounds give a
97.9 % interval, five only a 93.8 % one.

"This code" is the batchgen beside this script; the other commit's `batchgen/` is taken with `git archive` into a
temporary folder and compiled. Both run with the same interpreter and libraries, each with its own folder first
on PYTHONPATH and `python -P` (without -P, `python -m` puts the current folder first, and from the repository's
root both sides would run the working tree's code); before measuring, each side is checked to import the code it
names. An older commit may need libraries this one dropped (the code before issue 18 needs aiofiles): its runs
then fail, saying so. The simulator is this code's, with run.py's scenario flags. Each run has a state folder of
its own: no remembered service is shared. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run.py beside it, even under PYTHONSAFEPATH
from run import (
    ROOT,
    Scenario,
    Sim,
    batchgen_env,
    code_env,
    compiled,
    measured,
    quiet_run,
    scenarios,
    write_manifest,
)

SCALED = ("rate_known", "rate_unknown", "capacity", "capacity_c64")


def checkout(rev: str, into: Path) -> Path:
    """`rev`'s batchgen/ under `into`, compiled as an installed package has it. `rev` is resolved to a commit's
    hash first: a name starting with "-" is never read as one of git's options."""
    git = ["git", "-C", str(ROOT)]
    found = subprocess.run(
        [*git, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        raise SystemExit(f"against.py: {rev!r} names no commit of this repository")
    archive = subprocess.run([*git, "archive", found.stdout.strip(), "batchgen"], capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"against.py: {rev}: {archive.stderr.decode(errors='replace').strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
            tar.extractall(into, filter="data")
        else:
            tar.extractall(into)  # our own repository's archive, from git itself
    compiled(into)
    return into


def check_imports(folder: Path, name: str, limit: float) -> None:
    """Refuse to measure unless `python -P` with `folder` first imports the batchgen under `folder`."""
    try:
        found = subprocess.run(
            [sys.executable, "-P", "-c", "import batchgen; print(batchgen.__file__)"],
            env=code_env(folder),
            capture_output=True,
            text=True,
            timeout=limit,
        )
    except subprocess.TimeoutExpired:
        raise SystemExit(f"against.py: {name}: importing batchgen took more than {limit:g} s") from None
    where = Path(found.stdout.strip()).resolve().parent if found.returncode == 0 else None
    if where != (folder / "batchgen").resolve():
        said = found.stderr.strip().splitlines()[-1:] or [f"from {where}"]
        raise SystemExit(f"against.py: {name} does not import its own batchgen ({said[0]})")


def paired(mine: list[float], theirs: list[float], confidence: float = 0.95) -> tuple[float, float, float, float]:
    """The median of the rounds' own ratios (this code's run over the other's, taken one beside the other) and an
    interval that holds the true median ratio with the confidence printed, whatever the noise's shape: the sorted
    ratios' k-th from each end, k as large as the binomial allows (each round's ratio is as likely to fall on
    either side of the true median). Below 1 at its top end: this code costs less beyond the noise of these
    rounds. With too few rounds for `confidence` (5 give 93.8 % at best), the widest interval and its own
    confidence. Returns (median, low, high, confidence)."""
    ratios = sorted(a / b for a, b in zip(mine, theirs, strict=True))
    n = len(ratios)

    def cover(k: int) -> float:  # P(r_k <= median <= r_{n-k+1}) = 1 - 2 P(Binomial(n, 1/2) < k)
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n

    k = 1
    while 2 * (k + 1) <= n + 1 and cover(k + 1) >= confidence:
        k += 1
    return statistics.median(ratios), ratios[k - 1], ratios[n - k], cover(k)


def one_run(s: Scenario, manifest: Path, work: Path, code: Path, name: str, limit: float) -> float:
    """One client run of `s` against a fresh simulator, with the batchgen under `code`: its CPU ms per task."""
    sim = Sim(s.sim)
    try:
        env = batchgen_env(sim.api, Path(tempfile.mkdtemp(dir=work)), code)
        out = tempfile.mkdtemp(dir=work)
        result = measured(quiet_run(manifest, out, *s.run), env, limit=limit)
    finally:
        sim.close()
    if result["exit"] != 0:
        raise SystemExit(f"against.py: {s.name}, {name}: exit {result['exit']}: {result['stderr'][-500:]}")
    return 1000 * result["cpu"] / s.n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", help="the other commit (anything git names: a hash, a tag, main~3)")
    parser.add_argument("names", nargs="*", help=f"scenarios (default: {', '.join(SCALED)})")
    parser.add_argument("--rounds", type=int, default=10, help="runs of each code per scenario (default 10)")
    parser.add_argument("--quick", action="store_true", help="tiny N: a smoke run")
    args = parser.parse_intermixed_args()
    if unknown := sorted(set(args.names) - set(SCALED)):
        parser.error(f"not a scaled scenario: {', '.join(unknown)} (they are {', '.join(SCALED)})")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    # SIGTERM (a CI time-out, kill): unwind, so that the simulator, the client and the temporary folder go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    chosen = [s for s in scenarios(args.quick) if s.name in (args.names or SCALED)]
    limit = 120.0 if args.quick else 900.0  # a run that hangs fails; a quick one within two minutes
    with tempfile.TemporaryDirectory(prefix="batchgen-against-") as tmp:
        work = Path(tmp)
        compiled()
        other = checkout(args.rev, work / "other")
        sides = {"this code": ROOT, args.rev: other}
        for name, folder in sides.items():
            check_imports(folder, name, limit)
        print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; this code against {args.rev}")
        print(
            "| scenario | this code, ms/task | the other, ms/task | median ratio | pairs lower "
            "| rounds' ratios: median [interval] confidence |"
        )
        print("|---|---|---|---|---|---|")
        for s in chosen:
            manifest = write_manifest(work / f"{s.name}.yaml", s.n)
            figures: dict[str, list[float]] = {name: [] for name in sides}
            for round_ in range(args.rounds):
                order = list(sides.items()) if round_ % 2 == 0 else list(sides.items())[::-1]
                for name, folder in order:
                    figures[name].append(one_run(s, manifest, work, folder, name, limit))
            mine, theirs = figures["this code"], figures[args.rev]
            ratio = statistics.median(mine) / statistics.median(theirs)
            lower = sum(a < b for a, b in zip(mine, theirs, strict=True))
            middle, low, high, cover = paired(mine, theirs)
            print(
                f"| {s.name} | {', '.join(f'{v:.2f}' for v in mine)} | {', '.join(f'{v:.2f}' for v in theirs)} "
                f"| {ratio:.3f} | {lower} of {args.rounds} | {middle:.3f} [{low:.3f}, {high:.3f}] {cover:.1%} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
