"""The interest memory (product-key memory): its lookup against a brute-force top-k over all n^2
slots, its read statistics on a known read pattern, and the query normalisation options."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from elastic_pl.model import ModelConfig, SequentialRecommender
from elastic_pl.model.memory import QUERY_NORMS, ProductKeyMemory, mean_read_statistics, read_statistics

NORMS = list(QUERY_NORMS)


def randomise_norm(memory: ProductKeyMemory, seed: int) -> None:
    """Non-trivial affine parameters and running statistics, so a norm applied in the wrong
    place (or not at all) changes the result."""
    g = torch.Generator().manual_seed(seed)
    norm = memory.query_norm
    if norm is None:
        return
    with torch.no_grad():
        norm.weight.copy_(torch.rand(norm.weight.shape, generator=g) + 0.5)
        norm.bias.copy_(torch.randn(norm.bias.shape, generator=g))
        if isinstance(norm, torch.nn.BatchNorm1d):
            norm.running_mean.copy_(torch.randn(norm.running_mean.shape, generator=g))
            norm.running_var.copy_(torch.rand(norm.running_var.shape, generator=g) + 0.5)


def normalised_query_by_hand(memory: ProductKeyMemory, x: torch.Tensor, norm: str) -> torch.Tensor:
    """x [M, D] -> the query the memory scores [M, key_dim], each option written out."""
    q = x @ memory.query.weight.T + memory.query.bias
    if norm == "none":
        return q
    mod = memory.query_norm
    if norm == "layernorm":  # each half to zero mean, unit (biased) variance; then the affine
        halves = q.view(q.shape[0], 2, -1)
        mean, var = halves.mean(-1, keepdim=True), halves.var(-1, unbiased=False, keepdim=True)
        z = ((halves - mean) / torch.sqrt(var + mod.eps)).view_as(q)
    elif memory.training:  # batchnorm, training: this batch's per-feature statistics
        z = (q - q.mean(0)) / torch.sqrt(q.var(0, unbiased=False) + mod.eps)
    else:  # batchnorm, eval: the running statistics
        z = (q - mod.running_mean) / torch.sqrt(mod.running_var + mod.eps)
    return z * mod.weight + mod.bias


def brute_force_read(memory: ProductKeyMemory, x: torch.Tensor, norm: str):
    """Score every one of the n^2 slots (slot i*n + j: q1.k1[i] + q2.k2[j]), keep the k best,
    softmax over them, and sum the values read: (slots [M, k], weights [M, k], out [M, D])."""
    q = normalised_query_by_hand(memory, x, norm)
    half = q.shape[1] // 2
    k1, k2 = memory.subkeys[0], memory.subkeys[1]  # [n, half]
    every = (q[:, :half] @ k1.T)[:, :, None] + (q[:, half:] @ k2.T)[:, None, :]  # [M, n, n]
    best, slots = every.flatten(1).topk(memory.k, dim=1)
    weights = torch.softmax(best, dim=1)
    out = (weights[:, :, None] * memory.values.weight[slots]).sum(1)
    return slots, weights, out


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("seed,d_model,n,k,key_dim", [(0, 16, 6, 3, 8), (1, 8, 9, 5, 4), (2, 32, 16, 8, 16),
                                                      (3, 12, 4, 4, 4), (4, 24, 11, 1, 6)])
def test_lookup_and_read_equal_brute_force_over_all_slots(norm, seed, d_model, n, k, key_dim):
    torch.manual_seed(seed)
    memory = ProductKeyMemory(d_model, n, k, key_dim, query_norm=norm).eval()
    randomise_norm(memory, seed)
    x = torch.randn(40, d_model)  # random floats: no two slot scores tie
    with torch.no_grad():
        want_slots, want_w, want_out = brute_force_read(memory, x, norm)
        slots, weights = memory.lookup(x)
        out = memory(x)
    assert torch.equal(slots, want_slots)
    torch.testing.assert_close(weights, want_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, want_out, rtol=1e-5, atol=1e-6)


def test_training_batchnorm_normalises_with_the_batch_statistics():
    torch.manual_seed(5)
    memory = ProductKeyMemory(16, 8, 4, 8, query_norm="batchnorm").train()
    randomise_norm(memory, 5)
    x = torch.randn(64, 16) * 3 + 1
    want_slots, want_w, _ = brute_force_read(memory, x, "batchnorm")
    slots, weights = memory.lookup(x)
    assert torch.equal(slots, want_slots)
    torch.testing.assert_close(weights, want_w, rtol=1e-5, atol=1e-6)


def frozen_lookup(memory: ProductKeyMemory, x: torch.Tensor):
    """The lookup and read as they were before query normalisation existed, kept verbatim as the
    regression reference for ``memory_query_norm: none``."""
    q = F.linear(x.float(), memory.query.weight.float(), memory.query.bias.float())
    scores = torch.einsum("mhd,hnd->mhn", q.reshape(-1, 2, memory.subkeys.shape[-1]), memory.subkeys.float())
    top, idx = scores.topk(memory.k, dim=-1)
    cand = top[:, 0, :, None] + top[:, 1, None, :]
    best, pos = cand.flatten(1).topk(memory.k, dim=-1)
    slots = idx[:, 0].gather(1, pos // memory.k) * memory.n + idx[:, 1].gather(1, pos % memory.k)
    weights = torch.softmax(best, dim=-1)
    out = F.embedding_bag(slots, memory.values.weight, mode="sum", per_sample_weights=weights)
    return slots, weights, out


def test_no_query_norm_is_bit_identical_and_adds_no_state():
    torch.manual_seed(6)
    memory = ProductKeyMemory(16, 8, 4, 8)
    assert memory.query_norm is None
    assert set(memory.state_dict()) == {"query.weight", "query.bias", "subkeys", "values.weight"}
    x = torch.randn(3, 5, 16)
    slots, weights, out = frozen_lookup(memory, x.reshape(-1, 16))
    got_slots, got_weights = memory.lookup(x)
    assert torch.equal(got_slots.reshape(-1, 4), slots) and torch.equal(got_weights.reshape(-1, 4), weights)
    assert torch.equal(memory(x).reshape(-1, 16), out)


# -- read statistics ------------------------------------------------------------------------------
def test_read_statistics_of_a_hand_made_read_pattern():
    """16 slots; reads put weight 2, 1, 1 on slots 3, 7, 12: 3 of 16 slots read, read distribution
    (1/2, 1/4, 1/4) of entropy 1.5 ln 2 nats = 1.5 / 4 of the maximum ln 16."""
    memory = ProductKeyMemory(4, 4, 2, 2)
    memory.record_reads(torch.tensor([[3, 7], [3, 12]]), torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    memory.record_reads(torch.tensor([[3, 12]]), torch.tensor([[1.0, 0.5]]))  # a second batch adds up
    assert torch.equal(memory.usage[[3, 7, 12]], torch.tensor([2.0, 0.5, 1.0]))
    memory.usage[7] = 1.0  # the pattern of the docstring
    stats = read_statistics(memory.usage)
    assert stats["slot_fraction"] == 3 / 16
    assert stats["read_entropy"] == pytest.approx(1.5 * math.log(2), rel=1e-12)
    assert stats["read_entropy_frac"] == pytest.approx(1.5 / 4, rel=1e-12)
    assert memory.slots_touched() == 3


def test_read_statistics_extremes_and_the_mean_over_layers():
    uniform, single = torch.ones(9), torch.zeros(9)
    single[4] = 5.0
    assert read_statistics(uniform) == pytest.approx({"slot_fraction": 1.0, "read_entropy": math.log(9),
                                                      "read_entropy_frac": 1.0})
    assert read_statistics(single) == {"slot_fraction": 1 / 9, "read_entropy": 0.0, "read_entropy_frac": 0.0}
    a, b = ProductKeyMemory(4, 3, 2, 2), ProductKeyMemory(4, 3, 2, 2)
    a.usage.copy_(uniform)
    b.usage.copy_(single)
    mean = mean_read_statistics([a, b])
    assert mean == pytest.approx({"slot_fraction": (1 + 1 / 9) / 2, "read_entropy": math.log(9) / 2,
                                  "read_entropy_frac": 0.5})
    doubled = mean_read_statistics([a], reduce=lambda t: t * 2)  # a rank sum scales every slot alike
    assert doubled == pytest.approx(read_statistics(uniform))


def test_forward_records_each_read_weight_only_while_tracking():
    torch.manual_seed(7)
    memory = ProductKeyMemory(16, 6, 3, 8)
    x = torch.randn(20, 16, requires_grad=True)
    memory(x).sum().backward()  # not tracking: nothing written
    assert not memory.usage.any()
    memory.track_usage = True
    memory(x).sum().backward()  # tracking during a backward pass must not enter autograd
    slots, weights = memory.lookup(x)
    want = torch.zeros(36).index_add_(0, slots.reshape(-1), weights.detach().reshape(-1))
    torch.testing.assert_close(memory.usage, want)
    assert not memory.usage.requires_grad
    memory.reset_usage()
    assert not memory.usage.any()


# -- the options inside ELASTIC -------------------------------------------------------------------
def elastic(norm: str) -> ModelConfig:
    return ModelConfig.from_flat(dict(num_items=30, d_model=16, n_heads=2, n_layers=2, num_experts=3, chunk_size=4,
                                      memory_subkeys=6, memory_topk=3, memory_key_dim=8, memory_query_norm=norm,
                                      dropout=0.0, max_positions=64))


@pytest.mark.parametrize("norm", NORMS)
def test_step_equals_forward_in_eval_with_each_query_norm(norm):
    torch.manual_seed(8)
    model = SequentialRecommender(elastic(norm))
    with torch.no_grad():  # a few training passes move BatchNorm's running statistics off their init
        for _ in range(3):
            model(torch.randint(1, 31, (4, 20)))
    model.eval()
    n = 2 * 4 + 7  # past two chunk boundaries: the memory is read
    items = torch.randint(1, 31, (3, n))
    with torch.no_grad():
        full, state = model(items), model.init_state(3)
        for t in range(n):
            hidden, state = model.step(state, items[:, t])
            assert float((hidden - full[:, t]).abs().max() / full[:, t].abs().max()) < 1e-5, (norm, t)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("length", [3, 8, 20])
def test_every_parameter_gets_a_gradient_with_each_query_norm(norm, length):
    """DDP hangs on a parameter without a gradient: the norm's too, also when no chunk has history."""
    torch.manual_seed(9)
    model = SequentialRecommender(elastic(norm))
    items = torch.randint(1, 31, (2, length + 1))
    model.loss(model(items[:, :-1]), items[:, 1:]).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    norms = [name for name, _ in model.named_parameters() if "query_norm" in name]
    assert bool(norms) == (norm != "none")


