"""SASRec (Kang & McAuley 2018) on the shared transformer blocks, and the same model with naive
materialised attention (the "standard attention" the ELASTIC paper compares against).

Both keep only the transformer's keys (``model.encoder.n_heads``, ``ffn_mult``); the same weights
give the same function (tests/test_model.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .attention import CausalSelfAttention
from .transformer import TransformerConfig, TransformerEncoder


@dataclass(frozen=True)
class SASRecConfig(TransformerConfig):
    name: str = "sasrec"


@dataclass(frozen=True)
class NaiveAttentionConfig(TransformerConfig):
    name: str = "naive"


class SASRecEncoder(TransformerEncoder):
    """Causal ``scaled_dot_product_attention`` (flash / memory-efficient kernels where available)."""

    Config = SASRecConfig
    display_name = "SASRec"
    naive = False

    def make_mixer(self, cfg) -> nn.Module:
        return CausalSelfAttention(cfg, naive=self.naive)


class NaiveAttentionEncoder(SASRecEncoder):
    """SASRec with the full [N, N] score matrix materialised."""

    Config = NaiveAttentionConfig
    display_name = "naive attention"
    naive = True
