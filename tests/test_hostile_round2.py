"""The second hostile round (issue 19's merge): the hook guard, the streamed key file, the descriptor check of a
file that must lie inside its folder, and the typed readers of a record's optional fields — attacked as a
hostile user, a misbehaving service and a hostile file system would, with real processes and real files."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from batchgen import endactions, finish
from batchgen.progress import Reporter


def _summary(tmp_path: Path) -> endactions.Summary:
    return endactions.Summary(
        code=0,
        meaning="every item succeeded",
        manifest=str(tmp_path / "m.yaml"),
        directory=str(tmp_path),
        counts={"pending": 0, "submitted": 0, "succeeded": 1, "failed": 0},
        figures={"paid_creates": 1},
        failures=[],
    )


async def _at_end(tmp_path: Path, *hooks: tuple[str, ...]) -> str:
    """The end actions with `hooks`, run as batchgen runs them; their log."""
    bounds = endactions.Bounds(total=20.0, after_signal=5.0, grace=1.0, ping=1.0)
    actions = endactions.EndActions(hooks=hooks, bounds=bounds)
    with (tmp_path / "log").open("w") as stream:
        await asyncio.to_thread(finish.at_end, actions, _summary(tmp_path), Reporter(stream=stream, progress=False))
    return (tmp_path / "log").read_text()


# ---------------------------------------------------------------- the hook guard


PLANTED = "open({marker!r}, 'w').write('ran')\n"


@pytest.mark.parametrize("planted", ["batchgen.py", "batchgen/__init__.py"])
async def test_a_batchgen_module_in_the_working_folder_never_runs_in_the_hook_guards_place(
    tmp_path, monkeypatch, planted
):
    # `python -m batchgen.hookguard` looks in the working folder first: a user's wrapper script `batchgen.py` (or
    # a planted one) ran in the guard's place — its code executed, and the hook itself never ran.
    work = tmp_path / "work"
    (work / planted).parent.mkdir(parents=True, exist_ok=True)
    (work / planted).write_text(PLANTED.format(marker=str(tmp_path / "planted-ran")))
    if planted.startswith("batchgen/"):
        (work / "batchgen" / "hookguard.py").write_text(PLANTED.format(marker=str(tmp_path / "planted-ran")))
    monkeypatch.chdir(work)
    hook = (sys.executable, "-c", f"open({str(tmp_path / 'hook-ran')!r}, 'w').write('ran')")
    log = await _at_end(tmp_path, hook)
    assert not (tmp_path / "planted-ran").exists(), log
    assert (tmp_path / "hook-ran").read_text() == "ran", log
    assert "--on-finish hook 1 (python" in log and ": exit 0" in log
