"""LDA's short-sequence fast path (N <= 2C: no chunk has history, so plain causal attention).

Checked against the general path (the same rows extended past 2C positions, which takes the
chunked branch; outputs at the first N positions cannot depend on the extension) and against the
brute-force reference, forward and gradients, for random shapes and padding patterns.
"""
from __future__ import annotations

import pytest
import torch

from elastic_pl.model import ModelConfig, SequentialRecommender
from elastic_pl.model.lda import LinearDispatcherAttention
from elastic_pl.model.padding import compaction_order, gather_rows
from elastic_pl.model.reference import reference_lda

TOL = 1e-5  # fp32


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def padding_mask(kind: str, B: int, N: int, g: torch.Generator) -> torch.Tensor:
    """[B, N] bool, True = real item."""
    pos = torch.arange(N)[None, :]
    if kind == "left":  # possibly all-padding rows
        return pos >= torch.randint(0, N + 1, (B, 1), generator=g)
    if kind == "right":
        return pos < torch.randint(0, N + 1, (B, 1), generator=g)
    if kind == "holes":
        return torch.rand(B, N, generator=g) > 0.4
    return torch.ones(B, N, dtype=torch.bool)


def short_case(seed: int):
    """A random layer and input with N <= 2C, and its padding mask."""
    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    H, dh, C, E, n_sub = r(1, 3), r(2, 8), r(1, 9), r(1, 5), r(2, 6)
    cfg = ModelConfig.from_flat(dict(num_items=10, d_model=H * dh, n_heads=H, num_experts=E, chunk_size=C,
                                     use_memory=seed % 3 != 0, memory_subkeys=n_sub, memory_topk=r(1, n_sub),
                                     memory_key_dim=2 * r(1, 4), dropout=0.0))
    torch.manual_seed(seed)
    layer = LinearDispatcherAttention(cfg)
    B, N = r(1, 5), r(1, 2 * C)
    x = torch.randn(B, N, cfg.d_model, generator=g)
    real = padding_mask(["left", "right", "holes", "none"][seed % 4], B, N, g)
    extra = torch.randn(B, 2 * C - N + r(1, 2 * C), cfg.d_model, generator=g)  # past 2C in all
    return layer, x, real, extra


def outputs(layer, x, real, extra=None):
    """The layer on compacted rows, back in the caller's layout (as the recommender runs it);
    with ``extra`` the compacted rows are extended first, so the layer sees more than 2C
    positions, and only the first N outputs are kept."""
    order, inverse = compaction_order(real)
    rows = gather_rows(x, order)
    if extra is None:
        out = layer(rows)
    else:
        out = layer(torch.cat([rows, extra], dim=1))[:, : x.shape[1]]
    return gather_rows(out, inverse)


def value_and_grads(layer, x, fn):
    """fn(x) -> outputs [B, N, D] at real positions; returns (outputs, grads w.r.t. x and
    every parameter) of a fixed random linear function of them."""
    x = x.clone().requires_grad_()
    out = fn(x)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    grads = torch.autograd.grad((out * weight).sum(), [x, *layer.parameters()])
    return out.detach(), grads


@pytest.mark.parametrize("seed", range(24))
def test_fast_path_matches_general_path_and_reference(seed):
    layer, x, real, extra = short_case(seed)
    assert x.shape[1] <= 2 * layer.c and x.shape[1] + extra.shape[1] > 2 * layer.c
    mask = real[..., None]
    fast, g_fast = value_and_grads(layer, x, lambda t: outputs(layer, t, real) * mask)
    general, g_general = value_and_grads(layer, x, lambda t: outputs(layer, t, real, extra) * mask)
    ref, g_ref = value_and_grads(layer, x, lambda t: reference_lda(layer, t, real))
    names = ["x"] + [name for name, _ in layer.named_parameters()]
    assert rel_err(fast, general) < TOL
    assert rel_err(fast, ref) < TOL
    for name, a, b, c in zip(names, g_fast, g_general, g_ref):
        assert rel_err(a, b) < TOL, f"{name}: fast vs general"
        assert rel_err(a, c) < TOL, f"{name}: fast vs reference"


