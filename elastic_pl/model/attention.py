"""Causal self-attention for the SASRec baselines, on compacted rows (real items first).

``sasrec`` uses ``scaled_dot_product_attention(is_causal=True)`` (flash / memory-efficient
kernels); ``naive`` materialises the full [N, N] score matrix, the "standard attention" the
ELASTIC paper compares against. Same parameters, same function.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .config import ModelConfig


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: "ModelConfig", naive: bool = False):
        super().__init__()
        self.h, self.dh, self.naive = cfg.encoder.n_heads, cfg.d_model // cfg.encoder.n_heads, naive
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = (t.view(B, N, self.h, self.dh).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        if self.naive:
            scores = (q @ k.transpose(-1, -2)) * self.dh**-0.5
            causal = torch.ones(N, N, dtype=torch.bool, device=x.device).tril()
            out = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(out.transpose(1, 2).reshape(B, N, D))
