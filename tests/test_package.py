"""batchgen as a pip user gets it: a wheel with its licence, metadata, job files and sample manifests, installed
in a fresh virtualenv, writing out the nightly job and running a manifest it shipped."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--quiet", "-w", str(target)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = target.glob("batchgen-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_carries_the_licence_metadata_jobs_and_samples(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(archive.read(meta_name).decode())
        for folder in ("jobs", "sample_manifests"):
            for source in (ROOT / folder).iterdir():
                assert archive.read(f"batchgen/data/{folder}/{source.name}") == source.read_bytes()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert meta["License"] == "MIT" and meta["Requires-Python"] == ">=3.11"
    assert "License :: OSI Approved :: MIT License" in meta.get_all("Classifier")
    # The description is the README: the front page, which leads on to the nightly job in docs/.
    assert meta["Description-Content-Type"] == "text/markdown" and "## Exit codes" in meta.get_payload()
    assert "docs/nightly.md" in meta.get_payload()
    extras = meta.get_all("Provides-Extra")
    assert {"test", "dev", "completion"} <= set(extras)
    requires = meta.get_all("Requires-Dist")
    assert any(r.startswith("ruff") and 'extra == "dev"' in r for r in requires)
    assert not any(r.startswith("ruff") and 'extra == "test"' in r for r in requires)


@pytest.mark.slow
def test_a_fresh_virtualenv_with_the_wheel_installs_the_jobs_and_runs_a_sample(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    # The dependencies (aiohttp, Pillow, ...) from this test's environment, appended after the new venv's own
    # site-packages: batchgen itself is imported from the wheel (the editable install's hook is not loaded).
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = subprocess.check_output(
        [python, "-c", "import batchgen; print(batchgen.__file__)"],
        text=True,
        cwd=tmp_path,  # not this tree's
    )
    assert where.startswith(str(site)), where

    batchgen = str(venv / "bin" / "batchgen")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHGEN_")}
    done = subprocess.run(
        [batchgen, "jobs", "install", str(tmp_path / "jobs")], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert os.access(tmp_path / "jobs" / "nightly.sh", os.X_OK)
    assert (tmp_path / "jobs" / "batchgen-nightly.service").read_bytes() == (
        ROOT / "jobs" / "batchgen-nightly.service"
    ).read_bytes()
    done = subprocess.run([batchgen, "jobs", "samples", str(tmp_path / "samples")], capture_output=True, env=env)
    assert done.returncode == 0
    run = subprocess.run(
        [batchgen, "run", str(tmp_path / "samples" / "demo.yaml"), "--out", str(tmp_path / "demo"), "--simulate"],
        capture_output=True,
        text=True,
        env=env,
        timeout=110,
    )
    assert run.returncode == 0, run.stderr
    assert len([*(tmp_path / "demo").glob("*.png"), *(tmp_path / "demo").glob("*.jpg")]) == 8
