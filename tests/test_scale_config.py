"""The scale configs describe the log they claim, and a scaled-down scale run (about 10^5 events)
goes through generate -> prepare -> train -> evaluate with the figures of every stage."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipeline.synthetic import lengths, popularity_weights
from elastic_pl.config import load_config
from elastic_pl.sparse_optim import is_row_sparse

REPO = Path(__file__).resolve().parents[1]
SCALE = {"configs/scale-1m.yaml": 1_000_000, "configs/scale-10m.yaml": 10_000_000}


@pytest.mark.parametrize("path", sorted(SCALE))
def test_scale_config_is_the_claimed_run(path):
    cfg = load_config(str(REPO / path))
    syn = cfg.data.synthetic
    assert syn.num_users == 1_000_000 and syn.num_items == SCALE[path]
    lens = lengths(syn)
    assert abs(lens.sum() - 1e8) < 0.02e8  # 10^8 events
    assert 5e4 < lens.max() <= 1e5 and np.median(lens) < 50  # heavy tail up to 10^5
    events = lens.sum()
    p = popularity_weights(syn)
    distinct = float(np.sum(-np.expm1(-events * p / p.sum())))  # expected items that occur at all
    assert distinct > 0.9 * syn.num_items
    assert cfg.model.encoder.name == "elastic"
    assert cfg.data.loader.max_len >= 4096 and cfg.model.max_positions >= cfg.data.loader.max_len
    assert cfg.data.loader.max_tokens is not None and is_row_sparse(cfg.optim.item_table)
    assert cfg.trainer.max_time_minutes and cfg.trainer.limit_val_batches and cfg.trainer.limit_test_batches


@pytest.mark.slow
def test_scaled_down_scale_run_reports_every_stage(tmp_path):
    out = tmp_path / "scale"
    cmd = [sys.executable, "-m", "bench.scale_run", "--config", "configs/scale-1m.yaml", "--out", str(out),
           "--events", "1e5", "--minutes", "0.2", "--eval-batches", "1", "--", "data.loader.steps_per_epoch=3",
           "trainer.max_epochs=1", "data.loader.num_workers=0", "data.loader.max_tokens=4096",
           "data.loader.eval_max_tokens=8192", "trainer.progress_bar=false", "wandb.enabled=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    stages = {r["stage"]: r for r in json.loads((out / "scale_run.json").read_text())["stages"]}
    assert list(stages) == ["generate", "prepare", "train", "evaluate"]
    manifest = json.loads((out / "data" / "shards" / "manifest.json").read_text())
    assert stages["generate"]["events"] == stages["prepare"]["num_events"] == manifest["num_events"]
    assert 0.5e5 < manifest["num_events"] < 2e5
    train = stages["train"]
    assert train["steps"] == 3 and 0 < train["real_tokens"] <= 3 * 4096 and train["real_tokens_per_s"] > 0
    assert stages["evaluate"]["users"] > 0
    for r in stages.values():
        assert r["wall_s"] > 0 and 0.05 < r["peak_pss_gb"] <= r["peak_rss_sum_gb"], r
    assert stages["generate"]["disk_gb"] < stages["prepare"]["disk_gb"] < stages["train"]["disk_gb"]
    ckpt = torch.load(out / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    rules = [g.get("row_rule") for g in ckpt["optimizer_states"][0]["param_groups"]]
    assert "rowwise_adagrad" in rules  # the scale config's row-sparse item table
    for stage in stages:
        assert f"| {stage} |" in proc.stdout
