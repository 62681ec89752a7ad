"""Model core: LDA vs its O(N^2) reference, causality, streaming, gradients, config checks."""
from __future__ import annotations

import pytest
import torch

from elastic_pl.model import ModelConfig, SequentialRecommender, state_bytes
from elastic_pl.model.dispatch import prefix_interests
from elastic_pl.model.lda import LinearDispatcherAttention
from elastic_pl.model.padding import compaction_order, gather_rows
from elastic_pl.model.reference import reference_lda


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30))


def random_layer_case(seed: int):
    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    H, dh, C, E = r(1, 3), r(2, 8), r(1, 9), r(1, 5)
    N = [1, r(1, C), C * r(1, 4) + r(1, max(C - 1, 1)), r(2, 40)][seed % 4]
    n_sub = r(2, 6)
    cfg = ModelConfig.from_flat(dict(num_items=10, d_model=H * dh, n_heads=H, num_experts=E, chunk_size=C,
                                     use_memory=bool(seed % 3), memory_subkeys=n_sub, memory_topk=r(1, n_sub),
                                     memory_key_dim=2 * r(1, 4), dropout=0.0))
    torch.manual_seed(seed)
    layer = LinearDispatcherAttention(cfg).eval()
    B = r(1, 4)
    x = torch.randn(B, N, cfg.d_model, generator=g)
    pad = torch.randint(0, N + 1, (B,), generator=g)  # random left padding, possibly all-pad
    real = torch.arange(N)[None, :] >= pad[:, None]
    return layer, x, real


def fast_lda(layer, x, real):
    order, inverse = compaction_order(real)
    return gather_rows(layer(gather_rows(x, order)), inverse)


@pytest.mark.parametrize("seed", range(24))
def test_lda_matches_reference_fp32(seed):
    layer, x, real = random_layer_case(seed)
    with torch.no_grad():
        fast, ref = fast_lda(layer, x, real), reference_lda(layer, x, real)
    if real.any():
        assert rel_err(fast[real], ref[real]) < 1e-5
    assert torch.isfinite(fast).all()


@pytest.mark.parametrize("seed", range(8))
def test_lda_matches_reference_bf16_autocast(seed):
    layer, x, real = random_layer_case(seed)
    real[:, -1] = True  # at least one real item per row
    with torch.no_grad():
        ref = reference_lda(layer, x, real)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = fast_lda(layer, x, real)
    assert rel_err(fast[real], ref[real]) < 2e-2


def test_lda_any_padding_pattern_matches_reference():
    layer, x, _ = random_layer_case(2)
    real = torch.rand(x.shape[:2], generator=torch.Generator().manual_seed(0)) > 0.4  # holes
    real[:, 0] = True
    with torch.no_grad():
        assert rel_err(fast_lda(layer, x, real)[real], reference_lda(layer, x, real)[real]) < 1e-5


def test_dispatch_exact_for_huge_logits():
    torch.manual_seed(0)
    B, H, C, nC, E, dh = 2, 2, 4, 5, 3, 4
    k = torch.randn(B, H, nC * C, dh) * 1e4  # logits of order +-1e4
    v = torch.randn(B, H, nC * C, dh)
    experts = torch.randn(H, E, dh)
    chunked = lambda t: t.unflatten(2, (nC, C)).transpose(1, 2)  # noqa: E731  [B, nC, H, C, dh]
    interests = prefix_interests(chunked(k), chunked(v), experts)  # entry j: the history of chunk j + 2
    assert torch.isfinite(interests).all()
    logits = torch.einsum("bhsd,hed->bhes", k.double(), experts.double()) * dh**-0.5
    for c in range(2, nC):
        end = (c - 1) * C
        w = torch.softmax(logits[..., :end], dim=-1)
        expected = torch.einsum("bhes,bhsd->bhed", w, v[:, :, :end].double())
        assert torch.allclose(interests[:, c - 2].double(), expected, rtol=1e-5, atol=1e-5)


def model_cfg(**kw) -> ModelConfig:
    """The test shapes; each encoder and loss takes the keys it declares (strict=False drops
    ELASTIC's keys for the others)."""
    base = dict(num_items=40, d_model=16, n_heads=2, n_layers=2, num_experts=3, chunk_size=4,
                memory_subkeys=6, memory_topk=3, memory_key_dim=8, dropout=0.0, max_positions=64)
    base.update(kw)
    return ModelConfig.from_flat(base, strict=False)


@pytest.mark.parametrize("kw", [dict(encoder="elastic"), dict(encoder="elastic", use_memory=False),
                                dict(encoder="sasrec"), dict(encoder="naive")])
