"""--price beyond the estimate: recorded in the ledger; the summary, `status` and the metrics file report spend so
far; the service's billing fields from recordInfo kept per item (issue 12, SPEC §3 --price)."""

from __future__ import annotations

import json
import sys

from batchgen import ledger

from .helpers import KEY, cli, env, manifest_of, run_args


async def test_price_is_recorded_and_spend_reported_in_summary_status_and_metrics(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a", "b", "c"])
    out = tmp_path / "out"
    metrics = tmp_path / "batchgen.prom"
    async with sim_factory(api_key=KEY, credits_per_task=2.5, credits_balance=100.0) as sim:
        code, _, stderr = await cli(
            run_args(path, out, sim, "--price", "0.04", "--log-format", "json", "--metrics-file", str(metrics))
        )
        assert code == 0, stderr
        assert sim.stats.creates == 3
    summary = [json.loads(line) for line in stderr.splitlines() if '"summary"' in line][-1]
    assert summary["paid_creates"] == 3
    assert summary["price"] == 0.04 and summary["spend"] == 0.12 and summary["spend_total"] == 0.12
    document = json.loads((out / "results.json").read_text())
    assert document["price"] == "0.04"
    costs = [record["cost"] for record in document["items"].values()]
    assert all(cost["consumeCredits"] == 2.5 and cost["costTime"] > 0 for cost in costs)
    assert sorted(cost["remainedCredits"] for cost in costs) == [92.5, 95.0, 97.5]
    prom = metrics.read_text()
    assert 'batchgen_last_run_spend{manifest="m.yaml"} 0.12' in prom
    assert 'batchgen_last_run_spend_total{manifest="m.yaml"} 0.12' in prom

    # A later run without --price: nothing to pay, the ledger's price still tells the spend so far.
    async with sim_factory(api_key=KEY) as sim:
        code, _, stderr = await cli(run_args(path, out, sim))
        assert code == 0 and sim.stats.creates == 0
    assert "spent 0 (0.12 so far)" in stderr

    code, stdout, stderr = await cli([sys.executable, "-m", "batchgen", "status", str(out), "--json"], env=env())
    assert code == 0, stderr
    status = json.loads(stdout)
    assert status["paid_creates"] == 3 and status["price"] == "0.04" and status["spend"] == "0.12"
    assert status["service_credits"] == {"consumed": 7.5, "remained": 92.5, "items": 3}
    code, stdout, _ = await cli([sys.executable, "-m", "batchgen", "status", str(out)], env=env())
    assert (
        "3 paid creates × 0.04 = 0.12 spent so far; the service charged 7.5 credits for 3 items, 92.5 credits left"
        in stdout
    )


async def test_cost_fields_come_from_recordinfo_and_are_absent_when_the_service_sends_none(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a"])
    out = tmp_path / "out"
    async with sim_factory(api_key=KEY) as sim:
        code, _, stderr = await cli(run_args(path, out, sim))
    assert code == 0, stderr
    (record,) = ledger.load(out).items.values()
    assert set(record["cost"]) == {"costTime"}  # the simulator's default recordInfo: costTime only
    assert "price" not in json.loads((out / "results.json").read_text())
    code, stdout, _ = await cli([sys.executable, "-m", "batchgen", "status", str(out)], env=env())
    assert "  1 paid create\n" in stdout + "\n"
