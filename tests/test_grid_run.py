"""A grid over the simulator: edited between runs, the rerun pays for exactly the cells that are new."""

from __future__ import annotations

import io
import json
from pathlib import Path

from batchgen import manifest, runner
from batchgen.progress import Reporter
from batchgen.sim.model import request_key

from .helpers import make_settings, run

GRID = """\
items:
  - id: zoo
    prompt: "A {animal} in {place}, {style}"
    matrix:
      animal: [fox, owl]
      place: [snow, rain]
      style: {file: styles.txt}
    seed: 7
"""


def requests_of(path: Path) -> dict[str, str]:
    """Each manifest item's id -> the key the simulator counts its creates by."""
    return {item.id: request_key(item.request) for item in manifest.load(path)}


async def test_an_edited_grid_pays_only_for_its_new_cells(sim_factory, tmp_path, capsys):
    (tmp_path / "styles.txt").write_text("# one per line\noil painting\nwatercolour\n\nink\n", encoding="utf-8")
    path = tmp_path / "zoo.yaml"
    path.write_text(GRID, encoding="utf-8")
    out = tmp_path / "out"
    first = requests_of(path)
    assert len(first) == 2 * 2 * 3

    async with sim_factory() as sim:
        assert (await run(make_settings(path, out, sim))).exit_code == 0
        assert sim.stats.creates == 12
        assert dict(sim.stats.creates_by_request) == {key: 1 for key in first.values()}

        # An axis value added (heron), another removed (rain), count raised from 1 to 2.
        edited = GRID.replace("[fox, owl]", "[fox, owl, heron]").replace("[snow, rain]", "[snow]")
        path.write_text(edited.replace("    seed: 7", "    seed: 7\n    count: 2"), encoding="utf-8")
        second = requests_of(path)
        new = set(second) - set(first)
        assert len(second) == 3 * 1 * 3 * 2 and len(new) == 3 + 9  # heron's copy 1, and every copy 2
        assert all(second[i] == first[i] for i in set(second) & set(first))  # kept cells: same ids, same requests

        capsys.readouterr()
        assert runner.dry_run(make_settings(path, out, sim, dry_run=True), Reporter(stream=io.StringIO())) == 0
        predicted = capsys.readouterr().out
        assert "  paid creates: 12 = new + changed + retried" in predicted, predicted

        assert (await run(make_settings(path, out, sim))).exit_code == 0
        assert sim.stats.creates == 12 + 12  # exactly the new cells
        paid_now = {key for key, n in sim.stats.creates_by_request.items()} - set(first.values())
        assert paid_now == {second[i] for i in new}
        assert all(n == 1 for n in sim.stats.creates_by_request.values())  # nothing paid twice

        # Reordered values and axes, run again: the same cells, nothing to pay.
        lines = path.read_text(encoding="utf-8").replace("[fox, owl, heron]", "[heron, owl, fox]").splitlines()
        lines[4:7] = lines[4:7][::-1]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        assert requests_of(path) == second
        assert (await run(make_settings(path, out, sim))).exit_code == 0
        assert sim.stats.creates == 24

    doc = json.loads((out / "results.json").read_text())
    retired = set(first) - set(second)
    assert len(retired) == 6 and all("-rain-" in i for i in retired)
    assert all(doc["items"][i]["state"] == "succeeded" for i in (*second, *retired))  # retired cells kept
    assert doc["items"]["zoo-heron-snow-ink-2"]["request"]["input"] == {"prompt": "A heron in snow, ink", "seed": 8}
    for item_id in second:
        assert (out / f"{item_id}.png").is_file()