def test_causality_bit_identical(kw):
    torch.manual_seed(1)
    model = SequentialRecommender(model_cfg(**kw)).eval()
    N = 23
    items = torch.randint(1, 41, (3, N))
    items[1, :6] = 0  # left padding
    with torch.no_grad():
        base = model(items)
        for t in [0, 3, 7, 12, 21]:
            changed = items.clone()
            later = changed[:, t + 1:]
            changed[:, t + 1:] = torch.where(later > 0, (later % 40) + 1, later)
            out = model(changed)
            assert torch.equal(out[:, : t + 1], base[:, : t + 1]), t
            if t < N - 2:
                assert not torch.equal(out[0, t + 1:], base[0, t + 1:])  # the change is visible later


def test_sdpa_and_naive_are_the_same_function():
    torch.manual_seed(2)
    sdpa = SequentialRecommender(model_cfg(encoder="sasrec")).eval()
    naive = SequentialRecommender(model_cfg(encoder="naive")).eval()
    naive.load_state_dict(sdpa.state_dict())
    items = torch.randint(0, 41, (4, 17))
    real = items != 0
    with torch.no_grad():
        assert rel_err(sdpa(items)[real], naive(items)[real]) < 1e-5


@pytest.mark.parametrize("encoder", ["elastic", "sasrec"])
def test_outputs_do_not_depend_on_padding(encoder):
    torch.manual_seed(3)
    model = SequentialRecommender(model_cfg(encoder=encoder)).eval()
    seq = torch.randint(1, 41, (1, 13))
    left = torch.cat([torch.zeros(1, 6, dtype=torch.long), seq], 1)
    holes = torch.zeros(1, 20, dtype=torch.long)
    holes[0, torch.tensor([0, 2, 3, 5, 6, 7, 9, 10, 12, 13, 15, 16, 19])] = seq[0]
    with torch.no_grad():
        ref = model(seq)[0]
        assert rel_err(model(left)[0, 6:], ref) < 1e-5
        assert rel_err(model(holes)[0][holes[0] != 0], ref) < 1e-5


@pytest.mark.parametrize("use_memory", [True, False])
def test_step_equals_forward_at_every_position(use_memory):
    torch.manual_seed(4)
    cfg = model_cfg(use_memory=use_memory)
    model = SequentialRecommender(cfg).eval()
    C = cfg.encoder.chunk_size
    for length in [1, 2, C - 1, C, C + 1, 2 * C, 3 * C + 1, 5 * C + 3]:
        items = torch.randint(1, 41, (2, length))
        with torch.no_grad():
            full = model(items)
            state = model.init_state(2)
            size = state_bytes(state)
            for t in range(length):
                h, state = model.step(state, items[:, t])
                assert rel_err(h, full[:, t]) < 1e-5, (length, t)
            assert state_bytes(state) == size  # constant in history length


def test_step_with_users_at_different_history_lengths():
    torch.manual_seed(5)
    model = SequentialRecommender(model_cfg()).eval()
    a, b = torch.randint(1, 41, (1, 11)), torch.randint(1, 41, (1, 6))
    with torch.no_grad():
        sa, sb = model.init_state(1), model.init_state(1)
        for t in range(a.shape[1] - 1):
            _, sa = model.step(sa, a[:, t])
        for t in range(b.shape[1] - 1):
            _, sb = model.step(sb, b[:, t])
        state = {k: torch.cat([sa[k], sb[k]]) for k in sa}
        h, _ = model.step(state, torch.cat([a[:, -1], b[:, -1]]))
        assert rel_err(h[0], model(a)[0, -1]) < 1e-5
        assert rel_err(h[1], model(b)[0, -1]) < 1e-5


def test_encode_last_matches_forward():
    torch.manual_seed(6)
    model = SequentialRecommender(model_cfg()).eval()
    items = torch.randint(1, 41, (3, 9))
    items[0, :4] = 0
    with torch.no_grad():
        assert rel_err(model.encode_last(items), model(items)[:, -1]) < 1e-5


