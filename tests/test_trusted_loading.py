"""Checkpoints are loaded with weights_only=True whatever the environment says: a planted pickle
in a run directory never runs, on resume or anywhere else."""
from __future__ import annotations


import pytest

from elastic_pl.cli import main
from elastic_pl.config import load_config
from elastic_pl.errors import CheckpointError
from elastic_pl.train import fit, load_module
from tests.checkpoint_fixtures import plant
from tests.pipeline_config import tiny_overrides


def test_planted_last_checkpoint_does_not_run_on_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("ELASTIC_PL_RUN_KEY", str(tmp_path / "run-key"))
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # a user's setting for old checkpoints
    overrides = tiny_overrides(tmp_path, "run.run_id=planted", "wandb.enabled=false")
    assert main(["prepare", *overrides]) == 0
    marker = tmp_path / "pwned"
    plant(tmp_path / "runs" / "e2e" / "planted" / "checkpoints" / "last.ckpt", marker)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        fit(load_config(None, overrides))
    assert not marker.exists()
    assert main(["train", *overrides]) == 2  # the command line: one message naming the file, exit 2
    assert "checkpoints/last.ckpt: cannot be loaded with weights_only=True" in capsys.readouterr().err
    assert not marker.exists()
    with pytest.raises(Exception, match="(?i)weights_only|unpickl"):
        load_module(str(tmp_path / "runs" / "e2e" / "planted" / "checkpoints" / "last.ckpt"))
    assert not marker.exists()


def test_a_run_that_trained_no_step_reports_no_test_metrics(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("ELASTIC_PL_RUN_KEY", str(tmp_path / "run-key"))
    overrides = tiny_overrides(tmp_path, "run.run_id=untrained", "wandb.enabled=false", "trainer.max_epochs=0")
    assert main(["prepare", *overrides]) == 0
    assert main(["train", *overrides]) == 2
    assert "trainer.max_epochs=0, trainer.max_steps=-1: no training step would run" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "e2e" / "untrained" / "test_metrics.json").exists()
