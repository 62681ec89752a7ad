"""Interest Memory Retrieval: a product-key memory of S = n^2 learnable interest slots.

A query is split into two halves; each half scores n sub-keys and keeps its top k; the k^2
sums of the two halves' scores are candidate slots, of which the top k are read with softmax
weights. Cost per query O(n * d_key + k^2 + k * D), whatever S is (Lample et al. 2019).

The query can be normalised before it is scored (``query_norm``): product-key memories spread
their reads over more slots when the query's features have a fixed scale (Lample et al. 2019
put BatchNorm on the query). Read statistics (which slots, how evenly) are kept only while
``track_usage`` is set, so training pays nothing for them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn


def _half_layernorm(key_dim: int) -> nn.Module:
    # Each half of the query scores its own sub-keys, so each half is normalised on its own
    # (a LayerNorm per half, affine per feature): neither half can dominate the slot ranking.
    return nn.GroupNorm(2, key_dim)


@dataclass(frozen=True)
class QueryNorm:
    """How a query [M, key_dim] is normalised before it is scored: ``build(key_dim)`` gives the
    module (None: left as is); ``min_key_dim``: the narrowest query it makes sense for."""

    build: Callable[[int], Optional[nn.Module]]
    min_key_dim: int = 2


# model.encoder.memory_query_norm -> its QueryNorm. BatchNorm uses the batch's statistics in
# training and its running ones in eval, so ``step`` equals ``forward`` in eval only. A half of
# width 1 would layer-normalise to a constant (every query reading the same slots).
QUERY_NORMS: dict[str, QueryNorm] = {
    "none": QueryNorm(lambda key_dim: None),
    "layernorm": QueryNorm(_half_layernorm, min_key_dim=4),
    "batchnorm": QueryNorm(nn.BatchNorm1d),
}


class ProductKeyMemory(nn.Module):
    """``subkeys`` = n (S = n^2 slots of width ``d_model``), ``topk`` = k, ``key_dim``: the
    query/key width (two halves), ``query_norm``: a name in :data:`QUERY_NORMS`."""

    def __init__(self, d_model: int, subkeys: int, topk: int, key_dim: int, query_norm: str = "none"):
        super().__init__()
        self.n, self.k = subkeys, topk
        half = key_dim // 2
        slots = subkeys**2
        self.query = nn.Linear(d_model, key_dim)
        self.query_norm = QUERY_NORMS[query_norm].build(key_dim)  # "none": no module, no state_dict keys
        self.subkeys = nn.Parameter(torch.randn(2, self.n, half) * half**-0.5)
        self.values = nn.Embedding(slots, d_model)
        nn.init.normal_(self.values.weight, std=0.02)
        # Read weight summed per slot since reset_usage(), written only while track_usage is set.
        self.track_usage = False
        self.register_buffer("usage", torch.zeros(slots, dtype=torch.float32), persistent=False)

    def lookup(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [..., D] -> (slot ids [..., k], weights [..., k])."""
        lead = x.shape[:-1]
        # Routing in fp32 even under autocast, so bf16 rounding does not flip the top-k.
        with torch.autocast(device_type=x.device.type, enabled=False):
            q = F.linear(x.float(), self.query.weight.float(), self.query.bias.float())
            if self.query_norm is not None:  # the norms take rows [M, key_dim]
                q = self.query_norm(q.reshape(-1, q.shape[-1]))
            scores = torch.einsum("mhd,hnd->mhn", q.reshape(-1, 2, self.subkeys.shape[-1]), self.subkeys.float())
        top, idx = scores.topk(self.k, dim=-1)  # [M, 2, k]
        cand = top[:, 0, :, None] + top[:, 1, None, :]  # [M, k, k]
        best, pos = cand.flatten(1).topk(self.k, dim=-1)  # [M, k]
        # slot ids of the k winners only, not of all k^2 candidates
        slots = idx[:, 0].gather(1, pos // self.k) * self.n + idx[:, 1].gather(1, pos % self.k)
        return slots.view(*lead, self.k), torch.softmax(best, dim=-1).view(*lead, self.k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slots, weights = self.lookup(x)
        if self.track_usage:
            self.record_reads(slots, weights)
        # The weighted sum of the k slots read, without materialising them ([M, k, D]).
        values = self.values.weight
        out = F.embedding_bag(slots.reshape(-1, self.k), values, mode="sum",
                              per_sample_weights=weights.reshape(-1, self.k).to(values.dtype))
        return out.view(*slots.shape[:-1], values.shape[-1])

    # -- read statistics ----------------------------------------------------------------------
    def record_reads(self, slots: torch.Tensor, weights: torch.Tensor) -> None:
        """Add each read's weight to its slot: slots int64 [..., k], weights [..., k]."""
        self.usage.index_add_(0, slots.reshape(-1), weights.detach().reshape(-1).to(self.usage.dtype))

    def slots_touched(self) -> int:
        return int((self.usage > 0).sum())

    def reset_usage(self) -> None:
        self.usage.zero_()


def read_statistics(usage: torch.Tensor) -> dict[str, float]:
    """Of a read-weight-per-slot vector [S]: the fraction of slots read (positive weight), the
    entropy in nats of the read distribution (weights normalised to sum 1) and that entropy as a
    fraction of its maximum log(S) (1 = reads spread evenly over every slot; one slot: 1)."""
    usage = usage.double()
    total = float(usage.sum())
    if total <= 0:
        return {"slot_fraction": 0.0, "read_entropy": 0.0, "read_entropy_frac": 0.0}
    p = usage[usage > 0] / total
    entropy = float(-(p * p.log()).sum())
    slots = usage.numel()
    return {"slot_fraction": p.numel() / slots, "read_entropy": entropy,
            "read_entropy_frac": entropy / math.log(slots) if slots > 1 else 1.0}


def mean_read_statistics(memories: list[ProductKeyMemory],
                         reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> dict[str, float]:
    """:func:`read_statistics` of each memory (layer), averaged over the memories; ``reduce`` sums
    a usage vector over data-parallel ranks first (identity on one process)."""
    per_layer = [read_statistics(reduce(m.usage.clone())) for m in memories]
    return {key: sum(s[key] for s in per_layer) / len(per_layer) for key in per_layer[0]}
