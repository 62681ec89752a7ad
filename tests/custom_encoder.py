"""A user's own encoder, outside the package: selected by dotted path, nothing registers it.

    elastic-pl train --config C model.encoder.name=tests.custom_encoder:CausalMeanEncoder

hidden[t] = MLP(mean of the inputs at positions 0..t). It streams (the state is the running sum;
``step`` receives the position), so ``elastic-pl export`` writes its ``step`` too. docs/EXTENDING.md
walks through it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from elastic_pl.model.encoder import EncoderConfig, SequenceEncoder


@dataclass(frozen=True)
class CausalMeanConfig(EncoderConfig):
    hidden_mult: int = 2  # the MLP's hidden width, in multiples of model.d_model

    def __post_init__(self) -> None:
        if self.hidden_mult < 1:
            raise ValueError(f"model.encoder.hidden_mult: must be >= 1 (got {self.hidden_mult})")


class CausalMeanEncoder(SequenceEncoder):
    Config = CausalMeanConfig
    display_name = "causal mean"
    streams = True

    def __init__(self, cfg):  # cfg: the whole ModelConfig; cfg.encoder is a CausalMeanConfig
        super().__init__()
        hidden = cfg.encoder.hidden_mult * cfg.d_model
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, hidden), nn.GELU(), nn.Linear(hidden, cfg.d_model))

    def forward(self, x: torch.Tensor, timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N, D] (compacted rows) -> [B, N, D]."""
        count = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)
        return self.mlp(torch.cumsum(x, dim=1) / count[:, None])

    def wrap_units(self) -> list[nn.Module]:
        return [self.mlp]

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> dict[str, torch.Tensor]:
        width = self.mlp[0].in_features
        return {"mean.sum": torch.zeros(batch, width, device=device, dtype=dtype)}

    def step(self, x: torch.Tensor, count: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        total = state["mean.sum"] + x
        return self.mlp(total / (count + 1).to(x.dtype)[:, None]), {"mean.sum": total}
