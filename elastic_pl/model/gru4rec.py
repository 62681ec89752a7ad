"""GRU4Rec (Hidasi et al. 2016): a stack of GRU layers over the item embeddings.

It streams like ELASTIC, through the same ``init_state`` / ``step`` interface: its serving state is
the GRU's hidden state per layer, [L, D] per user, whatever the history length, and ``step``
equals ``forward`` at every position. The recurrence orders the sequence itself, so the shared
embedding adds no learned positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .encoder import EncoderConfig, SequenceEncoder


@dataclass(frozen=True)
class GRU4RecConfig(EncoderConfig):
    """No keys of its own: width ``model.d_model``, ``model.n_layers`` layers, ``model.dropout``
    between layers and on the output."""

    name: str = "gru4rec"


class GRU4RecEncoder(SequenceEncoder):
    Config = GRU4RecConfig
    display_name = "GRU4Rec"
    streams = True
    learned_positions = False

    def __init__(self, cfg):
        super().__init__()
        self.gru = nn.GRU(cfg.d_model, cfg.d_model, num_layers=cfg.n_layers, batch_first=True,
                          dropout=cfg.dropout if cfg.n_layers > 1 else 0.0)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """Compacted rows: the padding at each row's tail comes after every real item, so it
        never reaches a real position's output."""
        return self.dropout(self.gru(x)[0])

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> dict[str, torch.Tensor]:
        layers, width = self.gru.num_layers, self.gru.hidden_size
        return {"gru.h": torch.zeros(batch, layers, width, device=device, dtype=dtype)}  # batch first

    def step(self, x: torch.Tensor, count: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        h0 = state["gru.h"].transpose(0, 1).contiguous()  # nn.GRU wants [L, B, D]
        out, h = self.gru(x.unsqueeze(1), h0)
        return self.dropout(out[:, 0]), {"gru.h": h.transpose(0, 1)}
