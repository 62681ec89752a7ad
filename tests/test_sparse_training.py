"""Row-sparse item-table updates through the real training entry point (``optim.item_table``).

* In every Lightning step the table's gradient is sparse and only its non-zero rows change;
  every other row is bitwise unchanged.
* The row state is in the checkpoint and a crash + resume continues bit-exactly (CPU).
* 2-process DDP (gloo) all-reduces the sparse gradient and trains to the end.
* Bad settings fail with one message naming the key.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from elastic_pl.config import ConfigError, OptimConfig, load_config
from elastic_pl.item_table import build_optimizer
from elastic_pl.model import ModelConfig, SequentialRecommender
from elastic_pl.optim_groups import param_groups
from elastic_pl.sparse_optim import touched_rows
from elastic_pl.train import fit
from tests.pipeline_config import tiny_overrides
from tests.test_resume_exact import _CrashAfter

REPO = Path(__file__).resolve().parents[1]
STEPS = 4


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data


def _overrides(tmp: Path, rule: str, *extra: str) -> list[str]:
    return tiny_overrides(tmp, f"optim.item_table={rule}", "optim.item_table_lr=0.05", "wandb.enabled=false",
                          f"data.loader.steps_per_epoch={STEPS}", *extra)


class _RowsChanged(L.Callback):
    """Per step: the table's gradient is sparse, and only its touched rows change."""

    def __init__(self):
        self.steps, self.touched = 0, []

    def on_before_optimizer_step(self, trainer, module, optimizer):
        table = module.model.embedding.items.weight
        assert table.grad is not None and table.grad.is_sparse
        self._rows = touched_rows(table.grad)[0]
        self._before = table.detach().clone()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        after = module.model.embedding.items.weight.detach()
        untouched = torch.ones(after.shape[0], dtype=torch.bool)
        untouched[self._rows] = False
        read = torch.unique(torch.cat([batch["items"].flatten(), batch["targets"].flatten()]))
        assert set(read[read > 0].tolist()) <= set(self._rows.tolist())  # inputs and targets are rows touched
        assert untouched.sum() > 0
        assert torch.equal(after[untouched], self._before[untouched])  # bitwise
        assert not torch.equal(after[~untouched], self._before[~untouched])
        self.steps += 1


@pytest.mark.parametrize("rule", ["rowwise_adagrad", "lazy_adam"])
def test_a_training_step_changes_only_the_rows_it_touched(data, rule):
    check = _RowsChanged()
    fit(load_config(None, _overrides(data, rule, f"run.run_id=rows-{rule}")), callbacks=[check])
    assert check.steps == STEPS


def _state(result) -> tuple[dict, dict]:
    weights = {k: v.detach().clone() for k, v in result.trainer.lightning_module.model.state_dict().items()}
    return weights, result.trainer.optimizers[0].state_dict()


@pytest.mark.parametrize("rule,key", [("rowwise_adagrad", "sum"), ("lazy_adam", "exp_avg_sq")])
def test_row_state_is_checkpointed_and_resume_is_bit_exact(data, rule, key):
    extra = ["trainer.checkpoint_every_n_steps=1", "trainer.max_epochs=2", "model.dropout=0.2"]
    straight = fit(load_config(None, _overrides(data, rule, *extra, f"run.run_id=straight-{rule}")))
    assert straight.trainer.global_step == 2 * STEPS
    cfg = load_config(None, _overrides(data, rule, *extra, f"run.run_id=resumed-{rule}"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(cfg, callbacks=[_CrashAfter(STEPS + 1)])
    ckpt = torch.load(Path(straight.run_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    (opt_state,) = ckpt["optimizer_states"]
    table_group = [g for g in opt_state["param_groups"] if g.get("row_rule")]
    assert [g["row_rule"] for g in table_group] == [rule]
    (table_id,) = table_group[0]["params"]
    num_rows = ckpt["state_dict"]["model.embedding.items.weight"].shape[0]
    assert opt_state["state"][table_id][key].shape[0] == num_rows
    resumed = fit(cfg)
    (w_a, o_a), (w_b, o_b) = _state(straight), _state(resumed)
    for name in w_a:
        assert torch.equal(w_a[name], w_b[name]), name
    for pid, state in o_a["state"].items():
        for k, v in state.items():
            assert torch.equal(v, o_b["state"][pid][k]), (pid, k)


def test_ddp_two_processes_train_with_sparse_table_gradients(data, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "elastic_pl", "train", *_overrides(data, "rowwise_adagrad"), f"run.dir={run}",
           "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_steps=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    summary = json.loads((run / "test_metrics.json").read_text())
    assert summary["global_step"] == 3 and summary["world_size"] == 2
    assert summary["test"]["test/count"] == 120


def test_bad_item_table_setting_names_the_key(data):
    with pytest.raises(ConfigError, match="optim.item_table"):
        load_config(None, tiny_overrides(data, "optim.item_table=sparse_sgd"))
    with pytest.raises(ConfigError, match="optim.item_table_lr"):
        load_config(None, tiny_overrides(data, "optim.item_table_lr=-1"))


def test_sharded_table_is_refused():
    from lightning.pytorch.strategies import ModelParallelStrategy

    model = SequentialRecommender(ModelConfig(num_items=50))
    with pytest.raises(ValueError, match="trainer.strategy=ddp"):
        build_optimizer(model, param_groups(model, 1e-3, 0.0), OptimConfig(item_table="lazy_adam"),
                        ModelParallelStrategy())
