"""The recommender: item embedding -> encoder -> hidden states scored against the item table."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import losses
from .config import ModelConfig
from .embedding import ItemEmbedding
from .encoder import Encoder
from .padding import compaction_order, gather_rows


class SequentialRecommender(nn.Module):
    """``forward(items [B, N]) -> hidden [B, N, D]``; hidden[b, t] predicts the item after t.

    Any padding pattern (0 = padding) is accepted; outputs at padding positions are zero.
    See docs/ARCHITECTURE.md for the full contract.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = ItemEmbedding(cfg)
        self.encoder = Encoder(cfg)

    # -- encoding -----------------------------------------------------------------------------
    def forward(self, items: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """[B, N] -> [B, N, D]; with ``last_only`` the hidden state at each row's last real item
        [B, D] (batched inference; through ``forward`` so wrappers such as FSDP see the call)."""
        real = items != 0
        order, inverse = compaction_order(real)
        hidden = self.encoder(self.embedding(gather_rows(items, order)))
        if last_only:
            last = (real.sum(1) - 1).clamp_min(0)  # compacted rows: the last real item is here
            return hidden[torch.arange(items.shape[0], device=items.device), last]
        return gather_rows(hidden, inverse).masked_fill(~real.unsqueeze(-1), 0.0)

    def encode_last(self, items: torch.Tensor) -> torch.Tensor:
        """Hidden state at each row's last real item [B, D]."""
        return self(items, last_only=True)

    # -- scoring ------------------------------------------------------------------------------
    def query(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.normalize(hidden, dim=-1) if self.cfg.l2_normalize else hidden

    def item_matrix(self) -> torch.Tensor:
        """[V+1, D]; scores are ``query(h) @ item_matrix().T`` (row 0 = padding, never ranked)."""
        w = self.embedding.items.weight
        return F.normalize(w, dim=-1) if self.cfg.l2_normalize else w

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The configured loss over every supervised position (targets > 0)."""
        sel = targets > 0
        if not bool(sel.any()):
            raise ValueError("loss: the batch has no supervised position (all targets are 0)")
        q, y, items, cfg = self.query(hidden[sel]), targets[sel], self.item_matrix(), self.cfg
        if cfg.loss == "full_softmax":
            return losses.full_softmax(q, y, items, cfg.temperature)
        if cfg.loss == "bce":
            return losses.bce(q, y, items, cfg.temperature, generator)
        if cfg.negatives == "in_batch":
            return losses.sampled_softmax_in_batch(q, y, items, cfg.temperature)
        return losses.sampled_softmax_uniform(q, y, items, cfg.temperature, cfg.num_negatives, generator)

    # -- serving (ELASTIC only) ---------------------------------------------------------------
    def init_state(self, batch: int, device=None) -> dict[str, torch.Tensor]:
        """Empty per-user state; its size is O(L (E + 2C) D), independent of history length."""
        self._require_streaming()
        dtype = self.embedding.items.weight.dtype
        state = {"count": torch.zeros(batch, dtype=torch.long, device=device)}
        for i, block in enumerate(self.encoder.blocks):
            for name, t in block.mix.init_state(batch, device, dtype).items():
                state[f"{i}.{name}"] = t
        return state

    def step(self, state: dict[str, torch.Tensor], items: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Append one real item per user [B] -> (hidden [B, D] equal to ``forward`` on the whole
        history at that position, new state). The input state is not modified."""
        self._require_streaming()
        count = state["count"]
        x = self.embedding.embed_at(items, count)
        new_state = {"count": count + 1}
        for i, block in enumerate(self.encoder.blocks):
            prefix = f"{i}."
            layer = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            x, layer = block.step(x, count, layer)
            new_state.update({prefix + k: v for k, v in layer.items()})
        return self.encoder.norm(x), new_state

    def _require_streaming(self) -> None:
        if self.cfg.encoder != "elastic":
            raise ValueError(f"ModelConfig.encoder: step/init_state need 'elastic' (got {self.cfg.encoder!r})")


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes of a serving state for the whole batch."""
    return sum(t.numel() * t.element_size() for t in state.values())
