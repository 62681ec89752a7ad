"""In-batch candidates across data-parallel ranks: every rank's targets, and the global-batch mean.

A loss whose candidates are the batch's targets can take them from the whole global batch (all
ranks) instead of this rank's share. Only the target *ids* travel: at loss time every rank holds
the whole item matrix (a DDP replica; FSDP keeps the table unsharded after forward for the loss),
so each rank reads the candidates' rows from its own copy. Gathering embeddings instead would
send [M_total, D] floats forward and the same back in backward for identical values and, after
the strategy averages the gradients, identical updates.

Without an initialized process group, or with one rank, every function here is the identity.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F


def world_size() -> int:
    """Ranks taking part (1 without an initialized process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


@dataclass(frozen=True)
class GlobalBatch:
    """``targets`` int64 [M_total]: every rank's targets in rank order; ``world``: the number of
    ranks."""

    targets: torch.Tensor
    world: int

    @property
    def rows(self) -> int:
        return self.targets.numel()


def gather_targets(target: torch.Tensor) -> GlobalBatch:
    """All ranks' targets [M_r] (any M_r per rank) -> :class:`GlobalBatch`. Two collectives: the
    row counts, then the ids padded to the longest rank (pad 0, never a target, dropped here)."""
    world = world_size()
    if world == 1:
        return GlobalBatch(target, 1)
    count = torch.tensor([target.numel()], dtype=torch.long, device=target.device)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    padded = F.pad(target, (0, max(sizes) - target.numel()))
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return GlobalBatch(torch.cat([p[:n] for p, n in zip(parts, sizes)]), world)


def global_mean(per_row: torch.Tensor, batch: GlobalBatch) -> torch.Tensor:
    """The mean of the per-row losses over the *global* batch, as this rank's loss.

    ``per_row`` [M_r] holds this rank's rows. The value returned is the global mean on every
    rank (one scalar all-reduce). Its gradient is that of ``world * sum(per_row) / M_total``:
    DDP and FSDP average gradients over ranks, so the update is exactly the gradient of the global
    mean, also when ranks hold different numbers of rows (token-budget batches)."""
    if batch.world == 1:
        return per_row.mean()
    local = per_row.sum() * (batch.world / batch.rows)
    total = per_row.detach().sum()
    dist.all_reduce(total)
    return local + (total / batch.rows - local.detach())
