"""Full-ranking evaluation: the target's rank over the whole catalog, and sum-state metrics.

Protocol (README "Public datasets"): every item 1..V of the catalog is scored (no sampled
negatives), items of the user's history other than the target are excluded when ``seen`` is
given, and ties count against the target (pessimistic rank). Metrics are reduced as sums and a
user count, so the state is O(1) per rank and the result does not depend on how users are split
across ranks or batches.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["target_ranks", "FullRankingMetrics"]


def _exclusion_ids(target: Tensor, seen: Tensor | None) -> Tensor:
    """Ids never counted against the target: the target itself and the distinct seen ids.

    Returns int64 [B, 1 + M] where column 0 is the target and every other entry is either a
    distinct seen id different from the target or 0 (padding, never inside a chunk since chunks
    start at item 1). Deduplicating here lets each chunk subtract a plain count.
    """
    target = target.long().unsqueeze(1)
    if seen is None or seen.numel() == 0:
        return target
    seen = seen.long().sort(dim=1).values
    dup = torch.zeros_like(seen, dtype=torch.bool)
    dup[:, 1:] = seen[:, 1:] == seen[:, :-1]
    # The target stays ranked even if it was consumed before (repeat consumption): it is
    # excluded from the "seen" list here because column 0 already handles it.
    seen = seen.masked_fill(dup | (seen == target), 0)
    return torch.cat([target, seen], dim=1)


@torch.no_grad()
def target_ranks(
    query: Tensor,
    items: Tensor,
    target: Tensor,
    seen: Tensor | None = None,
    chunk_size: int = 65536,
) -> Tensor:
    """1-based pessimistic rank of ``target`` among items 1..V, scored by ``query @ items.T``.

    Args:
        query: [B, D] user representations (any float dtype; scored in fp32).
        items: [V + 1, D] item embeddings; row 0 is padding and never ranked.
        target: int64 [B] target ids in 1..V (0 marks a padding sample; its rank is 0).
        seen: int64 [B, M] history ids, 0-padded, duplicates allowed, or None for no
            filtering. Seen items other than the target are excluded from the ranking.
        chunk_size: items scored at a time; memory is O(B * chunk_size).

    Returns:
        int64 [B]: 1 + #{j in 1..V, j != target, j not in seen, score_j >= score_target}.
    """
    if query.dim() != 2 or items.dim() != 2 or query.shape[1] != items.shape[1]:
        raise ValueError(f"bad shapes: query {tuple(query.shape)}, items {tuple(items.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    num_rows = items.shape[0]  # V + 1
    query = query.float()
    target = target.long()
    # Target score: once, in fp32, through a matmul like the chunk scores below.
    target_emb = items.index_select(0, target).float()
    target_score = torch.bmm(query.unsqueeze(1), target_emb.unsqueeze(2)).reshape(-1, 1)

    excl = _exclusion_ids(target, seen)
    count = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    for start in range(1, num_rows, chunk_size):
        end = min(start + chunk_size, num_rows)
        scores = query @ items[start:end].float().T  # [B, C] fp32
        ge = scores >= target_score
        count += ge.sum(dim=1)
        # Subtract excluded ids that fall into this chunk and beat the target. Gathering from
        # the same `ge` keeps the exclusion consistent with what was counted.
        in_chunk = (excl >= start) & (excl < end)
        local = (excl - start).clamp(0, end - start - 1)
        count -= (ge.gather(1, local) & in_chunk).sum(dim=1)
    ranks = count + 1
    return torch.where(target > 0, ranks, torch.zeros_like(ranks))


class FullRankingMetrics(Metric):
    """HR@k, NDCG@k and MRR from per-user target ranks, kept as float64 sums plus a count.

    ``update(ranks, valid)`` takes the 1-based ranks of ``target_ranks`` and a mask of real
    users (False on padding samples, whose rank is ignored). Valid rows must have rank >= 1.
    With one relevant item, NDCG@k = 1 / log2(rank + 1) if rank <= k else 0. The states are
    summed across processes, so every user counts once however users are sharded.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(
        self,
        ks_hr: Sequence[int] = (1, 5, 10, 20, 50),
        ks_ndcg: Sequence[int] = (5, 10, 20, 50),
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.ks_hr = tuple(int(k) for k in ks_hr)
        self.ks_ndcg = tuple(int(k) for k in ks_ndcg)
        if any(k < 1 for k in self.ks_hr + self.ks_ndcg):
            raise ValueError("all k must be >= 1")
        f64 = torch.float64
        self.add_state("hits", torch.zeros(len(self.ks_hr), dtype=f64), dist_reduce_fx="sum")
        self.add_state("ndcg", torch.zeros(len(self.ks_ndcg), dtype=f64), dist_reduce_fx="sum")
        self.add_state("rr", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, ranks: Tensor, valid: Tensor) -> None:
        ranks = ranks.reshape(-1).to(self.hits.device)
        valid = valid.reshape(-1).to(device=ranks.device, dtype=torch.bool)
        if ranks.shape != valid.shape:
            raise ValueError(f"ranks {tuple(ranks.shape)} and valid {tuple(valid.shape)} differ")
        # Masking instead of boolean indexing: no host sync on accelerators.
        r = ranks.to(torch.float64).clamp(min=1.0)
        zero = torch.zeros_like(r)
        for i, k in enumerate(self.ks_hr):
            self.hits[i] += ((ranks <= k) & valid).sum()
        gain = 1.0 / torch.log2(r + 1.0)
        for i, k in enumerate(self.ks_ndcg):
            self.ndcg[i] += torch.where((ranks <= k) & valid, gain, zero).sum()
        self.rr += torch.where(valid, 1.0 / r, zero).sum()
        self.count += valid.sum()

    def compute(self) -> dict[str, Tensor]:
        n = self.count.to(torch.float64)  # 0 users -> NaN metrics, count 0
        out: dict[str, Tensor] = {}
        for i, k in enumerate(self.ks_hr):
            out[f"hr@{k}"] = self.hits[i] / n
        for i, k in enumerate(self.ks_ndcg):
            out[f"ndcg@{k}"] = self.ndcg[i] / n
        out["mrr"] = self.rr / n
        out["count"] = self.count.clone()
        return out

