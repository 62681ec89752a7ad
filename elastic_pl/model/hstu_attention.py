"""HSTU's pointwise attention: SiLU of the scores plus relative biases, normalised by a length.

For a query at position t and a key at s <= t (positions are indices among real items, rows are
compacted): ``a[t, s] = silu(q_t . k_s + pos_w[t - s] + time_w[bucket(ts_t - ts_s)]) / n`` and
``out_t = sum_s a[t, s] v_s``. There is no softmax, so no running maximum is needed: tiles of
queries are exact on their own. The biases are shared by the heads.

Memory: one [B, H, N, N] score tensor materialised (plus autograd's copies) is what limits HSTU at
long N. So queries are processed in tiles of ``tile`` rows against the keys up to the tile's end,
each tile under activation checkpointing while training: peak memory O(B H tile N) instead of
O(B H N^2), and the triangle above the diagonal is never computed. One tile (N <= tile) is the
plain computation; so is a traced (exported) graph, since tracing would freeze the tile loop at the
example's length.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def time_buckets(dt: torch.Tensor, num_buckets: int, scale: float) -> torch.Tensor:
    """int64 time differences -> buckets ``floor(ln(max(|dt|, 1)) / scale)`` clamped to
    [0, num_buckets] (log-spaced: scale 0.301 gives about 3 buckets per factor of 2.5)."""
    return (torch.log(dt.abs().clamp(min=1).double()) / scale).long().clamp(0, num_buckets)


def relative_bias(start: int, length: int, keys: int, ts_q: torch.Tensor | None, ts_k: torch.Tensor | None,
                  pos_w: torch.Tensor | None, time_w: torch.Tensor | None, scale: float) -> torch.Tensor | None:
    """[B or 1, length, keys]: the bias of queries start .. start+length-1 against keys 0 .. keys-1
    (None when both tables are off). Distances past the position table share its last entry."""
    bias = None
    if pos_w is not None:
        t = torch.arange(start, start + length, device=pos_w.device)
        dist = (t[:, None] - torch.arange(keys, device=pos_w.device)[None, :]).clamp(0, pos_w.shape[0] - 1)
        bias = pos_w[dist].unsqueeze(0)
    if time_w is not None:
        by_time = time_w[time_buckets(ts_q[:, :, None] - ts_k[:, None, :], time_w.shape[0] - 1, scale)]
        bias = by_time if bias is None else bias + by_time
    return bias


def _tile(q, k, v, ts_q, ts_k, pos_w, time_w, *, start: int, norm: float, scale: float):
    """q [B, T, H, dqk] at positions start.., k [B, S, H, dqk], v [B, S, H, dv] -> [B, T, H, dv]."""
    T, S = q.shape[1], k.shape[1]
    scores = torch.einsum("bthd,bshd->bhts", q, k)
    bias = relative_bias(start, T, S, ts_q, ts_k, pos_w, time_w, scale)
    if bias is not None:
        scores = scores + bias.unsqueeze(1).to(scores.dtype)
    causal = torch.arange(S, device=q.device)[None, :] <= torch.arange(start, start + T, device=q.device)[:, None]
    weights = (F.silu(scores) * norm).masked_fill(~causal, 0.0)
    return torch.einsum("bhts,bshd->bthd", weights, v)


def pointwise_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, timestamps: torch.Tensor | None,
                        pos_w: torch.Tensor | None, time_w: torch.Tensor | None, *, norm: float, scale: float,
                        tile: int) -> torch.Tensor:
    """q, k [B, N, H, dqk], v [B, N, H, dv] of compacted rows, timestamps [B, N] int64 (read only
    with a time table) -> [B, N, H, dv]. ``tile``: queries per tile (0 = all at once)."""
    N = q.shape[1]
    tile = N if tile <= 0 else tile
    ts = timestamps if time_w is not None else None
    kw = dict(norm=norm, scale=scale)
    if N <= tile or torch.jit.is_tracing():  # a traced loop would freeze the number of tiles
        return _tile(q, k, v, ts, ts, pos_w, time_w, start=0, **kw)
    params = [t for t in (q, k, v, pos_w, time_w) if t is not None]
    recompute = torch.is_grad_enabled() and any(t.requires_grad for t in params)
    outs = []
    # the last tile first: its scores are the largest, and the smaller ones after it fit in the
    # memory it frees (ascending order grows the CPU heap by every tile's size in turn)
    for start in reversed(range(0, N, tile)):
        end = min(start + tile, N)
        args = (q[:, start:end], k[:, :end], v[:, :end],
                None if ts is None else ts[:, start:end], None if ts is None else ts[:, :end], pos_w, time_w)
        if recompute:  # backward recomputes this tile's scores instead of keeping them
            outs.append(checkpoint(_tile, *args, start=start, use_reentrant=False, **kw))
        else:
            outs.append(_tile(*args, start=start, **kw))
    return torch.cat(outs[::-1], dim=1)
