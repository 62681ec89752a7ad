"""Dispatch: a prefix softmax pooling of keys/values onto E learned expert queries, per chunk.

For chunk c the experts pool every position s < (c - 1) * C (all chunks up to c - 2):
``I_c[j] = sum_s softmax_s(P_j . k_s / sqrt(dh)) v_s``. We compute per-chunk partial sums
(m = max logit, z = sum exp(l - m), u = sum exp(l - m) v) once, then take an inclusive prefix
scan over chunks with the log-sum-exp combine. The scan is Hillis-Steele: log2(#chunks) steps
of whole-tensor ops, total O(N * E * dh). It is exact for any logit range (no global max), and
everything runs in fp32 whatever the input dtype.
"""
from __future__ import annotations

import torch

# "No positions yet": finite so exp(EMPTY - EMPTY) = 1 (times z = 0) never makes a NaN.
EMPTY = -1e30


def chunk_partials(k: torch.Tensor, v: torch.Tensor, experts: torch.Tensor):
    """k, v: [B, nC, H, C, dh] (chunk-major); experts: [H, E, dh] -> (m, z, u) with shapes
    [B, nC, H, E], [B, nC, H, E], [B, nC, H, E, dh] (fp32). Every position counts: callers
    pass compacted rows, where positions a real query may pool are all real."""
    dh = k.shape[-1]
    logits = torch.einsum("bnhcd,hed->bnhec", k.float(), experts.float()) * dh**-0.5
    m = logits.amax(dim=-1).detach()  # a stabiliser only: the result does not depend on it
    w = torch.exp(logits - m.unsqueeze(-1))
    return m, w.sum(dim=-1), torch.einsum("bnhec,bnhcd->bnhed", w, v.float())


def combine(a, b):
    """Merge two (m, z, u) softmax partial sums into one (associative, commutative)."""
    m = torch.maximum(a[0], b[0])
    sa, sb = torch.exp(a[0] - m), torch.exp(b[0] - m)
    return m, a[1] * sa + b[1] * sb, a[2] * sa.unsqueeze(-1) + b[2] * sb.unsqueeze(-1)


def _shift(x: torch.Tensor, by: int, fill: float, dim: int = 1) -> torch.Tensor:
    """x shifted by ``by`` along ``dim`` (towards later chunks), the front filled with ``fill``.
    The result stays connected to ``x`` in the autograd graph even when everything is shifted
    out (an empty slice), so the expert queries then get a zero gradient rather than none."""
    n = x.shape[dim]
    front = torch.full_like(x.narrow(dim, 0, min(by, n)), fill)
    return torch.cat([front, x.narrow(dim, 0, max(n - by, 0))], dim=dim)


def prefix_scan(m, z, u):
    """Inclusive prefix over the chunk axis (dim 1) with :func:`combine`."""
    n, step = m.shape[1], 1
    while step < n:
        m, z, u = combine((m, z, u), (_shift(m, step, EMPTY), _shift(z, step, 0.0), _shift(u, step, 0.0)))
        step *= 2
    return m, z, u


def prefix_interests(k: torch.Tensor, v: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """k, v [B, n, H, C, dh] -> [B, n, H, E, dh] fp32: entry j pools chunks 0..j, i.e. it is the
    history of chunk j + 2. No clamp on z: each partial's largest term is exp(0) = 1, so z >= 1."""
    m, z, u = prefix_scan(*chunk_partials(k, v, experts))
    return u / z.unsqueeze(-1)
