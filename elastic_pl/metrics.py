"""Full-ranking evaluation: the target's rank over the whole catalog, and sum-state metrics.

Protocol (README "Public datasets"): every item 1..V of the catalog is scored (no sampled
negatives), items of the user's history other than the target are excluded when ``seen`` is
given, and ties count against the target (pessimistic rank). Metrics are reduced as sums and a
user count, so the state is O(1) per rank and the result does not depend on how users are split
across ranks or batches.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["target_ranks", "ranks_from_scores", "FullRankingMetrics"]


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
        chunk_size: items scored at a time; memory is O(B * chunk_size) (CPU: O(256 * chunk_size)).

    Returns:
        int64 [B]: 1 + #{j in 1..V, j != target, j not in seen, score_j >= score_target}.
    """
    if query.dim() != 2 or items.dim() != 2 or query.shape[1] != items.shape[1]:
        raise ValueError(f"bad shapes: query {tuple(query.shape)}, items {tuple(items.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    # detached: the user tiles may run in worker threads, where torch.no_grad() does not hold
    query, items = query.detach().float(), items.detach()
    target = target.long()
    # Target score: once, in fp32, through a matmul like the chunk scores below.
    target_emb = items.index_select(0, target).float()
    target_score = torch.bmm(query.unsqueeze(1), target_emb.unsqueeze(2)).reshape(-1, 1)

    excl = _exclusion_ids(target, seen)
    count_fn = _count_tiled if query.device.type == "cpu" else _count_chunked
    ranks = count_fn(query, items, target_score, excl, chunk_size) + 1
    return torch.where(target > 0, ranks, torch.zeros_like(ranks))


@torch.no_grad()
def ranks_from_scores(scores: Tensor, target: Tensor, seen: Tensor | None = None) -> Tensor:
    """:func:`target_ranks` for scores given whole: ``scores`` [B, V + 1] (column 0 is padding,
    never ranked), for scorers that are not a dot product (the baselines). The target's score is
    read from the same matrix, so ties are exact."""
    scores, target = scores.float(), target.long()
    target_score = scores.gather(1, target[:, None])
    ge = scores >= target_score
    ge[:, 0] = False
    count = ge.sum(dim=1) - _excluded_hits(ge, _exclusion_ids(target, seen), 0, scores.shape[1])
    return torch.where(target > 0, count + 1, torch.zeros_like(count))


def _count_chunked(query: Tensor, items: Tensor, target_score: Tensor, excl: Tensor, chunk_size: int) -> Tensor:
    """#{j in 1..V not excluded: score_j >= target score}, one [B, chunk] score matrix at a time
    (accelerators; and the plain reference of :func:`_count_tiled`)."""
    num_rows = items.shape[0]
    count = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    for start in range(1, num_rows, chunk_size):
        end = min(start + chunk_size, num_rows)
        scores = query @ items[start:end].float().T  # [B, C] fp32
        ge = scores >= target_score
        count += ge.sum(dim=1)
        count -= _excluded_hits(ge, excl, start, end)
    return count


def _excluded_hits(ge: Tensor, excl: Tensor, start: int, end: int) -> Tensor:
    """Excluded ids in [start, end) that beat the target. Gathering from the same ``ge`` that was
    counted keeps the exclusion consistent with the count."""
    in_chunk = (excl >= start) & (excl < end)
    local = (excl - start).clamp(0, end - start - 1)
    return (ge.gather(1, local) & in_chunk).sum(dim=1)


# A [USER_TILE, ITEM_TILE] fp32 score tile (2 MB) stays in a core's cache, so comparing and
# counting it costs little next to the matmul; over a [B, 65536] matrix in memory they cost
# 2-4x the matmul on CPU (at 10^7 items the count, not the matmul, dominated).
USER_TILE, ITEM_TILE = 256, 2048


def _count_tiled(query: Tensor, items: Tensor, target_score: Tensor, excl: Tensor, chunk_size: int) -> Tensor:
    """:func:`_count_chunked` in cache-sized tiles (CPU). Per user tile the comparisons of one
    chunk are kept ([USER_TILE, chunk] bool) for the exclusions; memory O(threads x USER_TILE x
    chunk). With several intra-op threads the user tiles run in parallel, one thread each: ops
    this small lose more to splitting than they gain (and far more on a busy machine)."""
    tiles = [slice(b0, b0 + USER_TILE) for b0 in range(0, query.shape[0], USER_TILE)]
    intra_op = torch.get_num_threads()
    threads = min(intra_op, len(tiles))
    inference = torch.is_inference_mode_enabled()

    def user_tile(sl: slice) -> Tensor:
        # grad and inference modes are per thread: the caller's hold in the workers too
        with torch.inference_mode(inference), torch.no_grad():
            return _count_user_tile(query[sl], items, target_score[sl], excl[sl], chunk_size)

    if threads <= 1:
        return torch.cat([user_tile(sl) for sl in tiles])
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            return torch.cat(list(pool.map(user_tile, tiles)))
    finally:
        torch.set_num_threads(intra_op)


def _count_user_tile(q: Tensor, items: Tensor, t_score: Tensor, ex: Tensor, chunk_size: int) -> Tensor:
    num_rows, tile_w = items.shape[0], min(chunk_size, ITEM_TILE)
    acc = torch.zeros(q.shape[0], dtype=torch.long)
    scores = torch.empty(q.shape[0], tile_w)
    for start in range(1, num_rows, chunk_size):
        end = min(start + chunk_size, num_rows)
        ge = torch.empty(q.shape[0], end - start, dtype=torch.bool)
        for lo in range(start, end, tile_w):
            hi = min(lo + tile_w, end)
            tile = scores if hi - lo == tile_w else torch.empty(q.shape[0], hi - lo)
            torch.mm(q, items[lo:hi].float().T, out=tile)
            tile_ge = ge[:, lo - start:hi - start]
            torch.ge(tile, t_score, out=tile_ge)
            acc += tile_ge.sum(dim=1)
        acc -= _excluded_hits(ge, ex, start, end)
    return acc


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

