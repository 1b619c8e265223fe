"""Prices per model and --max-spend (SPEC §2 "Models", §3): what a night may cost, and what it did cost."""

from __future__ import annotations

import json
import sys
from decimal import Decimal

import pytest

from batchgen import prices
from batchgen.errors import UsageError

from .helpers import cli, run_args

MIXED = """\
- id: a
  prompt: a fox
- id: b
  prompt: an owl
- id: c
  model: nano-banana-pro
  prompt: a hare
"""


def test_a_price_for_every_model_or_per_model():
    assert prices.parse("0.06", "--price") == prices.Prices(Decimal("0.06"))
    both = prices.parse("0.05, flux-2-pro=0.03,imagen4-ultra=.06", "--price")
    assert both is not None and both.of("flux-2-pro") == Decimal("0.03") and both.of("z-image") == Decimal("0.05")
    assert str(both) == "0.05,flux-2-pro=0.03,imagen4-ultra=0.06" and prices.parse(str(both), "x") == both
    only = prices.parse("imagen4-ultra=0.06", "--price")
    assert (
        only is not None
        and only.of("flux-2-pro") is None
        and only.missing(["flux-2-pro", "imagen4-ultra"]) == ["flux-2-pro"]
    )
    for bad in ("", "x", "-1", "1e3", "a=", "=1", "a=1,a=2", "1,2", "a b=1", "٣", "a=0.1,"):
        with pytest.raises(UsageError, match="--price"):
            prices.parse(bad, "--price")
    assert prices.parse("", "BATCHGEN_PRICE") is None


async def test_dry_run_summary_and_status_give_paid_creates_and_cost_per_model(tmp_path, write, sim_factory):
    path = write("night.yaml", MIXED)
    out = tmp_path / "out"
    price = ["--price", "imagen4-ultra=0.06,nano-banana-pro=0.13"]
    code, stdout, err = await cli(
        [sys.executable, "-m", "batchgen", "run", str(path), "--out", str(out), "--dry-run", *price]
    )
    assert code == 0, err
    assert "estimated cost: imagen4-ultra 2 × 0.06 = 0.12; nano-banana-pro 1 × 0.13 = 0.13; 0.25 in all" in stdout
    code, stdout, err = await cli([sys.executable, "-m", "batchgen", "validate", str(path), *price])
    assert code == 0 and "imagen4-ultra 2 × 0.06 = 0.12; nano-banana-pro 1 × 0.13 = 0.13; 0.25 in all" in stdout
    metrics = tmp_path / "batchgen.prom"
    async with sim_factory() as sim:
        code, _, err = await cli(run_args(path, out, sim, *price, "--metrics-file", str(metrics)))
    assert code == 0, err
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(metrics.read_text())}
    by_model = {s.labels["model"]: s.value for s in families["batchgen_last_run_paid_creates_by_model"].samples}
    assert by_model == {"imagen4-ultra": 2, "nano-banana-pro": 1}
    assert families["batchgen_last_run_spend"].samples[0].value == 0.25
    assert "paid creates by model: imagen4-ultra 2 × 0.06 = 0.12; nano-banana-pro 1 × 0.13 = 0.13; 0.25 in all" in err
    code, stdout, err = await cli([sys.executable, "-m", "batchgen", "status", str(out)])
    assert code == 0 and "3 paid creates; 0.25 spent so far (imagen4-ultra 2 × 0.06 = 0.12; nano-banana-pro 1" in stdout
    code, stdout, _ = await cli([sys.executable, "-m", "batchgen", "status", str(out), "--json"])
    doc = json.loads(stdout)
    assert doc["spend"] == "0.25" and doc["by_model"] == {
        "imagen4-ultra": {"paid_creates": 2, "price": "0.06", "spend": "0.12"},
        "nano-banana-pro": {"paid_creates": 1, "price": "0.13", "spend": "0.13"},
    }
    ledger = json.loads((out / "results.json").read_text())  # SPEC §4: per-model prices make a version-2 ledger
    assert ledger["version"] == 2 and ledger["price"] == "imagen4-ultra=0.06,nano-banana-pro=0.13"


async def test_one_price_for_all_models_keeps_a_version_1_ledger(tmp_path, write, sim_factory):
    path = write("night.yaml", "- prompt: a fox\n")
    async with sim_factory() as sim:
        code, _, err = await cli(run_args(path, tmp_path / "out", sim, "--price", "0.06"))
    assert code == 0, err
    ledger = json.loads((tmp_path / "out" / "results.json").read_text())
    assert ledger["version"] == 1 and ledger["price"] == "0.06"


async def test_max_spend_stops_creating_before_the_spend_would_pass_it(tmp_path, write, sim_factory):
    path = write("night.yaml", "".join(f"- prompt: a fox number {n}\n" for n in range(5)))
    out = tmp_path / "out"
    async with sim_factory() as sim:
        code, _, err = await cli(run_args(path, out, sim, "--price", "0.06", "--max-spend", "0.20"))
        assert code == 5, err
        assert sim.stats.creates == 3  # 3 × 0.06 = 0.18; a fourth would make 0.24
        assert "--max-spend 0.20 reached" in err
        code, _, err = await cli(run_args(path, out, sim, "--price", "0.06", "--max-spend", "1"))
        assert code == 0 and sim.stats.creates == 5, err
    mixed = write("mixed.yaml", MIXED + "- model: flux-2-pro\n  prompt: a badger\n")
    async with sim_factory() as sim:
        code, _, err = await cli(
            run_args(
                mixed, tmp_path / "o2", sim, "--price", "imagen4-ultra=0.06,nano-banana-pro=0.13", "--max-spend", "1"
            )
        )
        assert code == 2 and "--max-spend needs a price for every model; --price has none for flux-2-pro" in err
        code, _, err = await cli(run_args(mixed, tmp_path / "o2", sim, "--max-spend", "1"))
        assert code == 2 and "--max-spend needs --price" in err
        code, _, err = await cli(run_args(mixed, tmp_path / "o2", sim, "--price", "1", "--max-spend", "a=1"))
        assert code == 2 and "--max-spend: expected an amount" in err
        assert sim.stats.create_calls == 0
