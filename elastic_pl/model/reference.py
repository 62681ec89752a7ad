"""A deliberately plain O(N^2) reference of Linear Dispatcher Attention, with explicit masks.

It works directly on the caller's padded layout (any padding pattern), numbering real items
0, 1, 2, ... per row; the chunk of a real item is its number // C. For each query position t it
builds, by brute force, (a) the softmax pooling of every real key older than chunk(t) - 1 onto
the expert queries, (b) the memory read and expert keys/values, and (c) one softmax over the
experts plus the real keys of chunks chunk(t) - 1 and chunk(t) up to t. Used only by tests.
"""
from __future__ import annotations

import torch

from .lda import LinearDispatcherAttention


def reference_lda(layer: LinearDispatcherAttention, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """x [B, N, D], real [B, N] bool -> [B, N, D]; rows at padding positions are zero."""
    B, N, D = x.shape
    H, E, C, dh = layer.h, layer.e, layer.c, layer.dh
    q, k, v = (layer.heads(t).float() for t in layer.qkv(x).chunk(3, dim=-1))  # [B, H, N, dh]
    number = torch.cumsum(real.long(), dim=1) - 1  # index among real items
    chunk = torch.where(real, number // C, torch.full_like(number, -10))

    # (a) dispatch: query t pools real keys s whose chunk <= chunk(t) - 2.
    pooled = real[:, None, :] & (chunk[:, None, :] <= chunk[:, :, None] - 2)  # [B, t, s]
    logits = torch.einsum("bhsd,hed->bhes", k, layer.experts.float()) * dh**-0.5  # [B, H, E, s]
    logits = logits[:, :, None].expand(B, H, N, E, N)  # [B, H, t, E, s]
    logits = logits.masked_fill(~pooled[:, None, :, None, :], float("-inf"))
    has_history = pooled.any(-1)  # [B, t]
    weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # rows with no history -> 0
    interests = torch.einsum("bhtes,bhsd->bhted", weights, v)  # [B, H, t, E, dh]
    interests = interests.permute(0, 2, 3, 1, 4).reshape(B, N, E, D)

    # (b) memory + expert keys/values, per query position.
    ke, ve = layer.expert_keys_values(interests)  # [B, t, H, E, dh]
    ke, ve = ke.float().transpose(1, 2), ve.float().transpose(1, 2)  # [B, H, t, E, dh]

    # (c) one softmax over experts and the local keys.
    local = (real[:, None, :] & (chunk[:, None, :] >= chunk[:, :, None] - 1)
             & (number[:, None, :] <= number[:, :, None]))  # [B, t, s]
    s_exp = torch.einsum("bhtd,bhted->bhte", q, ke) * dh**-0.5
    s_exp = s_exp.masked_fill(~has_history[:, None, :, None], float("-inf"))
    s_loc = torch.einsum("bhtd,bhsd->bhts", q, k) * dh**-0.5
    s_loc = s_loc.masked_fill(~local[:, None], float("-inf"))
    attn = torch.softmax(torch.cat([s_exp, s_loc], dim=-1), dim=-1).nan_to_num(0.0)
    out = torch.einsum("bhte,bhted->bhtd", attn[..., :E], ve) + attn[..., E:] @ v
    out = layer.out(out.transpose(1, 2).reshape(B, N, D).to(x.dtype))
    return out * real[..., None]
