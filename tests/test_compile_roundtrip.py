"""``trainer.compile=true``: train -> evaluate -> export on CPU. The model is compiled in place, so
its checkpoints carry the plain model's weight names (loadable by evaluate, export and anyone's
``load_state_dict``), and the compiled run's metrics are the checkpoint's.

The weight names do not depend on the backend; the ``eager`` backend (dynamo's tracing without
code generation) keeps this test short: inductor's C++ code generation makes it minutes on 2 CPUs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from elastic_pl.cli import main
from elastic_pl.config import load_config
from elastic_pl.model import ModelConfig, SequentialRecommender
from elastic_pl.train import fit
from tests.pipeline_config import tiny_overrides


@pytest.mark.slow
def test_compiled_train_evaluate_export(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("ELASTIC_PL_RUN_KEY", str(tmp_path / "run-key"))
    overrides = tiny_overrides(tmp_path, "run.run_id=compiled", "wandb.enabled=false", "trainer.compile=true",
                               "trainer.compile_backend=eager")
    assert main(["prepare", *overrides]) == 0
    result = fit(load_config(None, overrides))
    ckpt = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    assert not [k for k in ckpt["state_dict"] if "_orig_mod" in k]
    plain = SequentialRecommender(ModelConfig.from_dict(ckpt["hyper_parameters"]["model"]))
    plain.load_state_dict({k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()})  # strict

    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--checkpoint", result.best_checkpoint, "--out", str(out), *overrides]) == 0
    metrics = json.loads(out.read_text())
    for k, v in result.test.items():
        assert metrics[k] == pytest.approx(v, abs=1e-5), k
    assert main(["export", "--checkpoint", result.best_checkpoint, *overrides]) == 0  # checks vs eager inside
    name = Path(result.best_checkpoint).stem
    assert (tmp_path / "runs" / "e2e" / "compiled" / "serving" / name / "serving.json").is_file()
