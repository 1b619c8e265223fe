"""The metrics file and status output (the contact sheet: test_contact_sheet.py)."""

from __future__ import annotations

import io
from pathlib import Path

from batchgen import report, runner
from batchgen.progress import Reporter

from .helpers import KEY, cli, make_settings, manifest_of, run_args

HOSTILE = '<script>document.title="pwned"</script><img src=x onerror=alert(1)> & "quotes"'


async def _finished_directory(sim_factory, tmp_path: Path) -> Path:
    path = manifest_of(tmp_path / "m.yaml", ["a calm sea", HOSTILE, "rejected [sim:fail-policy]"])
    out = tmp_path / "out"
    async with sim_factory(latency=0.05) as sim:
        outcome = await runner.run(make_settings(path, out, sim), Reporter(stream=io.StringIO()))
    assert outcome.exit_code == 1
    return out


async def test_metrics_file_is_a_prometheus_textfile(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a", "b [sim:fail-policy]"])
    metrics = tmp_path / "metrics" / "batchgen.prom"
    metrics.parent.mkdir()  # node_exporter's textfile folder exists: batchgen creates only the file
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        code, _, stderr = await cli(run_args(path, tmp_path / "out", sim, "--metrics-file", str(metrics), "--report"))
    assert code == 1, stderr
    text = metrics.read_text()
    assert 'batchgen_items{manifest="m.yaml",state="succeeded"} 1' in text
    assert 'batchgen_items{manifest="m.yaml",state="failed"} 1' in text
    assert 'batchgen_last_run_paid_creates{manifest="m.yaml"} 2' in text
    assert 'batchgen_last_run_exit_code{manifest="m.yaml"} 1' in text
    assert (tmp_path / "out" / "index.html").exists()
    assert list(metrics.parent.iterdir()) == [metrics]  # written atomically: no temporary file left


async def test_status_text_names_each_failure_and_reason(sim_factory, tmp_path):
    out = await _finished_directory(sim_factory, tmp_path)
    text = report.status_text(report.status(out))
    assert "2 succeeded, 1 failed" in text
    assert "failed  item-02: task_policy: 400: Your prompt was flagged as violating content policies." in text
