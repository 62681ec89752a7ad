"""The recommender: item embedding -> encoder -> hidden states scored against the item table.

The encoder and the loss are whatever ``cfg.encoder.name`` / ``cfg.loss.name`` name in the
registries (registry.py); what the model can do beyond encoding (stream, read timestamps) is
what its encoder declares (encoder.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .embedding import ItemEmbedding
from .encoder import SequenceEncoder
from .padding import compaction_order, gather_rows
from .registry import ENCODERS, LOSSES


class SequentialRecommender(nn.Module):
    """``forward(items [B, N], timestamps [B, N] | None) -> hidden [B, N, D]``; hidden[b, t]
    predicts the item after t.

    Any padding pattern (0 = padding) is accepted; outputs at padding positions are zero.
    ``timestamps`` (int64 seconds aligned with ``items``, any value at padding) are needed only by
    an encoder whose config says ``needs_timestamps``. See docs/ARCHITECTURE.md for the contract.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        encoder_cls = ENCODERS.get(cfg.encoder.name)
        self.embedding = ItemEmbedding(cfg, positions=encoder_cls.learned_positions)
        self.encoder: SequenceEncoder = encoder_cls(cfg)
        self.loss_fn = LOSSES.get(cfg.loss.name)(cfg.loss)

    @property
    def streams(self) -> bool:
        """Whether ``init_state`` / ``step`` exist: the encoder's capability, with positions that
        count from the oldest item (those counted from the newest move as the history grows)."""
        return type(self.encoder).streams and not self.embedding.from_newest

    def wrap_units(self) -> list[nn.Module]:
        """The encoder's FSDP units, innermost first."""
        return self.encoder.wrap_units()

    # -- encoding -----------------------------------------------------------------------------
    def forward(self, items: torch.Tensor, last_only: bool = False,
                timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """[B, N] -> [B, N, D]; with ``last_only`` the hidden state at each row's last real item
        [B, D] (batched inference; through ``forward`` so wrappers such as FSDP see the call)."""
        real = items != 0
        order, inverse = compaction_order(real)
        if timestamps is not None:
            timestamps = gather_rows(timestamps, order)
        elif self.cfg.encoder.needs_timestamps:
            raise ValueError(f"model.encoder.name={self.cfg.encoder.name!r}: this encoder's config reads "
                             "timestamps but the batch has none: set data.loader.timestamps=true")
        hidden = self.encoder(self.embedding(gather_rows(items, order)), timestamps)
        if last_only:
            last = (real.sum(1) - 1).clamp_min(0)  # compacted rows: the last real item is here
            return hidden[torch.arange(items.shape[0], device=items.device), last]
        return gather_rows(hidden, inverse).masked_fill(~real.unsqueeze(-1), 0.0)

    def encode_last(self, items: torch.Tensor, timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden state at each row's last real item [B, D]."""
        return self(items, last_only=True, timestamps=timestamps)

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
        return self.loss_fn(self.query(hidden[sel]), targets[sel], self.item_matrix(), generator)

    # -- serving (encoders that stream) ------------------------------------------------------
    def init_state(self, batch: int, device=None) -> dict[str, torch.Tensor]:
        """Empty per-user state: the position counter and the encoder's state (ELASTIC's is
        O(L (E + 2C) D), independent of history length)."""
        self._require_streaming()
        dtype = self.embedding.items.weight.dtype
        return {"count": torch.zeros(batch, dtype=torch.long, device=device),
                **self.encoder.init_state(batch, device, dtype)}

    def step(self, state: dict[str, torch.Tensor], items: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Append one real item per user [B] -> (hidden [B, D] equal to ``forward`` on the whole
        history at that position, new state). The input state is not modified."""
        self._require_streaming()
        count = state["count"]
        hidden, encoder_state = self.encoder.step(self.embedding.embed_at(items, count), count,
                                                  {k: v for k, v in state.items() if k != "count"})
        return hidden, {"count": count + 1, **encoder_state}

    def _require_streaming(self) -> None:
        if not self.streams:
            if self.embedding.from_newest:
                raise ValueError("model.positions: 'newest' positions move as the history grows, so the "
                                 "model does not stream (no init_state/step); use model.positions=oldest")
            raise ValueError(f"model.encoder.name: encoder {self.cfg.encoder.name!r} does not stream "
                             "(no init_state/step)")


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes of a serving state for the whole batch."""
    return sum(t.numel() * t.element_size() for t in state.values())
