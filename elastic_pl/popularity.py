"""The popularity baseline: every user gets the items ranked by training-set frequency.

Scored through the same full-ranking path as the models (``target_ranks``, history filtering,
pessimistic ties), so its numbers are comparable with theirs.
"""
from __future__ import annotations

from typing import Callable, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

from data_pipeline.datamodule import ElasticDataModule

from .config import Config
from .metrics import FullRankingMetrics, ranks_from_scores, target_ranks


def training_mask(block) -> np.ndarray:
    """bool [len(block.items)]: the positions in the training part of their sequence (all but the
    last two events, the validation and test targets)."""
    ends = np.maximum(block.offsets[1:] - 2, block.offsets[:-1])
    keep = np.zeros(len(block.items) + 1, dtype=np.int64)
    np.add.at(keep, block.offsets[:-1], 1)
    np.add.at(keep, ends, -1)
    return np.cumsum(keep[:-1]) > 0


def training_item_counts(dm: ElasticDataModule) -> np.ndarray:
    """[V+1] counts of each item over the training part of every sequence (all but the last two)."""
    counts = np.zeros(dm.num_items + 1, dtype=np.int64)
    for block in dm.blocks():
        counts += np.bincount(block.items[training_mask(block)], minlength=dm.num_items + 1)
    return counts


# batch -> scores [B, V+1] (column 0: padding; small catalogs), or (query [B, D], items [V+1, D])
# scored as query @ items.T a chunk of items at a time (memory O(B x chunk): any catalog)
Scorer = Callable[[dict], Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]]


def evaluate_baseline(cfg: Config, dm: ElasticDataModule, split: str, name: str, scores_of: Scorer) -> dict:
    """Metrics of ``scores_of(batch)`` over ``split``, ranked like the models (``target_ranks`` /
    ``ranks_from_scores``: history filtering as configured, pessimistic ties)."""
    return evaluate_baselines(cfg, dm, split, name, {name: scores_of})[name]


def ranked_batches(cfg: Config, dm: ElasticDataModule, split: str, desc: str, scorers: dict[object, Scorer]):
    """Yields ``(batch, {key: 1-based target ranks [B]})`` over ``split`` for several scorers, the
    batches read once; ranked like the models (history filtering as configured, pessimistic ties)."""
    dataset = dm.eval_dataset(split)
    for batch in tqdm(dataset, desc=f"{desc}/{split}", total=len(dataset)):
        seen = batch["seen"] if cfg.eval.filter_seen else None
        ranks = {}
        for key, scores_of in scorers.items():
            out = scores_of(batch)
            ranks[key] = (target_ranks(*out, batch["target"], seen, cfg.eval.chunk_size) if isinstance(out, tuple)
                          else ranks_from_scores(out, batch["target"], seen))
        yield batch, ranks


def evaluate_baselines(cfg: Config, dm: ElasticDataModule, split: str, desc: str, scorers: dict[object, Scorer]) -> dict:
    """``{key: metrics}`` of several scorers (as in :func:`evaluate_baseline`) in one pass over
    ``split``: the batches are read once (settings grids)."""
    metrics = {key: FullRankingMetrics() for key in scorers}
    for batch, ranks in ranked_batches(cfg, dm, split, desc, scorers):
        for key, r in ranks.items():
            metrics[key].update(r, batch["valid"])
    prefix = "val/" if split == "valid" else "test/"
    return {key: {prefix + k: float(v) for k, v in m.compute().items()} for key, m in metrics.items()}


def popularity_scorer(cfg: Config) -> tuple[ElasticDataModule, Scorer]:
    """The opened data and the popularity scorer: score = training count (a 1-wide query)."""
    dm = ElasticDataModule(cfg.data.loader)
    dm.setup()
    items = torch.from_numpy(training_item_counts(dm)).double()[:, None]
    return dm, lambda batch: (torch.ones(batch["target"].shape[0], 1, dtype=torch.float64), items)


def evaluate_popularity(cfg: Config, split: str = "test") -> dict:
    dm, scorer = popularity_scorer(cfg)
    return evaluate_baseline(cfg, dm, split, "popularity", scorer)
