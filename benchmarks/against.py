"""CPU per task of the scaled scenarios, this code against another commit's, in the same minutes.

    python benchmarks/against.py 1d49613^                    # the four scaled scenarios, five rounds
    python benchmarks/against.py REV capacity --rounds 3
    python benchmarks/against.py HEAD capacity --rounds 1 --quick   # tiny N: the smoke run CI does

CPU time on a shared machine moves by more than most changes from one quarter of an hour to the next (the same
code read 5.4 ms per task in `capacity` at one hour and 6.5 ms at the next, here): a figure in ms compares only
with figures taken in the same minutes. So this runs both codes on the same simulator, one after the other,
alternating which goes first, and prints the medians and their ratio. With a commit's recorded figures (the
README it shipped with), the ratio says what this code reads on the machine that took them.

The other commit's `batchgen/` is taken with `git archive` into a temporary folder, compiled, and run with the
same interpreter and libraries (PYTHONPATH first); the simulator is this code's, with run.py's scenario flags.
Each run has a state folder of its own: no remembered service is shared. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from run import ROOT, Scenario, Sim, batchgen_env, compiled, measured, scenarios, write_manifest

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
    archive = subprocess.run([*git, "archive", found.stdout.strip(), "batchgen"], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
            tar.extractall(into, filter="data")
        else:
            tar.extractall(into)  # our own repository's archive, from git itself
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(into / "batchgen")], check=True)
    return into


def one_run(s: Scenario, manifest: Path, work: Path, code: Path | None) -> dict[str, Any]:
    """One client run of `s` against a fresh simulator: `code` is the other commit's folder, None for this one."""
    sim = Sim(s.sim)
    try:
        env = batchgen_env(sim.api)
        env["XDG_STATE_HOME"] = tempfile.mkdtemp(dir=work)
        if code is not None:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(code), env.get("PYTHONPATH", "")) if p)
        out = tempfile.mkdtemp(dir=work)
        args = [sys.executable, "-m", "batchgen", "run", str(manifest), "--out", out, "--no-progress", "--quiet"]
        result = measured([*args, *s.run], env)
    finally:
        sim.close()
    if result["exit"] != 0:
        raise SystemExit(f"{s.name}: exit {result['exit']}: {result['stderr'][-500:]}")
    return {"cpu_ms": 1000 * result["cpu"] / s.n, "wall": result["wall"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", help="the other commit (anything git names: a hash, a tag, main~3)")
    parser.add_argument("names", nargs="*", help=f"scenarios (default: {', '.join(SCALED)})")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each code per scenario (default 5)")
    parser.add_argument("--quick", action="store_true", help="tiny N: a smoke run")
    args = parser.parse_args()
    chosen = [s for s in scenarios(args.quick) if s.name in (args.names or SCALED)]
    with tempfile.TemporaryDirectory(prefix="batchgen-against-") as tmp:
        work = Path(tmp)
        compiled()
        other = checkout(args.rev, work / "other")
        print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; this code against {args.rev}")
        print("| scenario | this code, ms/task | the other, ms/task | median ratio | pairs lower |")
        print("|---|---|---|---|---|")
        for s in chosen:
            manifest = write_manifest(work / f"{s.name}.yaml", s.n)
            mine: list[float] = []
            theirs: list[float] = []
            for round_ in range(args.rounds):
                order = [None, other] if round_ % 2 == 0 else [other, None]
                for code in order:
                    figure = one_run(s, manifest, work, code)["cpu_ms"]
                    (mine if code is None else theirs).append(figure)
            ratio = statistics.median(mine) / statistics.median(theirs)
            lower = sum(a < b for a, b in zip(mine, theirs, strict=True))
            print(
                f"| {s.name} | {', '.join(f'{v:.2f}' for v in mine)} | {', '.join(f'{v:.2f}' for v in theirs)} "
                f"| {ratio:.3f} | {lower} of {args.rounds} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
