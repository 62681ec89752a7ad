"""Exact mid-epoch resume: N steps uninterrupted and k + (N - k) steps with a crash and a resume
at k draw the same batches and reach bitwise the same weights (CPU, 2 DataLoader workers)."""
from __future__ import annotations

import hashlib
import os

import lightning as L
import numpy as np
import pytest
import torch

from data_pipeline.datamodule import ElasticDataModule, LoaderConfig
from elastic_pl.cli import main
from elastic_pl.config import load_config
from elastic_pl.train import fit
from tests.pipeline_config import tiny_overrides
from tests.shard_fixtures import random_sequences, write_shards

STEPS, EPOCHS = 5, 2  # odd steps: the two workers of an epoch yield 3 and 2 batches


class _Batches(L.Callback):
    """Digest of every training batch, by global step."""

    def __init__(self):
        self.by_step = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.by_step[trainer.global_step] = hashlib.sha1(batch["items"].numpy().tobytes()).hexdigest()


class _CrashAfter(L.Callback):
    def __init__(self, at: int):
        self.at = at

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step >= self.at:
            raise RuntimeError("simulated crash")


def _weights(result) -> dict:
    return {k: v.detach().clone() for k, v in result.trainer.lightning_module.model.state_dict().items()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    os.environ["WANDB_MODE"] = "offline"
    tmp = tmp_path_factory.mktemp("resume")
    extra = ["data.loader.num_workers=2", f"data.loader.steps_per_epoch={STEPS}", f"trainer.max_epochs={EPOCHS}",
             "model.dropout=0.2", "trainer.checkpoint_every_n_steps=1", "wandb.enabled=false",
             "data.loader.max_tokens=256", "data.loader.max_len=32"]
    overrides = tiny_overrides(tmp, *extra)
    assert main(["prepare", *overrides]) == 0
    batches = _Batches()
    result = fit(load_config(None, overrides + ["run.run_id=straight"]), callbacks=[batches])
    assert result.trainer.global_step == STEPS * EPOCHS
    return overrides, batches.by_step, _weights(result)


# inside epoch 0 (an odd batch: the workers' roles rotate), at its end (last.ckpt after validation)
# and inside epoch 1
@pytest.mark.parametrize("k", [3, 5, 7])
def test_resume_inside_an_epoch_draws_the_same_batches_and_weights(setup, k):
    overrides, straight_batches, straight_weights = setup
    cfg = load_config(None, overrides + [f"run.run_id=resumed-{k}"])
    first = _Batches()
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(cfg, callbacks=[first, _CrashAfter(k)])
    second = _Batches()
    result = fit(cfg, callbacks=[second])
    assert min(second.by_step) == k  # resumed at step k, not at the epoch's start
    drawn = {**{s: h for s, h in first.by_step.items() if s < k}, **second.by_step}
    assert drawn == straight_batches
    weights = _weights(result)
    assert weights.keys() == straight_weights.keys()
    for name, w in straight_weights.items():
        assert torch.equal(weights[name], w), name


@pytest.mark.parametrize("max_tokens", [None, 40])
@pytest.mark.parametrize("num_workers", [0, 2, 3])
def test_loader_continues_an_epoch_after_any_number_of_batches(tmp_path, num_workers, max_tokens):
    """The loader alone: an epoch resumed after k batches yields exactly batches k.. of an
    uninterrupted epoch, for every k, with any number of workers."""
    seqs = random_sequences(50, 90, min_len=4, max_len=25, seed=3)
    write_shards(str(tmp_path), seqs, 3, block_size=5)
    steps = 7
    dm = ElasticDataModule(LoaderConfig(data_dir=str(tmp_path), max_len=10, batch_size=3, shuffle_buffer=8,
                                        num_workers=num_workers, steps_per_epoch=steps, max_tokens=max_tokens))
    dm.setup()

    def epoch(number: int, skip: int) -> list:
        loader = dm.train_dataloader()
        loader.load_state_dict({**loader.state_dict(), "epoch": number, "batches": skip})
        return [np.concatenate([b["items"].numpy().ravel(), b["targets"].numpy().ravel()]) for b in loader]

    full = epoch(1, 0)
    assert len(full) == steps
    for k in range(1, steps):
        rest = epoch(1, k)
        assert len(rest) == steps - k
        for a, b in zip(rest, full[k:]):
            np.testing.assert_array_equal(a, b)
    # saved after the epoch's last batch: the next epoch starts from its beginning
    for a, b in zip(epoch(1, steps), epoch(2, 0), strict=True):
        np.testing.assert_array_equal(a, b)
