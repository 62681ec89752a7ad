"""Item embedding (shared with the output head) plus learned positions."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .config import ModelConfig


class ItemEmbedding(nn.Module):
    """``items [B, N] -> x [B, N, D]``. Row 0 of the item table is padding (kept at zero).

    The position of an item is its index among the row's real items (0 = oldest), so it does not
    depend on how much padding the batch added; positions past ``max_positions - 1`` share the
    last embedding, which keeps streaming (``step``) and the full forward pass identical for
    histories of any length. With ``cfg.positions == "newest"`` the index counts back from the
    row's newest item instead (newest = ``max_positions - 1``, items further back than the table
    share index 0): the item a prediction is made from always has the same position, as in
    SASRec's left-padded windows, but an item's position changes as the history grows, so such a
    model does not stream. With ``positions=False`` (an encoder that orders the sequence
    itself, e.g. a recurrent one) there is no position table.
    """

    def __init__(self, cfg: "ModelConfig", positions: bool = True):
        super().__init__()
        self.items = nn.Embedding(cfg.num_items + 1, cfg.d_model, padding_idx=0)
        self.positions = nn.Embedding(cfg.max_positions, cfg.d_model) if positions else None
        self.from_newest = cfg.positions == "newest"
        self.dropout = nn.Dropout(cfg.dropout)
        nn.init.normal_(self.items.weight, std=0.02)
        if self.positions is not None:
            nn.init.normal_(self.positions.weight, std=0.02)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def position_index(self, real: torch.Tensor) -> torch.Tensor:
        """[B, N] bool -> [B, N] position indices (any value at padding)."""
        n = self.positions.num_embeddings
        if self.from_newest:  # real items at or after each index, counted from the row's end
            after = torch.flip(torch.cumsum(torch.flip(real.long(), [1]), dim=1), [1])
            return (n - after).clamp(0, n - 1)
        return (torch.cumsum(real.long(), dim=1) - 1).clamp(0, n - 1)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        x = self.items(items)
        if self.positions is not None:
            x = x + self.positions(self.position_index(items != 0))
        return self.dropout(x)

    def embed_at(self, items: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """One new item per user [B] at its position ``count`` [B] (serving)."""
        x = self.items(items)
        if self.positions is not None:
            x = x + self.positions(count.clamp(max=self.positions.num_embeddings - 1))
        return self.dropout(x)
