"""The popularity baseline: every user gets the items ranked by training-set frequency.

Scored through the same full-ranking path as the models (``target_ranks``, history filtering,
pessimistic ties), so its numbers are comparable with theirs.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from data_pipeline.datamodule import ElasticDataModule
from data_pipeline.sharding import read_blocks

from .config import Config
from .metrics import FullRankingMetrics, target_ranks


def training_item_counts(dm: ElasticDataModule) -> np.ndarray:
    """[V+1] counts of each item over the training part of every sequence (all but the last two)."""
    counts = np.zeros(dm.num_items + 1, dtype=np.int64)
    for url, shard in zip(dm.urls, dm.manifest.shards):
        for block in read_blocks(url, shard.users, dm.num_items):
            ends = np.maximum(block.offsets[1:] - 2, block.offsets[:-1])  # drop valid + test targets
            keep = np.zeros(len(block.items) + 1, dtype=np.int64)
            np.add.at(keep, block.offsets[:-1], 1)
            np.add.at(keep, ends, -1)
            mask = np.cumsum(keep[:-1]) > 0
            counts += np.bincount(block.items[mask], minlength=dm.num_items + 1)
    return counts


def evaluate_popularity(cfg: Config, split: str = "test") -> dict:
    dm = ElasticDataModule(cfg.data.loader)
    dm.setup()
    counts = torch.from_numpy(training_item_counts(dm)).double()
    items = counts[:, None]  # score = count; query = 1
    metrics = FullRankingMetrics()
    dataset = dm.eval_dataset(split)
    for batch in tqdm(dataset, desc=f"popularity/{split}", total=len(dataset)):
        query = torch.ones(batch["target"].shape[0], 1, dtype=torch.float64)
        seen = batch["seen"] if cfg.eval.filter_seen else None
        metrics.update(target_ranks(query, items, batch["target"], seen, cfg.eval.chunk_size), batch["valid"])
    prefix = "val/" if split == "valid" else "test/"
    return {prefix + k: float(v) for k, v in metrics.compute().items()}
