"""Linear Dispatcher Attention (LDA): ELASTIC's O(N) replacement for causal self-attention.

Position t in chunk c = t // C attends, in one softmax, over
  * E expert keys/values projected from the compressed interests of everything before chunk
    c - 1 (dispatch, see dispatch.py), each enriched by the interest memory (memory.py), and
  * the full-resolution keys/values of chunks c - 1 and c up to t itself.
So every past position is seen exactly once, compressed or at full resolution, and nothing
after t is seen. Inputs are compacted rows (real items first; see padding.py), so no padding
mask is needed. ``step`` is the same function for one new item per user, with a state whose
size does not depend on the history length.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .dispatch import EMPTY, chunk_partials, combine, prefix_interests
from .memory import ProductKeyMemory

if TYPE_CHECKING:
    from .config import ModelConfig


class LinearDispatcherAttention(nn.Module):
    def __init__(self, cfg: "ModelConfig"):
        super().__init__()
        enc = cfg.encoder  # ElasticConfig
        self.h, self.dh, self.e, self.c = enc.n_heads, cfg.d_model // enc.n_heads, enc.num_experts, enc.chunk_size
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.experts = nn.Parameter(torch.randn(self.h, self.e, self.dh))
        self.memory = (ProductKeyMemory(cfg.d_model, enc.memory_subkeys, enc.memory_topk, enc.memory_key_dim,
                                        enc.memory_query_norm)
                       if enc.use_memory else None)
        self.expert_kv = nn.Linear(cfg.d_model, 2 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)

    # -- pieces shared by forward, step and the reference -------------------------------------
    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """[..., N, D] -> [..., H, N, dh]"""
        return x.unflatten(-1, (self.h, self.dh)).transpose(-3, -2)

    def expert_keys_values(self, interests: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Interests [..., E, D] -> memory-enriched expert keys, values [..., H, E, dh]."""
        interests = interests.to(self.expert_kv.weight.dtype)
        if self.memory is not None:
            interests = interests + self.memory(interests)
        ke, ve = self.expert_kv(interests).chunk(2, dim=-1)
        return self.heads(ke), self.heads(ve)

    # -- full sequence ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, N, D] of compacted rows -> [B, N, D].

        Positions in chunks 0 and 1 have no history (nothing is older than the previous chunk),
        so they attend causally over every earlier position: plain causal attention. Chunks
        c >= 2 always have history and a previous chunk, so they share one constant mask; they
        run chunk-major ([B, nC - 2, H, C, dh]) as one 4-D attention call over B * (nC - 2)
        chunks (fused SDPA kernels need 4-D)."""
        B, N, D = x.shape
        C, H, E, dh = self.c, self.h, self.e, self.dh
        if N <= 2 * C:  # no chunk has history; the unused parameters join through the bias
            return F.linear(self.causal(self.qkv(x)), self.out.weight, self.out.bias + self.unused_zero())
        n = -(-N // C)
        if n * C > N:
            x = F.pad(x, (0, 0, 0, n * C - N))
        qkv = self.qkv(x)
        head = self.causal(qkv[:, :2 * C])  # chunks 0 and 1: [B, 2C, D]
        # chunk-major views [B, nC, H, C, dh]; chunk (not unbind) so the backward is one concatenation
        q, k, v = (t.view(B, n, C, H, dh).transpose(2, 3) for t in qkv.chunk(3, dim=-1))
        # the history of chunk c >= 2 is chunks 0 .. c-2: [B, nC-2, H, E, dh]
        interests = prefix_interests(k[:, :-2], v[:, :-2], self.experts)
        ke, ve = self.expert_keys_values(interests.transpose(2, 3).reshape(B, n - 2, E, D))
        # keys of chunk c: its experts, chunk c - 1, chunk c: [B * (nC-2), H, E + 2C, dh]
        keys = torch.cat([ke.to(q.dtype), k[:, 1:-1], k[:, 2:]], dim=3).flatten(0, 1)
        values = torch.cat([ve.to(q.dtype), v[:, 1:-1], v[:, 2:]], dim=3).flatten(0, 1)
        # experts and the previous chunk in full, the current chunk causally
        mask = torch.ones(C, E + 2 * C, dtype=torch.bool, device=x.device).tril(E + C)
        rest = F.scaled_dot_product_attention(q[:, 2:].flatten(0, 1), keys, values, attn_mask=mask)
        rest = rest.view(B, n - 2, H, C, dh).transpose(2, 3).reshape(B, (n - 2) * C, D)
        return self.out(torch.cat([head, rest], dim=1)[:, :N])

    def causal(self, qkv: torch.Tensor) -> torch.Tensor:
        """Causal self-attention of qkv [B, L, 3D] -> [B, L, D]."""
        B, L, _ = qkv.shape
        q, k, v = (t.view(B, L, self.h, self.dh).transpose(1, 2) for t in qkv.chunk(3, dim=-1))  # [B, H, L, dh]
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, L, -1)

    def unused_zero(self) -> torch.Tensor:
        """An exact 0 that depends on every parameter a sequence of <= 2 chunks leaves unused.
        DDP (find_unused_parameters=False) hangs when a parameter gets no gradient on one rank;
        through this they get a zero one. Empty slices sum to 0 whatever the values (no NaN
        from 0 * inf) and cost nothing. The memory is reached through its own forward on no
        rows: under FSDP it is a unit of its own, whose parameters exist only inside its forward."""
        zero = sum(p[:0].sum() for p in [self.experts, *self.expert_kv.parameters()])
        if self.memory is not None:
            zero = zero + self.memory(self.experts.new_zeros(0, self.memory.query.in_features)).sum()
        return zero

    # -- streaming ----------------------------------------------------------------------------
    def init_state(self, batch: int, device=None, dtype=torch.float32) -> dict[str, torch.Tensor]:
        H, E, C, dh = self.h, self.e, self.c, self.dh
        f32 = dict(device=device, dtype=torch.float32)
        return {
            "disp_m": torch.full((batch, H, E), EMPTY, **f32),  # dispatch prefix over chunks <= c-2
            "disp_z": torch.zeros(batch, H, E, **f32),
            "disp_u": torch.zeros(batch, H, E, dh, **f32),
            "k_prev": torch.zeros(batch, H, C, dh, device=device, dtype=dtype),  # chunk c-1
            "v_prev": torch.zeros(batch, H, C, dh, device=device, dtype=dtype),
            "k_cur": torch.zeros(batch, H, C, dh, device=device, dtype=dtype),  # chunk c so far
            "v_cur": torch.zeros(batch, H, C, dh, device=device, dtype=dtype),
        }

    def step(self, x: torch.Tensor, count: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """x [B, D]: the new item's input at position ``count`` [B] (0-based) -> ([B, D], state)."""
        B, D = x.shape
        C = self.c
        slot, chunk = count % C, count // C
        # Entering a new chunk c >= 1: chunk c-2 (the old "previous") joins the dispatch prefix,
        # the old current chunk becomes the previous one.
        new_chunk = (slot == 0) & (count > 0)
        fold = (new_chunk & (chunk >= 2)).view(B, 1, 1)
        m, z, u = chunk_partials(state["k_prev"].unsqueeze(1), state["v_prev"].unsqueeze(1), self.experts)
        m, z, u = combine((state["disp_m"], state["disp_z"], state["disp_u"]), (m[:, 0], z[:, 0], u[:, 0]))
        disp_m = torch.where(fold, m, state["disp_m"])
        disp_z = torch.where(fold, z, state["disp_z"])
        disp_u = torch.where(fold.unsqueeze(-1), u, state["disp_u"])
        shift = new_chunk.view(B, 1, 1, 1)
        k_prev = torch.where(shift, state["k_cur"], state["k_prev"])
        v_prev = torch.where(shift, state["v_cur"], state["v_prev"])
        k_cur = torch.where(shift, torch.zeros_like(state["k_cur"]), state["k_cur"])
        v_cur = torch.where(shift, torch.zeros_like(state["v_cur"]), state["v_cur"])

        q, k, v = (self.heads(t.unsqueeze(1)) for t in self.qkv(x).chunk(3, dim=-1))  # [B, H, 1, dh]
        write = (torch.arange(C, device=x.device) == slot[:, None]).view(B, 1, C, 1)
        k_cur = torch.where(write, k.to(k_cur.dtype), k_cur)
        v_cur = torch.where(write, v.to(v_cur.dtype), v_cur)

        interests = (disp_u / disp_z.clamp_min(torch.finfo(disp_z.dtype).tiny).unsqueeze(-1))
        interests = interests.transpose(1, 2).reshape(B, self.e, D)  # [B, E, D]
        ke, ve = self.expert_keys_values(interests)  # [B, H, E, dh]
        keys = torch.cat([ke.to(q.dtype), k_prev, k_cur], dim=2)
        values = torch.cat([ve.to(q.dtype), v_prev, v_cur], dim=2)
        j = torch.arange(C, device=x.device)
        mask = torch.cat([
            (chunk >= 2)[:, None].expand(B, self.e),  # experts: some chunk before c-1 exists
            (chunk >= 1)[:, None].expand(B, C),  # previous chunk
            j[None, :] <= slot[:, None],  # current chunk up to and including this item
        ], dim=1).view(B, 1, 1, -1)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # [B, H, 1, dh]
        state = dict(disp_m=disp_m, disp_z=disp_z, disp_u=disp_u,
                     k_prev=k_prev, v_prev=v_prev, k_cur=k_cur, v_cur=v_cur)
        return self.out(out.transpose(1, 2).reshape(B, D)), state
