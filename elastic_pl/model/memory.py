"""Interest Memory Retrieval: a product-key memory of S = n^2 learnable interest slots.

A query is split into two halves; each half scores n sub-keys and keeps its top k; the k^2
sums of the two halves' scores are candidate slots, of which the top k are read with softmax
weights. Cost per query O(n * d_key + k^2 + k * D), whatever S is (Lample et al. 2019).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


class ProductKeyMemory(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n, self.k = cfg.memory_subkeys, cfg.memory_topk
        half = cfg.memory_key_dim // 2
        self.query = nn.Linear(cfg.d_model, cfg.memory_key_dim)
        self.subkeys = nn.Parameter(torch.randn(2, self.n, half) * half**-0.5)
        self.values = nn.Embedding(cfg.memory_slots, cfg.d_model)
        nn.init.normal_(self.values.weight, std=0.02)
        # Optional usage tracking (off in the hot path): which slots were read since reset.
        self.track_usage = False
        self.register_buffer("usage", torch.zeros(cfg.memory_slots, dtype=torch.bool), persistent=False)

    def lookup(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [..., D] -> (slot ids [..., k], weights [..., k])."""
        lead = x.shape[:-1]
        # Routing in fp32 even under autocast, so bf16 rounding does not flip the top-k.
        with torch.autocast(device_type=x.device.type, enabled=False):
            q = F.linear(x.float(), self.query.weight.float(), self.query.bias.float())
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
            self.usage[slots.reshape(-1)] = True
        # The weighted sum of the k slots read, without materialising them ([M, k, D]).
        values = self.values.weight
        out = F.embedding_bag(slots.reshape(-1, self.k), values, mode="sum",
                              per_sample_weights=weights.reshape(-1, self.k).to(values.dtype))
        return out.view(*slots.shape[:-1], values.shape[-1])

    def slots_touched(self) -> int:
        return int(self.usage.sum())

    def reset_usage(self) -> None:
        self.usage.zero_()
