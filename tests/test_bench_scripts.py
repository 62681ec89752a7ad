"""The shell drivers of bench/ build the commands they promise (DRY_RUN prints them)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from elastic_pl.config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("data", ["lastfm"])
def test_frontier_runs_names_each_experiments_run_directories(data):
    env = {**os.environ, "DRY_RUN": "1", "BIN": str(Path(sys.executable).parent)}
    out = subprocess.run(["bash", "bench/frontier_runs.sh", data, "200 1000"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 5 and all("data.loader.max_len=" in line for line in lines[:4])
    experiments = [load_config(str(REPO / f"configs/{data}{s}.yaml")).run.experiment for s in ("", "-sasrec")]
    expected = [f"runs/{e}/len{n}" for n in (200, 1000) for e in experiments]
    assert lines[-1] == "runs: " + " ".join(expected)
