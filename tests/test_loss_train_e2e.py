"""The losses for large catalogs through ``elastic-pl train`` (2 steps on the tiny synthetic log):
the run trains with the named loss, logs a finite training loss at every step and saves the loss's
keys in its checkpoint."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from elastic_pl.cli import main
from tests.pipeline_config import tiny_overrides

CASES = {
    "in_batch_softmax": ["model.loss=in_batch_softmax", "model.loss.cross_rank=true"],
    "mixed_softmax": ["model.loss=mixed_softmax", "model.loss.num_negatives=16"],
    "mixed_softmax-row_sparse": ["model.loss=mixed_softmax", "optim.item_table=rowwise_adagrad"],  # reads rows only
}


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data


@pytest.mark.parametrize("case", sorted(CASES))
def test_trains_two_steps(data, tmp_path, case):
    name, run = case.split("-")[0], tmp_path / "run"
    overrides = tiny_overrides(data, *CASES[case], f"run.dir={run}", "data.loader.steps_per_epoch=2",
                               "wandb.enabled=false")
    assert main(["train", *overrides]) == 0
    summary = json.loads((run / "test_metrics.json").read_text())
    assert summary["global_step"] == 2
    saved = torch.load(summary["best_checkpoint"], map_location="cpu", weights_only=True)
    loss_cfg = saved["hyper_parameters"]["model"]["loss"]
    assert loss_cfg["name"] == name and ("cross_rank" in loss_cfg)
    logs = sorted(Path(run).glob("csv/fit-*/metrics.csv"))
    rows = [r for f in logs for r in csv.DictReader(f.read_text().splitlines()) if r.get("train/loss")]
    assert [int(r["step"]) for r in rows] == [0, 1]
    assert all(math.isfinite(float(r["train/loss"])) and float(r["train/loss"]) > 0 for r in rows)
