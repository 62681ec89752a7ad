"""HSTU (Zhai et al. 2024, "Actions Speak Louder than Words"): a stack of sequential transduction
units, each one residual layer of

    u, v, q, k = silu(W_uvqk . norm(x))                    (one projection, split four ways)
    a = pointwise attention of q, k with relative position and time biases over v   (hstu_attention.py)
    x = x + W_o(dropout(u * norm(a)))                      (the U-gating)

``norm`` is a layer norm without learned scale. The attention is SiLU of the biased scores divided
by a constant length (``model.max_positions``), not a softmax. The time bias buckets
``ln(max(|ts_t - ts_s|, 1)) / time_bucket_scale`` and needs ``timestamps`` (int64 seconds).

Differences from the reference implementation (meta-recsys/generative-recommenders): the time
difference is taken from the query's own event (``ts_t - ts_s``), not from the time of the next
event, so the model stays causal in what the batch holds and a history alone is enough to score;
the shared item embedding adds learned positions without the ``sqrt(D)`` input scaling; the
length normaliser is ``model.max_positions`` (theirs: the padded maximum length, the same
constant in their setting); distances past ``max_positions`` share the last position bias.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import EncoderConfig, SequenceEncoder
from .hstu_attention import pointwise_attention
from .transformer import need

EPS = 1e-6


@dataclass(frozen=True)
class HSTUConfig(EncoderConfig):
    name: str = "hstu"
    n_heads: int = 2
    attention_dim: int = 0  # per-head query/key width; 0 = d_model // n_heads
    linear_dim: int = 0  # per-head value/gate width; 0 = d_model // n_heads
    position_bias: bool = True  # relative position bias (one weight per distance < max_positions)
    time_bias: bool = True  # relative time bias: needs timestamps (data.loader.timestamps=true)
    num_time_buckets: int = 128
    time_bucket_scale: float = 0.301
    attention_tile: int = 256  # queries per attention tile (memory O(tile * N)); 0 = one tile

    def __post_init__(self) -> None:
        need(self, self.n_heads >= 1, "n_heads", "must be >= 1")
        need(self, self.attention_dim >= 0, "attention_dim", "must be >= 0 (0: d_model // n_heads)")
        need(self, self.linear_dim >= 0, "linear_dim", "must be >= 0 (0: d_model // n_heads)")
        need(self, self.num_time_buckets >= 1, "num_time_buckets", "must be >= 1")
        need(self, self.time_bucket_scale > 0, "time_bucket_scale", "must be > 0")
        need(self, self.attention_tile >= 0, "attention_tile", "must be >= 0")

    @property
    def needs_timestamps(self) -> bool:
        return self.time_bias

    def check(self, model) -> None:
        if not (self.attention_dim and self.linear_dim):
            need(self, model.d_model % self.n_heads == 0, "n_heads",
                 f"must divide model.d_model={model.d_model} unless attention_dim and linear_dim are set")

    def widths(self, d_model: int) -> tuple[int, int]:
        """(per-head query/key width, per-head value/gate width)."""
        default = d_model // self.n_heads
        return self.attention_dim or default, self.linear_dim or default

    def describe(self) -> str:
        off = [name for name, on in (("position", self.position_bias), ("time", self.time_bias)) if not on]
        return f"without {' and '.join(off)} bias" if off else ""


class HSTULayer(nn.Module):
    """One sequential transduction unit on compacted rows [B, N, D]."""

    def __init__(self, cfg):
        super().__init__()
        enc: HSTUConfig = cfg.encoder
        self.h, self.d = enc.n_heads, cfg.d_model
        self.dqk, self.dv = enc.widths(cfg.d_model)
        self.length, self.scale, self.tile = cfg.max_positions, enc.time_bucket_scale, enc.attention_tile
        self.uvqk = nn.Linear(cfg.d_model, 2 * self.h * (self.dv + self.dqk), bias=False)
        self.out = nn.Linear(self.h * self.dv, cfg.d_model)
        nn.init.normal_(self.uvqk.weight, std=0.02)
        nn.init.xavier_uniform_(self.out.weight)
        self.pos_w = nn.Parameter(torch.randn(cfg.max_positions) * 0.02) if enc.position_bias else None
        self.time_w = nn.Parameter(torch.randn(enc.num_time_buckets + 1) * 0.02) if enc.time_bias else None
        self.dropout = nn.Dropout(cfg.dropout)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x [..., D] -> u, v [..., H*dv], q, k [..., H*dqk]."""
        normed = F.layer_norm(x, (self.d,), eps=EPS)  # constant shapes: the export traces them
        hv, hqk = self.h * self.dv, self.h * self.dqk
        return F.silu(self.uvqk(normed)).split([hv, hv, hqk, hqk], dim=-1)

    def gate(self, x: torch.Tensor, u: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """The U-gated output and the residual: x + W_o(dropout(u * norm(attn)))."""
        return x + self.out(self.dropout(u * F.layer_norm(attn, (self.h * self.dv,), eps=EPS)))

    def forward(self, x: torch.Tensor, timestamps: torch.Tensor | None) -> torch.Tensor:
        B, N, _ = x.shape
        u, v, q, k = self.project(x)
        attn = pointwise_attention(q.view(B, N, self.h, self.dqk), k.view(B, N, self.h, self.dqk),
                                   v.view(B, N, self.h, self.dv), timestamps, self.pos_w, self.time_w,
                                   norm=1.0 / self.length, scale=self.scale, tile=self.tile)
        return self.gate(x, u, attn.reshape(B, N, self.h * self.dv))


class HSTUEncoder(SequenceEncoder):
    Config = HSTUConfig
    display_name = "HSTU"

    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.ModuleList(HSTULayer(cfg) for _ in range(cfg.n_layers))

    def forward(self, x: torch.Tensor, timestamps: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, timestamps)
        return x

    def wrap_units(self) -> list[nn.Module]:
        return list(self.layers)
