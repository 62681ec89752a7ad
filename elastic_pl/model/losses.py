"""Next-item losses over (query [M, D], target [M]) pairs, M = supervised positions.

``items`` is the (possibly L2-normalised) item matrix [V+1, D]; row 0 is padding, never a
candidate. Scores are ``query . item / temperature``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def full_softmax(query: torch.Tensor, target: torch.Tensor, items: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy over the whole catalog (small catalogs).

    The [M, V] logits are the big tensor here, so the temperature scales the [M, D] query
    instead, and the padding row is sliced off (targets shift by one) rather than masked."""
    logits = (query / temperature) @ items[1:].T
    return F.cross_entropy(logits.float(), target - 1)


def sampled_softmax_uniform(query, target, items, temperature: float, num_negatives: int,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """Softmax over [target] + K negatives drawn uniformly from 1..V, shared by the batch.
    A negative equal to the row's target (an accidental hit) is removed. With uniform sampling
    the logQ correction is the same constant for every candidate, so it cancels."""
    V = items.shape[0] - 1
    neg = torch.randint(1, V + 1, (num_negatives,), device=query.device, generator=generator)
    pos_logit = (query * items[target]).sum(-1, keepdim=True)
    neg_logits = query @ items[neg].T
    neg_logits = neg_logits.masked_fill(neg[None, :] == target[:, None], float("-inf"))
    logits = torch.cat([pos_logit, neg_logits], dim=1).float() / temperature
    return F.cross_entropy(logits, torch.zeros_like(target))


def sampled_softmax_in_batch(query, target, items, temperature: float) -> torch.Tensor:
    """Softmax over the batch's distinct targets, each logit corrected by -log Q(item) where Q
    is the item's frequency among the batch's targets (Yi et al. 2019, "logQ correction")."""
    candidates, label, counts = torch.unique(target, return_inverse=True, return_counts=True)
    log_q = torch.log(counts.float() / target.numel())
    logits = (query @ items[candidates].T).float() / temperature - log_q[None, :]
    return F.cross_entropy(logits, label)


def bce(query, target, items, temperature: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Original SASRec: one uniform negative per position, binary cross-entropy."""
    V = items.shape[0] - 1
    neg = torch.randint(1, V + 1, target.shape, device=query.device, generator=generator)
    pos = (query * items[target]).sum(-1).float() / temperature
    negs = (query * items[neg]).sum(-1).float() / temperature
    return F.softplus(-pos).mean() + F.softplus(negs).mean()
