"""Every encoder through the real commands: ``elastic-pl train`` (2 steps), ``evaluate`` and, where
the encoder streams, ``export`` with its step. Among them a user's own encoder selected by dotted
path (tests/custom_encoder.py), which no file of the package lists, and HSTU with its time bias
reading the loader's timestamps."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from elastic_pl.cli import main
from tests.pipeline_config import tiny_overrides

CUSTOM = "tests.custom_encoder:CausalMeanEncoder"
CASES = {  # model.encoder.name, overrides
    "custom": (CUSTOM, [f"model.encoder.name={CUSTOM}", "model.encoder.hidden_mult=3"]),
    "gru4rec": ("gru4rec", ["model.encoder=gru4rec"]),
    "hstu": ("hstu", ["model.encoder={name: hstu, attention_tile: 8}", "data.loader.timestamps=true"]),
}


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data


@pytest.mark.parametrize("case", sorted(CASES))
def test_train_evaluate_export(data, tmp_path, case):
    # tiny_overrides set ELASTIC's keys first: the encoder named after them starts from its defaults
    name, extra = CASES[case]
    overrides = tiny_overrides(data, *extra, f"run.dir={tmp_path}/run", "data.loader.steps_per_epoch=2",
                               "wandb.enabled=false")
    assert main(["train", *overrides]) == 0
    summary = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert summary["global_step"] == 2 and summary["test"]["test/count"] == 120
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "num_experts" not in saved  # no ELASTIC key under another encoder
    ckpt = summary["best_checkpoint"]
    hparams = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]["model"]["encoder"]
    assert hparams["name"] == name

    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", ckpt, "--out", str(out), *overrides]) == 0
    assert json.loads(out.read_text())["test/ndcg@10"] == pytest.approx(summary["test"]["test/ndcg@10"], abs=1e-6)

    serving = tmp_path / "serving"
    assert main(["export", "--checkpoint", ckpt, "--out", str(serving), *overrides]) == 0
    meta = json.loads((serving / "serving.json").read_text())
    streams = case in ("custom", "gru4rec")
    assert (meta["step"] is not None) == streams and (serving / "step.pt").exists() == streams
    assert ("timestamps" in meta["encode_last"]["inputs"]) == (case == "hstu")
    assert Path(serving / "encode_last.pt").is_file()
