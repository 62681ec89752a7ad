"""ELASTIC: transformer blocks whose mixer is Linear Dispatcher Attention (lda.py), each layer
with its own interest memory (memory.py). O(N) in the history length, and it streams: a user's
serving state is O(L (E + 2C) D) numbers whatever the history length.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .lda import LinearDispatcherAttention
from .memory import QUERY_NORMS
from .transformer import TransformerConfig, TransformerEncoder, need


@dataclass(frozen=True)
class ElasticConfig(TransformerConfig):
    """Notation: E experts, C chunk size; the interest memory has memory_subkeys**2 slots."""

    name: str = "elastic"
    # linear dispatcher attention
    num_experts: int = 16  # E
    chunk_size: int = 64  # C
    # interest memory retrieval (product-key memory of memory_subkeys**2 slots)
    use_memory: bool = True
    memory_subkeys: int = 64  # n; S = n*n slots
    memory_topk: int = 8  # k per half and overall
    memory_key_dim: int = 32  # query/key width (split into two halves)
    memory_query_norm: str = "none"  # none | layernorm (per query half) | batchnorm (eval: running stats)

    def __post_init__(self) -> None:
        super().__post_init__()
        need(self, self.num_experts >= 1, "num_experts", "must be >= 1")
        need(self, self.chunk_size >= 1, "chunk_size", "must be >= 1")
        need(self, self.memory_subkeys >= 1, "memory_subkeys", "must be >= 1")
        need(self, 1 <= self.memory_topk <= self.memory_subkeys, "memory_topk",
             f"must be in [1, memory_subkeys={self.memory_subkeys}]")
        need(self, self.memory_key_dim >= 2 and self.memory_key_dim % 2 == 0, "memory_key_dim",
             "must be an even number >= 2")
        need(self, self.memory_query_norm in QUERY_NORMS, "memory_query_norm",
             f"must be one of {', '.join(QUERY_NORMS)}")
        narrowest = QUERY_NORMS[self.memory_query_norm].min_key_dim
        need(self, self.memory_key_dim >= narrowest, "memory_query_norm",
             f"needs memory_key_dim >= {narrowest} (memory_key_dim is {self.memory_key_dim})")

    @property
    def memory_slots(self) -> int:
        return self.memory_subkeys**2

    def describe(self) -> str:
        return "" if self.use_memory else "without memory"


class ElasticEncoder(TransformerEncoder):
    Config = ElasticConfig
    display_name = "ELASTIC"
    streams = True
    # LDA's prefix scan runs ceil(log2(#chunks)) steps: a loop that tracing freezes at one length
    fixed_export_window = True

    def make_mixer(self, cfg) -> nn.Module:
        return LinearDispatcherAttention(cfg)

    def wrap_units(self) -> list[nn.Module]:
        memories = [b.mix.memory for b in self.blocks if b.mix.memory is not None]
        return [*memories, *self.blocks]

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> dict[str, torch.Tensor]:
        state = {}
        for i, block in enumerate(self.blocks):
            for name, t in block.mix.init_state(batch, device, dtype).items():
                state[f"{i}.{name}"] = t
        return state

    def step(self, x: torch.Tensor, count: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        new_state = {}
        for i, block in enumerate(self.blocks):
            prefix = f"{i}."
            layer = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            x, layer = block.step(x, count, layer)
            new_state.update({prefix + k: v for k, v in layer.items()})
        return self.norm(x), new_state

    def stream_check_length(self) -> int:
        return 2 * self.blocks[0].mix.c + 3  # crosses two chunk boundaries
