"""The item-transition baseline: a first-order Markov chain over the training sequences.

For every item ``i`` it counts the items that follow it in the training part of each sequence (all
but the last two events), up to ``WINDOW`` steps ahead with weight 1/distance, and normalises each
row into ``P(j | i)``. A user's score for item ``j`` is ``sum_k DECAY**k * P(j | h_k)`` over the
user's ``LAST`` most recent items ``h_0`` (newest) .. ``h_{LAST-1}``, plus ``POP_WEIGHT`` times
``j``'s share of training events, which breaks the ties among items no recent item leads to.

It tells how much of a dataset's next-item signal is item-to-item, the part any sequential model
should capture. Scored through the same full-ranking path as the models and the popularity
baseline (``target_ranks``, history filtering, pessimistic ties). The transition matrix is dense,
[V+1, V+2] float32, so the baseline refuses catalogs above ``MAX_ITEMS``.
"""
from __future__ import annotations

import numpy as np
import torch

from data_pipeline.datamodule import ElasticDataModule
from data_pipeline.sharding import read_blocks

from .config import Config
from .popularity import evaluate_baseline, training_mask

WINDOW = 3  # count the next WINDOW items after each item, weight 1 / distance
LAST = 5  # the user's most recent items that vote
DECAY = 0.5  # weight of the k-th most recent item: DECAY**k
POP_WEIGHT = 1e-3  # times the item's share of training events
MAX_ITEMS = 40_000  # one dense [V+1, V+2] float32 array: 6.4 GB at 40k items


def transition_items(dm: ElasticDataModule) -> np.ndarray:
    """[V+1, V+2] float32 "item embeddings" of the baseline: ``out[j, i] = P(j | i)`` for i <= V,
    ``out[j, V+1]`` = j's share of events, both over the training part of every sequence (all but
    the last two events). One dense array, built in place."""
    size = dm.num_items + 1
    out = np.zeros((size, size + 1), dtype=np.float32)
    for url, shard in zip(dm.urls, dm.manifest.shards):
        for block in read_blocks(url, shard.users, dm.num_items):
            train, items = training_mask(block), block.items
            user = np.repeat(np.arange(len(block)), np.diff(block.offsets))
            out[:, -1] += np.bincount(items[train], minlength=size)
            for d in range(1, WINDOW + 1):  # pairs (i -> j) d steps apart in one user's training part
                pair = train[:-d] & train[d:] & (user[:-d] == user[d:])
                np.add.at(out, (items[d:][pair], items[:-d][pair]), 1.0 / d)
    totals = out.sum(axis=0)
    np.divide(out, totals, out=out, where=totals > 0)
    return out


def evaluate_transition(cfg: Config, split: str = "test") -> dict:
    dm = ElasticDataModule(cfg.data.loader)
    dm.setup()
    if dm.num_items > MAX_ITEMS:
        raise ValueError(f"the transition baseline keeps a dense {dm.num_items} x {dm.num_items} matrix; "
                         f"it supports catalogs of up to {MAX_ITEMS} items")
    items = torch.from_numpy(transition_items(dm))

    def query_of(batch: dict) -> torch.Tensor:  # [weights of the recent items | POP_WEIGHT]
        recent = batch["items"][:, -LAST:].flip(1)  # newest first, 0 = padding
        weights = DECAY ** torch.arange(recent.shape[1], dtype=torch.float32).expand_as(recent)
        query = torch.zeros(recent.shape[0], items.shape[1])
        query.scatter_add_(1, recent, weights * (recent > 0))
        query[:, -1] = POP_WEIGHT
        return query

    return evaluate_baseline(cfg, dm, split, "transition", items, query_of)
