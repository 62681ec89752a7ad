"""A deliberately plain O(N^2) reference of the HSTU encoder, with explicit masks.

It works on the caller's padded layout (any padding pattern), numbering real items 0, 1, 2, ...
per row; query t sees real keys s with number(s) <= number(t). Every piece is written out from
the layer's parameters (projection, SiLU attention with both biases, U-gating), without the
model's compaction or tiling. Used only by tests.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .hstu import HSTUEncoder


def reference_hstu(encoder: HSTUEncoder, x: torch.Tensor, real: torch.Tensor,
                   timestamps: torch.Tensor | None = None) -> torch.Tensor:
    """x [B, N, D], real [B, N] bool, timestamps [B, N] int64 -> [B, N, D], zero at padding.
    Eval mode (no dropout)."""
    B, N, D = x.shape
    number = torch.cumsum(real.long(), dim=1) - 1
    allowed = real[:, :, None] & real[:, None, :] & (number[:, None, :] <= number[:, :, None])  # [B, t, s]
    for layer in encoder.layers:
        H, dqk, dv = layer.h, layer.dqk, layer.dv
        normed = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-6)
        u, v, q, k = F.silu(normed @ layer.uvqk.weight.T).split([H * dv, H * dv, H * dqk, H * dqk], dim=-1)
        scores = torch.einsum("bthd,bshd->bhts", q.view(B, N, H, dqk), k.view(B, N, H, dqk))
        bias = torch.zeros(B, N, N)
        if layer.pos_w is not None:
            dist = (number[:, :, None] - number[:, None, :]).clamp(0, layer.pos_w.shape[0] - 1)
            bias = bias + layer.pos_w[dist]
        if layer.time_w is not None:
            dt = (timestamps[:, :, None] - timestamps[:, None, :]).abs().clamp(min=1).double()
            buckets = torch.floor(torch.log(dt) / layer.scale).clamp(0, layer.time_w.shape[0] - 1).long()
            bias = bias + layer.time_w[buckets]
        weights = F.silu(scores + bias[:, None]) / layer.length
        weights = torch.where(allowed[:, None], weights, torch.zeros(()))
        attn = torch.einsum("bhts,bshd->bthd", weights, v.view(B, N, H, dv)).reshape(B, N, H * dv)
        attn = (attn - attn.mean(-1, keepdim=True)) / torch.sqrt(attn.var(-1, unbiased=False, keepdim=True) + 1e-6)
        x = x + (u * attn) @ layer.out.weight.T + layer.out.bias
        x = x * real[..., None]
    return x

