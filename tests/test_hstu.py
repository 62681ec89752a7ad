"""HSTU: the tiled pointwise attention against the plain O(N^2) reference (random shapes, padding,
both biases, forward and gradients), causality, padding independence, timestamps."""
from __future__ import annotations

import math

import pytest
import torch

from elastic_pl.model import ModelConfig, SequentialRecommender
from elastic_pl.model.hstu import HSTUConfig
from elastic_pl.model.hstu_attention import time_buckets
from elastic_pl.model.hstu_reference import reference_hstu
from elastic_pl.model.padding import compaction_order, gather_rows

TOL = 1e-5  # fp32


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def random_case(seed: int):
    """A random HSTU encoder and padded input x [B, N, D], real [B, N], timestamps [B, N]."""
    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    H, N = r(1, 3), r(1, 40)
    enc = HSTUConfig(n_heads=H, attention_dim=r(1, 6), linear_dim=r(1, 6), position_bias=seed % 4 != 1,
                     time_bias=seed % 4 != 2, num_time_buckets=r(1, 64), attention_tile=[0, 1, 3, 7][seed % 4])
    # max_positions below N for some cases: distances past it share the last position weight
    cfg = ModelConfig(num_items=10, d_model=r(2, 12), n_layers=r(1, 3), dropout=0.0, max_positions=r(2, 48),
                      encoder=enc)
    torch.manual_seed(seed)
    model = SequentialRecommender(cfg).eval()
    for layer in model.encoder.layers:  # biases as large as the scores, so getting them wrong shows
        for w in (layer.pos_w, layer.time_w):
            if w is not None:
                w.data.normal_(generator=g)
    B = r(1, 4)
    x = torch.randn(B, N, cfg.d_model, generator=g)
    kind = seed % 3
    if kind == 0:
        real = torch.arange(N)[None, :] >= torch.randint(0, N + 1, (B, 1), generator=g)  # left padding
    elif kind == 1:
        real = torch.rand(B, N, generator=g) > 0.4  # holes
    else:
        real = torch.ones(B, N, dtype=torch.bool)
    # seconds, increasing, ties included; 0 at padding (as the loader gives them)
    ts = torch.cumsum(torch.randint(0, 3, (B, N), generator=g) * torch.randint(0, 10**6, (B, N), generator=g), 1)
    return model, x, real, torch.where(real, ts, torch.zeros_like(ts))


def encoder_outputs(model, x, real, ts):
    """The encoder on compacted rows (as the recommender runs it), back in the caller's layout."""
    order, inverse = compaction_order(real)
    out = model.encoder(gather_rows(x, order), gather_rows(ts, order))
    return gather_rows(out, inverse) * real[..., None]


def with_grads(model, x, fn):
    x = x.clone().requires_grad_()
    out = fn(x)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    return out.detach(), torch.autograd.grad((out * weight).sum(), [x, *model.encoder.parameters()])


@pytest.mark.parametrize("seed", range(24))
def test_tiled_attention_matches_the_reference_forward_and_backward(seed):
    model, x, real, ts = random_case(seed)
    fast, g_fast = with_grads(model, x, lambda t: encoder_outputs(model, t, real, ts))
    ref, g_ref = with_grads(model, x, lambda t: reference_hstu(model.encoder, t, real, ts))
    if not real.any():
        return
    assert rel_err(fast, ref) < TOL
    names = ["x"] + [n for n, _ in model.encoder.named_parameters()]
    for name, a, b in zip(names, g_fast, g_ref):
        assert rel_err(a, b) < TOL, name


def test_time_buckets_are_log_spaced_differences():
    dt = torch.tensor([0, 1, -1, 2, 3, 59, 3600, 86_400, -86_400, 10**9, 10**12])
    want = [min(48, math.floor(math.log(max(abs(int(d)), 1)) / 0.301)) for d in dt]
    assert time_buckets(dt, 48, 0.301).tolist() == want


