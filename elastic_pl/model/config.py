"""The model's whole configuration: one frozen dataclass (like nanoGPT's GPTConfig)."""
from __future__ import annotations

from dataclasses import dataclass

ENCODERS = ("elastic", "sasrec", "naive")
LOSSES = ("sampled_softmax", "full_softmax", "bce")
NEGATIVES = ("uniform", "in_batch")


@dataclass(frozen=True)
class ModelConfig:
    """Notation: V items, D width, H heads, L layers, E experts, C chunk size.

    ``encoder`` selects ELASTIC (linear dispatcher attention) or the SASRec baselines
    (``sasrec``: causal scaled_dot_product_attention; ``naive``: the same transformer with
    materialised attention). Everything else is shared so comparisons are like for like.
    """

    num_items: int = 1000  # V; item ids 1..V, 0 = padding
    max_positions: int = 200  # learned positions; later positions reuse the last one
    d_model: int = 64  # D
    n_heads: int = 2  # H
    n_layers: int = 2  # L
    ffn_mult: int = 4
    dropout: float = 0.1
    encoder: str = "elastic"
    # linear dispatcher attention
    num_experts: int = 16  # E
    chunk_size: int = 64  # C
    # interest memory retrieval (product-key memory of memory_subkeys**2 slots)
    use_memory: bool = True
    memory_subkeys: int = 64  # n; S = n*n slots
    memory_topk: int = 8  # k per half and overall
    memory_key_dim: int = 32  # query/key width (split into two halves)
    # loss
    loss: str = "sampled_softmax"
    negatives: str = "uniform"
    num_negatives: int = 256
    temperature: float = 1.0
    l2_normalize: bool = False

    def __post_init__(self) -> None:
        def need(cond: bool, name: str, msg: str) -> None:
            if not cond:
                raise ValueError(f"ModelConfig.{name}: {msg} (got {getattr(self, name)!r})")

        need(self.num_items >= 1, "num_items", "must be >= 1")
        need(self.max_positions >= 1, "max_positions", "must be >= 1")
        need(self.d_model >= 1, "d_model", "must be >= 1")
        need(self.n_heads >= 1, "n_heads", "must be >= 1")
        need(self.d_model % self.n_heads == 0, "d_model", f"must be divisible by n_heads={self.n_heads}")
        need(self.n_layers >= 1, "n_layers", "must be >= 1")
        need(self.ffn_mult >= 1, "ffn_mult", "must be >= 1")
        need(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        need(self.encoder in ENCODERS, "encoder", f"must be one of {ENCODERS}")
        need(self.num_experts >= 1, "num_experts", "must be >= 1")
        need(self.chunk_size >= 1, "chunk_size", "must be >= 1")
        need(self.memory_subkeys >= 1, "memory_subkeys", "must be >= 1")
        need(1 <= self.memory_topk <= self.memory_subkeys, "memory_topk",
             f"must be in [1, memory_subkeys={self.memory_subkeys}]")
        need(self.memory_key_dim >= 2 and self.memory_key_dim % 2 == 0, "memory_key_dim",
             "must be an even number >= 2")
        need(self.loss in LOSSES, "loss", f"must be one of {LOSSES}")
        need(self.negatives in NEGATIVES, "negatives", f"must be one of {NEGATIVES}")
        need(self.num_negatives >= 1, "num_negatives", "must be >= 1")
        need(self.temperature > 0, "temperature", "must be > 0")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def memory_slots(self) -> int:
        return self.memory_subkeys**2
