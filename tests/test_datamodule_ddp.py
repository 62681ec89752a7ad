"""ElasticDataModule under real 2-process gloo DDP (Lightning ddp_spawn) with 2 workers per rank.

3 unequal shards < 2 ranks x 2 workers. Each rank writes what it saw to a JSON file; the test
checks equal step counts, distinct training streams, and every validation user exactly once in
every epoch. Under ddp_spawn the DataLoader workers are themselves started with *spawn* (the
rank processes inherit that start method), the case where webdataset's split_by_node silently
gives every rank every shard. Persistent workers keep this test to one worker start per loader.
"""
import json
import os
from collections import Counter

import lightning as L
import pytest
import torch

from data_pipeline.datamodule import ElasticDataModule, LoaderConfig
from tests.shard_fixtures import random_sequences, write_shards

STEPS = 7  # odd: the two workers of a rank yield 4 and 3 batches


class Recorder(L.LightningModule):
    def __init__(self, out_dir: str, max_tokens=None):
        super().__init__()
        self.out_dir, self.max_tokens = out_dir, max_tokens
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = {"train": {}, "valid": {}}

    def _log(self, stage: str, value) -> None:
        self.seen[stage].setdefault(str(self.current_epoch), []).append(value)

    def training_step(self, batch, batch_idx):
        assert batch["items"].shape == batch["targets"].shape
        if self.max_tokens is None:
            assert batch["items"].shape[0] == 4
        else:
            assert batch["items"].numel() <= self.max_tokens
        self._log("train", int(batch["items"].sum()))
        return (self.w * batch["items"].float().mean()).sum()

    def _eval(self, stage, batch):
        assert batch["items"].dtype == torch.int64 and batch["valid"].dtype == torch.bool
        assert self.max_tokens is None or batch["items"].numel() <= self.max_tokens
        self._log(stage, batch["user"][batch["valid"]].tolist())
        # a collective per batch: a rank with fewer batches would hang here
        self.all_gather(torch.ones(1))

    def validation_step(self, batch, batch_idx):
        self._eval("valid", batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def _dump(self, stage):
        with open(os.path.join(self.out_dir, f"{stage}-rank{self.global_rank}.json"), "w") as f:
            json.dump({"world": self.trainer.world_size, "seen": self.seen}, f)

    def on_fit_end(self):
        self._dump("fit")


def _load(out_dir, stage):
    return [json.load(open(os.path.join(out_dir, f"{stage}-rank{r}.json"))) for r in range(2)]


@pytest.mark.parametrize("max_tokens", [None, 24])
def test_ddp_two_ranks_two_workers(tmp_path, max_tokens):
    data_dir, out_dir = str(tmp_path / "shards"), str(tmp_path / "out")
    os.makedirs(out_dir)
    seqs = random_sequences(37, 40, min_len=1, max_len=15, seed=7)
    write_shards(data_dir, seqs, 3, block_size=4, shard_sizes=[20, 2, 15])
    cfg = LoaderConfig(data_dir=data_dir, max_len=6, batch_size=4, eval_batch_size=5, num_workers=2,
                       shuffle_buffer=8, steps_per_epoch=STEPS, persistent_workers=True, max_tokens=max_tokens)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=2, num_sanity_val_steps=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    model, dm = Recorder(out_dir, max_tokens), ElasticDataModule(cfg)
    trainer.fit(model, datamodule=dm)

    fit = _load(out_dir, "fit")
    assert [r["world"] for r in fit] == [2, 2]
    train = [r["seen"]["train"] for r in fit]
    for epoch in ("0", "1"):
        assert len(train[0][epoch]) == len(train[1][epoch]) == STEPS
    assert train[0]["0"] != train[1]["0"]  # each rank draws its own stream
    assert train[0]["0"] != train[0]["1"]  # and a new one every epoch

    expected = Counter(u for u, s in enumerate(seqs) if len(s) >= 3)
    assert 0 < len(expected) < len(seqs)  # some users are too short for validation: they must not appear
    assert sorted(fit[0]["seen"]["valid"]) == ["0", "1"]
    for epoch in ("0", "1"):
        per_rank = [r["seen"]["valid"][epoch] for r in fit]
        assert len(per_rank[0]) == len(per_rank[1])
        if max_tokens is None:
            assert len(per_rank[0]) == 4  # ceil(ceil(37/2)/5) batches each
        assert Counter(u for batches in per_rank for b in batches for u in b) == expected
