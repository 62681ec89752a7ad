"""Padding-pattern independence: move each row's real items to the front, keeping their order.

Every encoder runs on "compacted" rows (real items first, padding only at the tail). Then a
causal layer needs no padding mask at all: a real position only ever looks at earlier
positions, which are all real. Outputs are scattered back to the caller's layout afterwards,
so left padding, right padding or holes in the middle give the same outputs at real items.
"""
from __future__ import annotations

import torch


def compaction_order(real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a bool mask [B, N]: (order, inverse) with ``x.gather(1, order)`` real-first and
    ``y.gather(1, inverse)`` undoing it. Real items keep their order: the sort key
    ``is_pad * N + position`` is unique, so a plain argsort is stable (and exports to ONNX, whose
    exporter rejects ``argsort(stable=True)``)."""
    n = real.shape[1]
    key = (~real).long() * n + torch.arange(n, device=real.device)
    order = torch.argsort(key, dim=1)
    inverse = torch.argsort(order, dim=1)
    return order, inverse


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, t]]`` for x of shape [B, N] or [B, N, D]."""
    if x.dim() == 2:
        return x.gather(1, index)
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