def test_a_bad_query_norm_names_the_key():
    with pytest.raises(ValueError, match=r"model\.encoder\.memory_query_norm: must be one of none, layernorm, "
                                         r"batchnorm \(got 'rms'\)"):
        elastic("rms")
    with pytest.raises(ValueError, match=r"model\.encoder\.memory_query_norm: needs memory_key_dim >= 4 "
                                         r"\(memory_key_dim is 2\) \(got 'layernorm'\)"):
        ModelConfig.from_flat(dict(num_items=30, memory_key_dim=2, memory_query_norm="layernorm"))
    ModelConfig.from_flat(dict(num_items=30, memory_key_dim=2, memory_query_norm="batchnorm"))  # per feature: fine


def test_validation_logs_the_read_statistics_of_its_own_reads(monkeypatch):
    """The LightningModule tracks reads over a validation epoch only, sums them over ranks (a
    stand-in strategy whose other rank read only slot 35, with weight 5) and logs the layer mean."""
    from types import SimpleNamespace

    from elastic_pl.config import EvalConfig, OptimConfig
    from elastic_pl.lightning_module import ElasticLightningModule

    torch.manual_seed(11)
    module = ElasticLightningModule.from_configs(elastic("none"), OptimConfig(), EvalConfig())
    other_rank = torch.zeros(36)
    other_rank[35] = 5.0
    module._trainer = SimpleNamespace(strategy=SimpleNamespace(reduce=lambda t, reduce_op: (
        t + other_rank if t.shape == other_rank.shape else t)))  # the usage vectors; val/fill's sums pass
    logged = {}
    monkeypatch.setattr(module, "log", lambda name, value, **kw: logged.__setitem__(name, float(value)))
    memories = module._memories()
    module.model(torch.randint(1, 31, (2, 20)))  # training reads: not counted
    module.on_validation_epoch_start()
    items = torch.randint(1, 31, (3, 20))
    batch = {"items": items, "target": torch.randint(1, 31, (3,)), "seen": items, "valid": torch.ones(3, dtype=bool)}
    module.validation_step(batch, 0)
    module.on_validation_epoch_end()
    module.model(torch.randint(1, 31, (2, 20)))  # tracking is off again
    # what the validation pass read, layer by layer, recomputed from each memory's own lookups
    reads = [torch.zeros(36) for _ in memories]

    def count(layer):
        def hook(memory, args, out):
            slots, weights = memory.lookup(args[0])
            reads[layer].index_add_(0, slots.reshape(-1), weights.reshape(-1))
        return hook

    hooks = [m.register_forward_hook(count(i)) for i, m in enumerate(memories)]
    with torch.no_grad():
        module.model.encode_last(items)
    for h in hooks:
        h.remove()
    per_layer = [read_statistics(r + other_rank) for r in reads]
    assert per_layer[0]["slot_fraction"] > 0
    for key in ("slot_fraction", "read_entropy", "read_entropy_frac"):
        assert logged[f"val/memory_{key}"] == pytest.approx(sum(s[key] for s in per_layer) / len(per_layer)), key


@pytest.mark.parametrize("norm", ["layernorm", "batchnorm"])
def test_serving_export_with_a_query_norm_matches_eager(norm, tmp_path):
    from elastic_pl.export import check_export, export_serving

    torch.manual_seed(12)
    model = SequentialRecommender(elastic(norm))
    with torch.no_grad():  # running statistics off their init
        model(torch.randint(1, 31, (4, 20)))
    export_serving(model.eval(), tmp_path, "torchscript")
    check_export(model, tmp_path)  # raises on a mismatch, encode_last and step
