"""Next-item losses over (query [M, D], target [M]) pairs, M = supervised positions.

``items`` is the (possibly L2-normalised) item matrix [V+1, D]; row 0 is padding, never a
candidate. Scores are ``query . item / temperature``. Each loss is a :class:`Loss` with its own
frozen config (the keys under ``model.loss``), registered in registry.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .chunked_softmax import chunked_full_softmax


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


# -- the registered losses ------------------------------------------------------------------------
@dataclass(frozen=True)
class LossConfig:
    """``model.loss``: the loss's name (registered, or ``package.module:ClassName``) and, in each
    subclass, its own keys."""

    name: str = ""

    def describe(self) -> str:
        """How result tables name the loss."""
        return self.name


def _need(cfg, cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"model.loss.{name}: {msg} (got {getattr(cfg, name)!r})")


@dataclass(frozen=True)
class ScaledLossConfig(LossConfig):
    temperature: float = 1.0  # logits are divided by it

    def __post_init__(self) -> None:
        _need(self, self.temperature > 0, "temperature", "must be > 0")


class Loss:
    """``loss(query [M, D], target [M], items [V+1, D], generator) -> scalar``; no parameters."""

    Config: ClassVar[type] = LossConfig

    def __init__(self, cfg: LossConfig):
        self.cfg = cfg

    def __call__(self, query: torch.Tensor, target: torch.Tensor, items: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class FullSoftmaxConfig(ScaledLossConfig):
    name: str = "full_softmax"
    # chunked: rows in cache-sized chunks, gradients formed in the forward (chunked_softmax.py);
    # false: the plain [M, V] logits (the reference)
    chunked: bool = True
    chunk_rows: int = 0  # rows per chunk; 0 = about 2^20 logits per chunk

    def __post_init__(self) -> None:
        super().__post_init__()
        _need(self, self.chunk_rows >= 0, "chunk_rows", "must be >= 0")

    def describe(self) -> str:
        return "full softmax CE"


class FullSoftmax(Loss):
    Config = FullSoftmaxConfig

    def __call__(self, query, target, items, generator=None):
        c = self.cfg
        if c.chunked:
            return chunked_full_softmax(query, target, items, c.temperature, c.chunk_rows)
        return full_softmax(query, target, items, c.temperature)


NEGATIVES = ("uniform", "in_batch")


@dataclass(frozen=True)
class SampledSoftmaxConfig(ScaledLossConfig):
    name: str = "sampled_softmax"
    negatives: str = "uniform"  # uniform: num_negatives shared draws | in_batch: the batch's targets + logQ
    num_negatives: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        _need(self, self.negatives in NEGATIVES, "negatives", f"must be one of {NEGATIVES}")
        _need(self, self.num_negatives >= 1, "num_negatives", "must be >= 1")

    def describe(self) -> str:
        if self.negatives == "in_batch":
            return "sampled softmax, in-batch negatives + logQ"
        return f"sampled softmax, {self.num_negatives} uniform negatives"


class SampledSoftmax(Loss):
    Config = SampledSoftmaxConfig

    def __call__(self, query, target, items, generator=None):
        c = self.cfg
        if c.negatives == "in_batch":
            return sampled_softmax_in_batch(query, target, items, c.temperature)
        return sampled_softmax_uniform(query, target, items, c.temperature, c.num_negatives, generator)


@dataclass(frozen=True)
class BCEConfig(ScaledLossConfig):
    name: str = "bce"

    def describe(self) -> str:
        return "BCE, 1 negative"


class BinaryCrossEntropy(Loss):
    Config = BCEConfig

    def __call__(self, query, target, items, generator=None):
        return bce(query, target, items, self.cfg.temperature, generator)
