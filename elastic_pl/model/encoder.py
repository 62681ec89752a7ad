"""Pre-norm transformer blocks around a sequence mixer (LDA or causal self-attention)."""
from __future__ import annotations

import torch
from torch import nn

from .attention import CausalSelfAttention
from .config import ModelConfig
from .lda import LinearDispatcherAttention


class FeedForward(nn.Sequential):
    def __init__(self, cfg: ModelConfig):
        hidden = cfg.ffn_mult * cfg.d_model
        super().__init__(nn.Linear(cfg.d_model, hidden), nn.GELU(), nn.Linear(hidden, cfg.d_model))


class Block(nn.Module):
    """``x = x + mix(norm(x))``, ``x = x + ffn(norm(x))``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        if cfg.encoder == "elastic":
            self.mix = LinearDispatcherAttention(cfg)
        else:
            self.mix = CausalSelfAttention(cfg, naive=cfg.encoder == "naive")
        self.ffn = FeedForward(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.mix(self.norm1(x)))
        return x + self.dropout(self.ffn(self.norm2(x)))

    def step(self, x: torch.Tensor, count: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        mixed, state = self.mix.step(self.norm1(x), count, state)
        x = x + self.dropout(mixed)
        return x + self.dropout(self.ffn(self.norm2(x))), state


class Encoder(nn.Module):
    """L blocks and a final norm, on compacted rows [B, N, D]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