def test_gradients_reach_embeddings_experts_and_memory():
    torch.manual_seed(7)
    model = SequentialRecommender(model_cfg(chunk_size=2, num_experts=4))
    lda = model.encoder.blocks[0].mix
    lda.memory.track_usage = True
    items = torch.randint(1, 41, (4, 16))
    model.loss(model(items[:, :-1]), items[:, 1:]).backward()
    for name, p in [("item embeddings", model.embedding.items.weight), ("expert queries", lda.experts),
                    ("memory sub-keys", lda.memory.subkeys), ("memory values", lda.memory.values.weight),
                    ("memory query", lda.memory.query.weight)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    touched = lda.memory.slots_touched()
    print(f"memory slots touched by one batch: {touched} of {lda.memory.usage.numel()}")
    assert 0 < touched <= lda.memory.usage.numel()


@pytest.mark.parametrize("loss,negatives", [("sampled_softmax", "uniform"), ("sampled_softmax", "in_batch"),
                                            ("full_softmax", "uniform"), ("bce", "uniform")])
def test_losses_are_finite_and_trainable(loss, negatives):
    torch.manual_seed(8)
    model = SequentialRecommender(model_cfg(loss=loss, negatives=negatives, num_negatives=8))
    items = torch.randint(1, 41, (4, 10))
    items[0, :3] = 0
    targets = torch.roll(items, -1, 1)
    targets[:, -1] = 0
    targets[items == 0] = 0
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        value = model.loss(model(items), targets)
        assert torch.isfinite(value)
        first = first if first is not None else value.item()
        opt.zero_grad()
        value.backward()
        opt.step()
    assert value.item() < first


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_full_softmax_is_cross_entropy_over_catalog(temperature):
    """Reference: every item scored, padding masked to -inf, logits divided by the temperature."""
    torch.manual_seed(9)
    model = SequentialRecommender(model_cfg(loss="full_softmax", temperature=temperature))
    h = torch.randn(5, 16, requires_grad=True)
    y = torch.randint(1, 41, (5,))
    logits = (h @ model.item_matrix().T) / temperature
    logits = logits.masked_fill(torch.arange(logits.shape[1]) == 0, float("-inf"))
    expected = torch.nn.functional.cross_entropy(logits, y)
    (grad_expected,) = torch.autograd.grad(expected, h)
    value = model.loss(h[:, None], y[:, None])
    (grad,) = torch.autograd.grad(value, h)
    assert torch.allclose(value, expected, atol=1e-6)
    assert torch.allclose(grad, grad_expected, atol=1e-6)


@pytest.mark.parametrize("field,value,key", [
    ("d_model", 31, "model.encoder.n_heads"), ("n_heads", 0, "model.encoder.n_heads"),
    ("num_experts", 0, "model.encoder.num_experts"), ("chunk_size", 0, "model.encoder.chunk_size"),
    ("memory_topk", 100, "model.encoder.memory_topk"), ("encoder", "gru", "model.encoder.name"),
    ("loss", "mse", "model.loss.name"), ("memory_key_dim", 7, "model.encoder.memory_key_dim"),
    ("temperature", 0.0, "model.loss.temperature"), ("negatives", "none", "model.loss.negatives"),
    ("n_layers", 0, "model.n_layers")])
def test_invalid_config_names_the_key(field, value, key):
    with pytest.raises(ValueError, match=key):
        ModelConfig.from_flat({"d_model": 32, "n_heads": 2, field: value})


def test_step_refused_for_an_encoder_that_does_not_stream():
    model = SequentialRecommender(model_cfg(encoder="sasrec"))
    assert not model.streams
    with pytest.raises(ValueError, match="does not stream"):
        model.init_state(1)


@pytest.mark.parametrize("encoder", ["elastic", "sasrec", "naive"])
@pytest.mark.parametrize("length", [1, 4, 8, 9, 20])
def test_every_parameter_gets_a_gradient_whatever_the_length(encoder, length):
    """DDP (find_unused_parameters=False) hangs when a parameter has no gradient on one rank: a
    batch short enough to have no dispatch history (<= 2 chunks) must still reach every one."""
    torch.manual_seed(10)
    model = SequentialRecommender(model_cfg(encoder=encoder, chunk_size=4))
    items = torch.randint(1, 41, (2, length + 1))
    model.loss(model(items[:, :-1]), items[:, 1:]).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize("seed", range(6))
def test_newest_positions_are_slots_of_a_left_padded_window(seed):
    # reference: SASRec's layout, each row left-padded to max_positions and position = slot
    g = torch.Generator().manual_seed(seed)
    cfg = model_cfg(encoder="sasrec", max_positions=12, positions="newest")
    emb = SequentialRecommender(cfg).embedding
    B, N = 5, 16  # rows longer than the table share its first position
    lengths = torch.randint(0, N + 1, (B,), generator=g)
    real = torch.zeros(B, N, dtype=torch.bool)
    for b, n in enumerate(lengths.tolist()):
        real[b, torch.randperm(N, generator=g)[:n]] = True  # any padding pattern
    got = emb.position_index(real)
    for b in range(B):
        n = int(lengths[b])
        slots = torch.arange(12 - n, 12).clamp_min(0)  # oldest..newest of a left-padded window
        assert torch.equal(got[b][real[b]], slots)


def test_newest_positions_do_not_depend_on_padding_and_do_not_stream():
    torch.manual_seed(4)
    model = SequentialRecommender(model_cfg(encoder="elastic", positions="newest")).eval()
    seq = torch.randint(1, 41, (1, 13))
    holes = torch.zeros(1, 20, dtype=torch.long)
    holes[0, torch.tensor([0, 2, 3, 5, 6, 7, 9, 10, 12, 13, 15, 16, 19])] = seq[0]
    oldest = SequentialRecommender(model_cfg(encoder="elastic")).eval()
    oldest.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref = model(seq)[0]
        assert rel_err(model(holes)[0][holes[0] != 0], ref) < 1e-5
        assert rel_err(oldest(seq)[0], ref) > 1e-3  # the option changes the function
    assert not model.streams
    with pytest.raises(ValueError, match="model.positions"):
        model.init_state(1)
    with pytest.raises(ValueError, match="model.positions"):
        ModelConfig.from_flat({"positions": "latest"})
