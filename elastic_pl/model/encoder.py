"""What an encoder is: the contract every sequence encoder implements, and its config base.

An encoder maps the embedded history to one hidden state per position, causally:
``forward(x [B, N, D], timestamps [B, N] | None) -> [B, N, D]``, where hidden[b, t] may depend
on positions <= t only. Rows arrive compacted (real items first, padding at the tail; see
padding.py), so a causal encoder needs no padding mask. Everything an encoder can do beyond that
is declared on its class (capabilities), and the rest of the package asks, never compares names:

* ``Config``: its frozen config dataclass (a subclass of :class:`EncoderConfig`): the keys under
  ``model.encoder`` besides ``name``; ``Config.needs_timestamps`` says whether ``forward`` reads
  ``timestamps`` (int64 seconds, aligned with the items).
* ``streams``: it implements ``init_state`` / ``step`` (serving one event at a time, equal to
  ``forward`` at every position); ``stream_check_length`` is a history length that reaches every
  branch of ``step`` (export checks stream that many items).
* ``fixed_export_window``: its traced graph freezes the sequence length (Python control flow over
  N), so the serving export pads inputs to one fixed window.
* ``wrap_units()``: the submodules that become their own FSDP units (``trainer.strategy=fsdp`` /
  ``fsdp2``), innermost first.
* ``learned_positions``: whether the shared embedding adds learned positions.
* ``display_name``: how tables name it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from .config import ModelConfig


@dataclass(frozen=True)
class EncoderConfig:
    """``model.encoder``: the encoder's name (registered, or ``package.module:ClassName``) and,
    in each subclass, its own keys."""

    name: str = ""

    @property
    def needs_timestamps(self) -> bool:
        return False

    def check(self, model: "ModelConfig") -> None:
        """Checks against the shared model keys (e.g. ``d_model``); raises ValueError naming the key."""

    def describe(self) -> str:
        """A variant note for result tables ('' for the standard configuration)."""
        return ""


class SequenceEncoder(nn.Module):
    """Base class of every encoder; see the module docstring for the contract."""

    Config: ClassVar[type] = EncoderConfig
    display_name: ClassVar[str] = ""
    streams: ClassVar[bool] = False
    fixed_export_window: ClassVar[bool] = False
    learned_positions: ClassVar[bool] = True

    def forward(self, x: torch.Tensor, timestamps: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def wrap_units(self) -> list[nn.Module]:
        return []

    # -- streaming (when ``streams``) --------------------------------------------------------
    def init_state(self, batch: int, device=None, dtype=torch.float32) -> dict[str, torch.Tensor]:
        """An empty per-user state: tensors with the batch as their first dimension and one
        constant value each (the serving export describes them in JSON)."""
        raise NotImplementedError(f"{type(self).__name__} does not stream")

    def step(self, x: torch.Tensor, count: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """x [B, D]: the new item's embedding at 0-based position ``count`` [B] -> (hidden [B, D],
        new state). The input state is not modified."""
        raise NotImplementedError(f"{type(self).__name__} does not stream")

    def stream_check_length(self) -> int:
        return 8