def model_of(**enc) -> SequentialRecommender:
    torch.manual_seed(1)
    cfg = ModelConfig(num_items=40, d_model=12, n_layers=2, dropout=0.0, max_positions=32,
                      encoder=HSTUConfig(n_heads=2, attention_tile=4, **enc))
    return SequentialRecommender(cfg).eval()


def test_causality_bit_identical_for_future_items_and_timestamps():
    model = model_of()
    N = 19
    items = torch.randint(1, 41, (3, N))
    items[1, :5] = 0
    ts = torch.cumsum(torch.randint(1, 10**5, (3, N)), 1)
    with torch.no_grad():
        base = model(items, timestamps=ts)
        for t in [0, 3, 8, 13, 17]:
            changed, later_ts = items.clone(), ts.clone()
            later = changed[:, t + 1:]
            changed[:, t + 1:] = torch.where(later > 0, later % 40 + 1, later)
            later_ts[:, t + 1:] += 10**7
            for new_items, new_ts in ((changed, ts), (items, later_ts)):
                out = model(new_items, timestamps=new_ts)
                assert torch.equal(out[:, : t + 1], base[:, : t + 1]), t
                assert not torch.equal(out[0, t + 1:], base[0, t + 1:])  # the change is visible later


def test_outputs_do_not_depend_on_padding():
    model = model_of()
    seq = torch.randint(1, 41, (1, 13))
    ts = torch.cumsum(torch.randint(1, 10**5, (1, 13)), 1)
    where = torch.tensor([0, 2, 3, 5, 6, 7, 9, 10, 12, 13, 15, 16, 19])
    holes, holes_ts = torch.zeros(1, 20, dtype=torch.long), torch.zeros(1, 20, dtype=torch.long)
    holes[0, where], holes_ts[0, where] = seq[0], ts[0]
    left = torch.nn.functional.pad(seq, (6, 0))
    with torch.no_grad():
        ref = model(seq, timestamps=ts)[0]
        assert rel_err(model(left, timestamps=torch.nn.functional.pad(ts, (6, 0)))[0, 6:], ref) < TOL
        assert rel_err(model(holes, timestamps=holes_ts)[0][holes[0] != 0], ref) < TOL


def test_missing_timestamps_name_the_loader_setting():
    items = torch.randint(1, 41, (2, 5))
    with pytest.raises(ValueError, match="data.loader.timestamps=true"):
        model_of()(items)
    assert model_of(time_bias=False)(items).shape == (2, 5, 12)  # no time bias: no timestamps needed


def test_the_time_bias_changes_the_outputs():
    """Two users with the same items at different times differ only through the time bias."""
    model = model_of()
    items = torch.randint(1, 41, (1, 9)).repeat(2, 1)
    ts = torch.stack([torch.arange(9) * 60, torch.arange(9) * 86_400])
    with torch.no_grad():
        out = model(items, timestamps=ts)
        assert not torch.allclose(out[0, 1:], out[1, 1:])
        for layer in model.encoder.layers:
            layer.time_w.zero_()
        out = model(items, timestamps=ts)
        assert torch.equal(out[0], out[1])


@pytest.mark.parametrize("length", [1, 4, 9])
def test_every_parameter_gets_a_gradient(length):
    model = model_of().train()
    items = torch.randint(1, 41, (2, length + 1))
    ts = torch.cumsum(torch.randint(1, 10**5, (2, length)), 1)
    model.loss(model(items[:, :-1], timestamps=ts), items[:, 1:]).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


def test_export_takes_timestamps_and_matches_eager(tmp_path):
    from elastic_pl.export import check_export, export_serving

    model = model_of()  # 4 queries per tile: the example (16) and the checked lengths span several tiles
    meta = export_serving(model, tmp_path, "torchscript", example_len=16)
    assert meta["encode_last"]["inputs"] == ["items", "timestamps"] and meta["step"] is None
    assert check_export(model, tmp_path)["encode_last"]["rel"] < 1e-4