@pytest.mark.parametrize("use_memory", [True, False])
def test_fast_path_is_causal(use_memory):
    """Changing the items after position t leaves the hidden state at t bit-identical."""
    torch.manual_seed(1)
    C = 8
    cfg = ModelConfig.from_flat(dict(num_items=40, d_model=16, n_heads=2, n_layers=2, num_experts=3, chunk_size=C,
                                     use_memory=use_memory, memory_subkeys=6, memory_topk=3, memory_key_dim=8,
                                     dropout=0.0, max_positions=64))
    model = SequentialRecommender(cfg).eval()
    N = 2 * C
    items = torch.randint(1, cfg.num_items + 1, (3, N))
    items[1, : N // 3] = 0  # left padding
    items[2, 1::3] = 0  # holes
    with torch.no_grad():
        base = model(items)
        for t in range(N - 1):
            changed = items.clone()
            later = changed[:, t + 1:]
            changed[:, t + 1:] = torch.where(later > 0, later % cfg.num_items + 1, later)
            out = model(changed)
            assert torch.equal(out[:, : t + 1], base[:, : t + 1]), t
            assert not torch.equal(out[0, t + 1:], base[0, t + 1:])  # the change is visible later


@pytest.mark.parametrize("seed", range(4))
def test_step_equals_forward_on_short_sequences(seed):
    g = torch.Generator().manual_seed(seed)
    C = int(torch.randint(2, 9, (1,), generator=g))
    cfg = ModelConfig.from_flat(dict(num_items=40, d_model=16, n_heads=2, n_layers=2, num_experts=3, chunk_size=C,
                                     use_memory=seed % 2 == 0, memory_subkeys=6, memory_topk=3, memory_key_dim=8,
                                     dropout=0.0, max_positions=64))
    torch.manual_seed(seed)
    model = SequentialRecommender(cfg).eval()
    B, N = 3, int(torch.randint(1, 2 * C + 1, (1,), generator=g))
    items = torch.randint(1, cfg.num_items + 1, (B, N), generator=g)
    with torch.no_grad():
        full = model(items)
        state = model.init_state(B)
        for t in range(N):
            hidden, state = model.step(state, items[:, t])
            assert rel_err(hidden, full[:, t]) < TOL, t


@pytest.mark.parametrize("use_memory", [True, False])
def test_fast_path_gives_every_parameter_a_gradient(use_memory):
    """DDP (find_unused_parameters=False) waits forever for a parameter without a gradient.
    On the fast path the expert queries, expert keys/values and the memory take no part in
    the output, so their gradient must be a zero tensor, not None."""
    C = 4
    cfg = ModelConfig.from_flat(dict(num_items=10, d_model=8, n_heads=2, num_experts=3, chunk_size=C,
                                     use_memory=use_memory, memory_subkeys=4, memory_topk=2, memory_key_dim=4,
                                     dropout=0.0))
    torch.manual_seed(2)
    layer = LinearDispatcherAttention(cfg)
    for N in range(1, 2 * C + 1):
        layer.zero_grad(set_to_none=True)
        layer(torch.randn(2, N, cfg.d_model)).square().sum().backward()
        missing = [name for name, p in layer.named_parameters() if p.grad is None]
        assert not missing, (N, missing)
        unused = [layer.experts, *layer.expert_kv.parameters()]
        if layer.memory is not None:
            unused += layer.memory.parameters()
        assert all(not p.grad.any() for p in unused), N


@pytest.mark.parametrize("extra", [[], ["--compile"]])
def test_encoder_pair_bench_runs(extra):
    """The interleaved step benchmark BENCHMARKS.md quotes (eager and compiled), on a tiny configuration."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "bench.encoder_pair", "2", "--device", "cpu", "--threads", "1",
                          "--tokens", "320", "--lengths", "40", "--items", "300", "--chunk", "16",
                          "--loss", "full_softmax", "--warmup", "1", *extra], capture_output=True, text=True, timeout=600,
                         cwd=__import__("pathlib").Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "N=40 B=8: elastic" in out.stdout and "ELASTIC/SDPA tok/s" in out.stdout
