"""The best checkpoint and the resolved config logged as W&B artifacts by a fit, read back from
the offline run file, and the checkpoint loaded with the project's loader; the run's summary
holds the test metrics."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from elastic_pl.checkpoint import load_module
from elastic_pl.cli import main
from elastic_pl.config import load_config, to_dict
from elastic_pl.train import fit
from tests.pipeline_config import tiny_overrides
from tests.wandb_records import artifacts, summary, wait_complete


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    tmp = tmp_path_factory.mktemp("artifacts")
    assert main(["prepare", *tiny_overrides(tmp)]) == 0
    return tmp


def _offline_run_file(run_dir: Path) -> Path:
    run_id = (run_dir / "wandb_run_id.txt").read_text().strip()
    (path,) = (run_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    return wait_complete(path)


def test_best_checkpoint_and_config_are_offline_artifacts(data):
    cfg = load_config(None, tiny_overrides(data, "run.run_id=logged", "trainer.max_epochs=2"))
    result = fit(cfg)
    run_file = _offline_run_file(Path(result.run_dir))
    run_id = run_file.stem.split("-", 1)[1]
    logged = artifacts(run_file)
    assert set(logged) == {f"model-{run_id}", f"config-{run_id}"}

    model = logged[f"model-{run_id}"]
    assert model.type == "model" and {"best", f"step{result.trainer.global_step}"} <= set(model.aliases)
    (entry,) = model.manifest.contents
    staged = Path(entry.local_path)
    assert entry.path == Path(result.best_checkpoint).name
    assert run_file.parent in staged.parents  # inside the offline run directory: `wandb sync` finds it
    assert staged.read_bytes() == Path(result.best_checkpoint).read_bytes() and entry.size == staged.stat().st_size
    meta = json.loads(model.metadata)
    assert meta["test"]["test/ndcg@10"] == pytest.approx(result.test["test/ndcg@10"])
    module = load_module(str(staged))
    best = load_module(result.best_checkpoint)
    for k, v in best.state_dict().items():
        assert torch.equal(module.state_dict()[k], v), k

    (conf,) = logged[f"config-{run_id}"].manifest.contents
    assert conf.path == "config.yaml" and run_file.parent in Path(conf.local_path).parents
    assert Path(conf.local_path).read_bytes() == (Path(result.run_dir) / "config.yaml").read_bytes()
    assert to_dict(load_config(conf.local_path))["model"] == to_dict(cfg)["model"] | {"num_items": best.model_cfg.num_items}

    values = summary(run_file)
    for key in ("test/ndcg@10", "test/hr@10", "test/count"):
        assert json.loads(values[key]) == pytest.approx(result.test[key], abs=1e-6), key


def test_artifacts_can_be_switched_off_and_the_summary_stays(data):
    result = fit(load_config(None, tiny_overrides(data, "run.run_id=quiet", "wandb.log_artifacts=false")))
    run_file = _offline_run_file(Path(result.run_dir))
    assert artifacts(run_file) == {}
    assert json.loads(summary(run_file)["test/ndcg@10"]) == pytest.approx(result.test["test/ndcg@10"], abs=1e-6)
