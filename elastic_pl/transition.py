"""The item-transition baseline: windowed, distance-weighted item-to-item co-occurrence.

Not a trained model and not strictly a first-order Markov chain: for every item ``i`` it counts the
items that follow it within ``window`` steps in the training part of each sequence (all but the
last two events), each pair weighted 1/distance, and normalises each row into ``P(j | i)``. A
user's score for item ``j`` is ``sum_k decay**k * P(j | h_k)`` over the user's ``last`` most recent
items ``h_0`` (newest) .. ``h_{last-1}``, plus ``pop_weight`` times ``j``'s share of training
events, which breaks the ties among items no recent item leads to. With ``window=1, last=1`` it is
the first-order Markov chain.

It tells how much of a dataset's next-item signal is item-to-item, the part any sequential model
should capture. The constants (:data:`DEFAULT`) are the same on every dataset;
``python -m bench.transition_grid`` ranks the settings of a grid on the validation split of
several datasets at once (never test), to choose them. Scored through the same full-ranking path as the models and the
popularity baseline (``target_ranks``, history filtering, pessimistic ties). The transition matrix
is dense, [V+1, V+2] float32, so the baseline refuses catalogs above ``MAX_ITEMS``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from data_pipeline.datamodule import ElasticDataModule

from .config import Config
from .popularity import evaluate_baseline, training_mask

MAX_ITEMS = 40_000  # one dense [V+1, V+2] float32 array: 6.4 GB at 40k items


@dataclass(frozen=True)
class TransitionParams:
    window: int = 3  # count the next `window` items after each item, weight 1 / distance
    last: int = 5  # the user's most recent items that vote
    decay: float = 0.5  # weight of the k-th most recent item: decay**k
    pop_weight: float = 1e-3  # times the item's share of training events


DEFAULT = TransitionParams()


def transition_items(dm: ElasticDataModule, window: int = DEFAULT.window) -> np.ndarray:
    """[V+1, V+2] float32 "item embeddings" of the baseline: ``out[j, i] = P(j | i)`` for i <= V,
    ``out[j, V+1]`` = j's share of events, both over the training part of every sequence (all but
    the last two events). One dense array, built in place."""
    size = dm.num_items + 1
    out = np.zeros((size, size + 1), dtype=np.float32)
    for block in dm.blocks():
        train, items = training_mask(block), block.items
        user = np.repeat(np.arange(len(block)), np.diff(block.offsets))
        out[:, -1] += np.bincount(items[train], minlength=size)
        for d in range(1, window + 1):  # pairs (i -> j) d steps apart in one user's training part
            pair = train[:-d] & train[d:] & (user[:-d] == user[d:])
            np.add.at(out, (items[d:][pair], items[:-d][pair]), 1.0 / d)
    totals = out.sum(axis=0)
    np.divide(out, totals, out=out, where=totals > 0)
    return out


def transition_inputs(batch_items: torch.Tensor, items: torch.Tensor, params: TransitionParams
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, N] left-padded inputs -> ``(query [B, U], items[:, cols] [V+1, U])`` whose product is
    ``sum_k decay**k * P(. | h_k) + pop_weight * share``. A query is nonzero only on the batch's
    recent items and the popularity column, so only those U columns of the matrix are kept: the
    same scores at a fraction of the [B, V+2] product's cost."""
    recent = batch_items[:, -params.last:].flip(1)  # newest first, 0 = padding
    pop_col = items.shape[1] - 1
    cols, index = torch.unique(torch.cat([recent[recent > 0], torch.tensor([pop_col])]), return_inverse=True)
    weights = params.decay ** torch.arange(recent.shape[1], dtype=torch.float32).expand_as(recent)
    query = torch.zeros(recent.shape[0], len(cols))
    local = torch.zeros_like(recent)
    local[recent > 0] = index[:-1]
    query.scatter_add_(1, local, weights * (recent > 0))
    query[:, index[-1]] = params.pop_weight
    return query, items[:, cols]


def open_data(cfg: Config) -> ElasticDataModule:
    dm = ElasticDataModule(cfg.data.loader)
    dm.setup()
    if dm.num_items > MAX_ITEMS:
        raise ValueError(f"the transition baseline keeps a dense {dm.num_items} x {dm.num_items} matrix; "
                         f"it supports catalogs of up to {MAX_ITEMS} items")
    return dm


def evaluate_transition(cfg: Config, split: str = "test", params: TransitionParams = DEFAULT,
                        dm: ElasticDataModule | None = None, items: torch.Tensor | None = None) -> dict:
    """Metrics of the baseline on ``split``; ``dm`` and ``items`` (``transition_items`` for
    ``params.window``) may be passed in to score several settings over one matrix."""
    dm = dm or open_data(cfg)
    items = items if items is not None else torch.from_numpy(transition_items(dm, params.window))
    return evaluate_baseline(cfg, dm, split, "transition",
                             lambda batch: transition_inputs(batch["items"], items, params))
