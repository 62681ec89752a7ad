"""The item-transition baseline: windowed, distance-weighted item-to-item co-occurrence.

Not a trained model and not strictly a first-order Markov chain: for every item ``i`` it counts the
items that follow it within ``window`` steps in the training part of each sequence (all but the
last two events), each pair weighted 1/distance, and normalises each row into ``P(j | i)``. A
user's score for item ``j`` is ``sum_k decay**k * P(j | h_k)`` over the user's ``last`` most recent
items ``h_0`` (newest) .. ``h_{last-1}``, plus ``pop_weight`` times ``j``'s share of training
events, which breaks the ties among items no recent item leads to. With ``window=1, last=1`` it is
the first-order Markov chain.

It tells how much of a dataset's next-item signal is item-to-item, the part any sequential model
should capture. The constants (:data:`DEFAULT`) are the same on every dataset: the best setting of
``python -m bench.transition_grid`` over seven public sets, ranked on their validation splits
(never test; BENCHMARKS.md s.4z). Scored through the same full-ranking path as the models and the
popularity baseline (``target_ranks``, history filtering, pessimistic ties). The transition matrix
is dense, [V+2, V+1] float32, so the baseline refuses catalogs above ``MAX_ITEMS``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from data_pipeline.datamodule import ElasticDataModule

from .config import Config
from .popularity import evaluate_baseline, training_mask

MAX_ITEMS = 40_000  # one dense [V+2, V+1] float32 array: 6.4 GB at 40k items


@dataclass(frozen=True)
class TransitionParams:
    window: int = 5  # count the next `window` items after each item, weight 1 / distance
    last: int = 10  # the user's most recent items that vote
    decay: float = 0.5  # weight of the k-th most recent item: decay**k
    pop_weight: float = 1e-3  # times the item's share of training events


DEFAULT = TransitionParams()


def transition_items(dm: ElasticDataModule, window: int = DEFAULT.window) -> np.ndarray:
    """[V+2, V+1] float32, one row per source item: ``out[i, j] = P(j | i)`` for i <= V (row 0,
    padding, is zero), and ``out[V+1, j]`` = j's share of events, both over the training part of
    every sequence (all but the last two events). One dense array, built in place."""
    size = dm.num_items + 1
    out = np.zeros((size + 1, size), dtype=np.float32)
    for block in dm.blocks():
        train, items = training_mask(block), block.items
        user = np.repeat(np.arange(len(block)), np.diff(block.offsets))
        out[-1] += np.bincount(items[train], minlength=size)
        for d in range(1, window + 1):  # pairs (i -> j) d steps apart in one user's training part
            pair = train[:-d] & train[d:] & (user[:-d] == user[d:])
            np.add.at(out, (items[:-d][pair], items[d:][pair]), 1.0 / d)
    totals = out.sum(axis=1, keepdims=True)
    np.divide(out, totals, out=out, where=totals > 0)
    return out


def transition_scores(batch_items: torch.Tensor, next_item: torch.Tensor, params: TransitionParams) -> torch.Tensor:
    """[B, N] left-padded inputs -> scores [B, V+1] = ``sum_k decay**k * P(. | h_k) + pop_weight *
    share``, gathered row by row from ``next_item`` (:func:`transition_items`): a user votes with
    at most ``last`` rows, so this costs O(B x last x V), where a dense query over the catalog
    would cost O(B x V^2). Padding (id 0) gathers the zero row."""
    recent = batch_items[:, -params.last:].flip(1)  # newest first
    scores = params.pop_weight * next_item[-1].expand(recent.shape[0], -1).clone()
    for k in range(recent.shape[1]):
        scores.add_(next_item.index_select(0, recent[:, k]), alpha=params.decay ** k)
    return scores


def open_data(cfg: Config) -> ElasticDataModule:
    dm = ElasticDataModule(cfg.data.loader)
    dm.setup()
    if dm.num_items > MAX_ITEMS:
        raise ValueError(f"the transition baseline keeps a dense {dm.num_items} x {dm.num_items} matrix; "
                         f"it supports catalogs of up to {MAX_ITEMS} items")
    return dm


def transition_scorer(cfg: Config, params: TransitionParams = DEFAULT):
    """The opened data and the transition scorer (``batch -> scores [B, V+1]``)."""
    dm = open_data(cfg)
    items = torch.from_numpy(transition_items(dm, params.window))
    return dm, lambda batch: transition_scores(batch["items"], items, params)


def evaluate_transition(cfg: Config, split: str = "test", params: TransitionParams = DEFAULT) -> dict:
    """Metrics of the baseline on ``split`` (several settings at once: bench/transition_grid.py)."""
    dm, scorer = transition_scorer(cfg, params)
    return evaluate_baseline(cfg, dm, split, "transition", scorer)
