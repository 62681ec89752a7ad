"""FSDP2 (``trainer.strategy=fsdp2``) shards the item table: on 2 CPU processes (gloo) each rank
holds about half of the parameter bytes of a model whose item table dominates it, between steps
(forward and backward all-gather the parameters, the table included: the saving is in what a
rank keeps, its gradients' shards and its optimizer state, not in the forward's peak)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from elastic_pl.cli import main
from tests.pipeline_config import tiny_overrides

REPO = Path(__file__).resolve().parents[1]
# ~4,000 distinct items x d_model 32: the item table is most of the model
TABLE_HEAVY = ["data.synthetic.num_users=300", "data.synthetic.num_items=6000", "data.synthetic.mean_length=40",
               "data.synthetic.max_length=200", "model.d_model=32"]


def _run(tmp: Path, out: Path, strategy: str, devices: int) -> list[dict]:
    cmd = [sys.executable, "-m", "tests.fsdp2_param_bytes", str(out), *tiny_overrides(tmp, *TABLE_HEAVY),
           f"run.dir={tmp}/run-{strategy}", f"trainer.strategy={strategy}", f"trainer.devices={devices}",
           "trainer.max_steps=1", "wandb.enabled=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(devices)]


def test_fsdp2_rank_holds_about_half_the_parameter_bytes(tmp_path):
    assert main(["prepare", *tiny_overrides(tmp_path, *TABLE_HEAVY)]) == 0
    ranks = _run(tmp_path, tmp_path / "fsdp2", "fsdp2", 2)
    full = ranks[0]["full"]  # the unsharded size (a DTensor's numel is the global one)
    assert ranks[0]["table_full"] > 0.7 * full  # table-dominated
    for r in ranks:
        assert r["sharded"] and r["world"] == 2 and r["full"] == full
        assert r["local"] == pytest.approx(full / 2, rel=0.05)
        assert r["table_local"] == pytest.approx(r["table_full"] / 2, rel=0.01)
    # the shards cover the model (dim 0 split into ceil(rows / 2) per rank: at most a row of padding each)
    assert full <= sum(r["local"] for r in ranks) <= 1.02 * full
