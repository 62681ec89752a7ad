"""Full-catalog softmax cross-entropy, computed in row chunks with its gradients in the forward.

The plain loss (``losses.full_softmax``) materialises the [M, V] logits, their softmax and, in the
backward, a gradient of the same size: several passes over M x V floats that do not fit in cache.
On short histories with a catalog of 10^4+ items that is most of a training step. Here the rows
are taken ``chunk_rows`` at a time; for each chunk the logits, their log-sum-exp, the loss and the
gradient ``softmax - onehot`` are formed while the chunk is in cache, and immediately multiplied
into the gradients of the query and of the item matrix, which the backward only scales by the
incoming gradient (the loss is a training objective's last node, so the work is not wasted).

Under ``trainer.precision=bf16-mixed`` the matmuls run in bf16 (autocast); the log-sum-exp, the
softmax and the gradients are accumulated in fp32.

Reference: ``losses.full_softmax`` (the equivalence is tested in tests/test_chunked_softmax.py).
"""
from __future__ import annotations

import torch

CHUNK_FLOATS = 1 << 20  # logits per chunk (4 MB fp32): rows = CHUNK_FLOATS // V


def default_chunk_rows(num_items: int) -> int:
    return max(64, CHUNK_FLOATS // max(1, num_items))


class _ChunkedFullSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, cand, target, temperature: float, chunk_rows: int):
        m = query.shape[0]
        want_grad = any(ctx.needs_input_grad[:2])  # False under no_grad: the loss value only
        grad_q = torch.empty(query.shape, dtype=torch.float32, device=query.device) if want_grad else None
        grad_cand = torch.zeros(cand.shape, dtype=torch.float32, device=cand.device) if want_grad else None
        total = torch.zeros((), dtype=torch.float64, device=query.device)
        for start in range(0, m, chunk_rows):
            q = query[start:start + chunk_rows] / temperature
            t = target[start:start + chunk_rows] - 1
            logits = (q @ cand.T).float()  # [c, V]; below, every pass over it is in place
            picked = logits.gather(1, t[:, None])[:, 0]
            peak = logits.amax(dim=1, keepdim=True)
            probs = logits.sub_(peak).exp_()  # unnormalised softmax
            norm = probs.sum(dim=1, keepdim=True)
            total += (peak[:, 0] + norm[:, 0].log() - picked).double().sum()  # log-sum-exp - target logit
            if want_grad:  # d(mean loss)/d logits = (softmax - onehot) / M
                probs.div_(norm)
                probs[torch.arange(len(t), device=t.device), t] -= 1.0
                probs = probs.to(q.dtype)
                grad_q[start:start + chunk_rows] = (probs @ cand).float()
                grad_cand += (probs.T @ q).float()
        if want_grad:
            grad_q /= m * temperature  # logits = (query / T) @ cand.T
            grad_cand /= m
            ctx.save_for_backward(grad_q, grad_cand)
        ctx.dtypes = query.dtype, cand.dtype
        return (total / m).to(torch.float32)

    @staticmethod
    def backward(ctx, grad_out):
        grad_q, grad_cand = ctx.saved_tensors
        q_dtype, cand_dtype = ctx.dtypes
        return (grad_q * grad_out).to(q_dtype), (grad_cand * grad_out).to(cand_dtype), None, None, None


def chunked_full_softmax(query: torch.Tensor, target: torch.Tensor, items: torch.Tensor, temperature: float,
                         chunk_rows: int = 0) -> torch.Tensor:
    """Mean cross-entropy of ``softmax((query / T) @ items[1:].T)`` at ``target - 1``: query [M, D],
    target [M] in 1..V, items [V+1, D]. ``chunk_rows`` 0: sized so a chunk holds about 2^20 logits."""
    rows = chunk_rows or default_chunk_rows(items.shape[0] - 1)
    # the padding row is sliced off out here, where autograd (and a row-sparse table's guard,
    # sparse_rows.py, which refuses whole-table reads) sees it
    return _ChunkedFullSoftmax.apply(query, items[1:], target, temperature, rows)
