"""Softmax losses for large catalogs: in-batch candidates with logQ correction, optionally mixed
with uniform negatives (Yang et al. 2020), optionally across all data-parallel ranks.

The estimator (both losses). The candidates are the distinct items among
  * the batch's targets: M draws from the items' training frequency, estimated by the batch
    itself (item j appears c_j times);
  * K negatives drawn uniformly from 1..V (``mixed_softmax`` only; K = 0 otherwise).
Together these are M + K draws from the mixture proposal ``(c_j + K / V) / (M + K)`` (Yang et al.
2020, "Mixed Negative Sampling for Learning Two-tower Neural Networks in Recommendations"), so
each candidate's logit is corrected by minus the log of its expected number of draws,

    logit[i, j] = query_i . item_j / temperature - log(c_j + K / V)

(logQ correction, Yi et al. 2019; the constant log(M + K) cancels in the softmax). A uniform
negative's correction is thus -log(K / V) on the same scale as a batch item's -log(c_j): the two
parts must share one scale, or the uniform part is over- or under-weighted by a factor M / K.
An item both in the batch and drawn uniformly is one candidate with both terms; a draw equal to
the row's own target (an accidental hit) is therefore never a negative of that row. With K = 0
this is exactly ``sampled_softmax`` with ``negatives: in_batch`` (losses.py).

``cross_rank``: the batch's targets are those of every rank (cross_rank.py), c_j counted over the
global batch, and the loss is the global batch's mean. A no-op without a process group. The
logits are [M_r, C] with C <= M_total + K distinct candidates.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .cross_rank import GlobalBatch, gather_targets, global_mean
from .losses import Loss, ScaledLossConfig, _need


def corrected_softmax(query: torch.Tensor, target: torch.Tensor, items: torch.Tensor, temperature: float,
                      negatives: torch.Tensor | None = None, cross_rank: bool = False) -> torch.Tensor:
    """query [M, D], target [M] (ids in 1..V), items [V+1, D], negatives [K] uniform draws from
    1..V or None -> scalar; see the module docstring for the formula."""
    batch = gather_targets(target) if cross_rank else GlobalBatch(target, 1)
    pool = batch.targets if negatives is None else torch.cat([batch.targets, negatives])
    candidates, inverse = torch.unique(pool, return_inverse=True)  # sorted
    label = torch.searchsorted(candidates, target)
    logits = query @ items[candidates].T  # row reads only: fine for row-sparse item tables
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    expected = torch.bincount(inverse[:batch.rows], minlength=candidates.numel()).to(logits.dtype)
    if negatives is not None:
        expected = expected + negatives.numel() / (items.shape[0] - 1)
    per_row = F.cross_entropy(logits - torch.log(expected), label, reduction="none")
    return global_mean(per_row, batch)


def uniform_negatives(num_items: int, k: int, device, generator: torch.Generator | None) -> torch.Tensor:
    """K ids drawn uniformly (with replacement) from 1..V [K]."""
    return torch.randint(1, num_items + 1, (k,), device=device, generator=generator)


# -- the registered losses ------------------------------------------------------------------------
@dataclass(frozen=True)
class InBatchSoftmaxConfig(ScaledLossConfig):
    name: str = "in_batch_softmax"
    cross_rank: bool = False  # candidates: the targets of every data-parallel rank's batch

    def describe(self) -> str:
        return "in-batch softmax + logQ" + (", all ranks" if self.cross_rank else "")


class InBatchSoftmax(Loss):
    """Softmax over the batch's distinct targets with logQ correction (K = 0 above)."""

    Config = InBatchSoftmaxConfig

    def __call__(self, query, target, items, generator=None):
        return corrected_softmax(query, target, items, self.cfg.temperature, cross_rank=self.cfg.cross_rank)


@dataclass(frozen=True)
class MixedSoftmaxConfig(InBatchSoftmaxConfig):
    name: str = "mixed_softmax"
    num_negatives: int = 256  # K uniform negatives per step, shared by the rank's rows

    def __post_init__(self) -> None:
        super().__post_init__()
        _need(self, self.num_negatives >= 1, "num_negatives", "must be >= 1")

    def describe(self) -> str:
        return f"mixed softmax, in-batch + {self.num_negatives} uniform" + (", all ranks" if self.cross_rank else "")


class MixedSoftmax(Loss):
    """In-batch candidates plus K uniform negatives, corrected by the mixture's logQ."""

    Config = MixedSoftmaxConfig

    def __call__(self, query, target, items, generator=None):
        negatives = uniform_negatives(items.shape[0] - 1, self.cfg.num_negatives, query.device, generator)
        return corrected_softmax(query, target, items, self.cfg.temperature, negatives, self.cfg.cross_rank)
