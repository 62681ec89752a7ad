"""Pre-norm transformer blocks around a sequence mixer, shared by ELASTIC and the SASRec baselines.

A transformer encoder differs from another only in its mixer (``make_mixer``): LDA for ELASTIC,
causal self-attention for SASRec and the naive baseline. Same blocks, norms and widths, so the
comparisons are like for like.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .encoder import EncoderConfig, SequenceEncoder

if TYPE_CHECKING:
    from .config import ModelConfig


@dataclass(frozen=True)
class TransformerConfig(EncoderConfig):
    n_heads: int = 2  # H; head width dh = d_model / H
    ffn_mult: int = 4  # FFN hidden width = ffn_mult * d_model

    def __post_init__(self) -> None:
        need(self, self.n_heads >= 1, "n_heads", "must be >= 1")
        need(self, self.ffn_mult >= 1, "ffn_mult", "must be >= 1")

    def check(self, model: "ModelConfig") -> None:
        need(self, model.d_model % self.n_heads == 0, "n_heads",
             f"must divide model.d_model={model.d_model}")


def need(cfg, cond: bool, name: str, msg: str) -> None:
    """Raise ValueError naming ``model.encoder.<name>`` unless ``cond``."""
    if not cond:
        raise ValueError(f"model.encoder.{name}: {msg} (got {getattr(cfg, name)!r})")


class FeedForward(nn.Sequential):
    def __init__(self, cfg: "ModelConfig"):
        hidden = cfg.encoder.ffn_mult * cfg.d_model
        super().__init__(nn.Linear(cfg.d_model, hidden), nn.GELU(), nn.Linear(hidden, cfg.d_model))


class Block(nn.Module):
    """``x = x + mix(norm(x))``, ``x = x + ffn(norm(x))``."""

    def __init__(self, cfg: "ModelConfig", mixer: nn.Module):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.mix = mixer
        self.ffn = FeedForward(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.mix(self.norm1(x)))
        return x + self.dropout(self.ffn(self.norm2(x)))

    def step(self, x: torch.Tensor, count: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        mixed, state = self.mix.step(self.norm1(x), count, state)
        x = x + self.dropout(mixed)
        return x + self.dropout(self.ffn(self.norm2(x))), state


class TransformerEncoder(SequenceEncoder):
    """L blocks and a final norm, on compacted rows [B, N, D]; subclasses choose the mixer."""

    def __init__(self, cfg: "ModelConfig"):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg, self.make_mixer(cfg)) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)

    def make_mixer(self, cfg: "ModelConfig") -> nn.Module:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, timestamps: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def wrap_units(self) -> list[nn.Module]:
        return list(self.blocks)
