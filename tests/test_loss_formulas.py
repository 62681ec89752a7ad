"""Every registered loss against its formula written out row by row (tests/loss_bruteforce.py):
the value and the gradients w.r.t. the query and the item table, float64, to 1e-6.

The data are built so each correction matters: a catalog of V = 15 with M = 30 rows repeats
targets (logQ differs between candidates) and the uniform draws hit rows' targets (accidental
hits) as well as items no row targets (uniform-only candidates). The sampled losses draw from a
seeded torch.Generator; the reference draws the same ids from a copy of its state.
"""
from __future__ import annotations

import pytest
import torch

from elastic_pl.config import ConfigError, load_config
from elastic_pl.model import ENCODERS, LOSSES, ModelConfig, SequentialRecommender
from tests.loss_bruteforce import REFERENCES, draw, mean, reference_rows

V, M, D, K = 15, 30, 5, 12
SEED = 7
CONFIGS = [  # every registered loss, and each variant its keys select
    {"name": "full_softmax"},
    {"name": "sampled_softmax", "negatives": "uniform", "num_negatives": K},
    {"name": "sampled_softmax", "negatives": "in_batch"},
    {"name": "bce"},
    {"name": "in_batch_softmax"},
    {"name": "in_batch_softmax", "cross_rank": True},  # no process group: the same loss
    {"name": "mixed_softmax", "num_negatives": K},
    {"name": "mixed_softmax", "num_negatives": K, "cross_rank": True},
]
TOL = dict(rtol=1e-6, atol=1e-6)


def _id(cfg: dict) -> str:
    return "-".join(str(v) for v in cfg.values())


def make_data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(M, D, generator=g, dtype=torch.float64)
    items = torch.randn(V + 1, D, generator=g, dtype=torch.float64)
    target = torch.randint(1, V + 1, (M,), generator=g)
    return query, items, target


def build(cfg: dict, temperature: float):
    return LOSSES.get(cfg["name"])(LOSSES.config_from_dict({**cfg, "temperature": temperature}))


def value_and_grads(fn, *leaves):
    leaves = [x.detach().clone().requires_grad_(True) for x in leaves]
    value = fn(*leaves)
    value.backward()
    return value.detach(), [x.grad for x in leaves]


def test_every_registered_loss_has_a_formula():
    assert {c["name"] for c in CONFIGS} == set(LOSSES.names()) == set(REFERENCES)


def test_the_data_exercise_every_correction():
    _, _, target = make_data()
    counts = torch.bincount(target, minlength=V + 1)[1:]
    assert counts.max() > 1 and len(set(counts[counts > 0].tolist())) > 1  # logQ is not one constant
    negatives = set(draw(V, K, torch.Generator().manual_seed(SEED)))
    assert negatives & set(target.tolist())  # accidental hits for the rows with those targets
    assert negatives - set(target.tolist())  # uniform-only candidates (their logQ is K / V alone)


@pytest.mark.parametrize("temperature", [1.0, 0.3])
@pytest.mark.parametrize("cfg", CONFIGS, ids=_id)
def test_loss_matches_its_formula(cfg, temperature):
    query, items, target = make_data()
    loss = build(cfg, temperature)
    got, got_grads = value_and_grads(
        lambda q, e: loss(q, target, e, torch.Generator().manual_seed(SEED)), query, items)
    ref = {**cfg, "temperature": temperature}
    want, want_grads = value_and_grads(
        lambda q, e: mean(reference_rows(ref, q, target, e, torch.Generator().manual_seed(SEED))), query, items)
    torch.testing.assert_close(got.double(), want, **TOL)  # the built-in losses compute in float32
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, **TOL)


def recommender(cfg: dict, l2_normalize: bool) -> SequentialRecommender:
    loss = LOSSES.config_from_dict({**cfg, "temperature": 0.5})
    encoder = ENCODERS.default_config("gru4rec")  # not run: the loss reads the hidden states given
    model = SequentialRecommender(ModelConfig(num_items=V, d_model=D, n_layers=1, dropout=0.0,
                                              l2_normalize=l2_normalize, encoder=encoder, loss=loss))
    return model.double()


@pytest.mark.parametrize("l2_normalize", [False, True])
@pytest.mark.parametrize("cfg", CONFIGS, ids=_id)
def test_padding_rows_are_excluded(cfg, l2_normalize):
    """Through the model: positions with target 0 take no part (value, and zero gradient there)."""
    model = recommender(cfg, l2_normalize)
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 9, D, generator=g, dtype=torch.float64).requires_grad_(True)
    targets = torch.randint(1, V + 1, (4, 9), generator=g)
    targets[:, :3] = 0  # left padding
    targets[2, 5] = 0  # a hole
    table = model.embedding.items.weight
    got = model.loss(hidden, targets, torch.Generator().manual_seed(SEED))
    got_h, got_e = torch.autograd.grad(got, [hidden, table])

    keep = [(b, t) for b in range(4) for t in range(9) if targets[b, t] > 0]  # row-major, as the model
    q = torch.stack([hidden[b, t] for b, t in keep])
    e = table
    if l2_normalize:
        q = q / q.pow(2).sum(-1, keepdim=True).sqrt()
        e = table / table.pow(2).sum(-1, keepdim=True).clamp_min(1e-24).sqrt()  # row 0 (padding) is zero
    y = torch.stack([targets[b, t] for b, t in keep])
    want = mean(reference_rows({**cfg, "temperature": 0.5}, q, y, e, torch.Generator().manual_seed(SEED)))
    want_h, want_e = torch.autograd.grad(want, [hidden, table])
    torch.testing.assert_close(got.double(), want, **TOL)  # the built-in losses compute in float32
    torch.testing.assert_close(got_h, want_h, **TOL)
    torch.testing.assert_close(got_e, want_e, **TOL)
    assert float(got_h[targets == 0].abs().max()) == 0.0


@pytest.mark.parametrize("override,key", [
    (["model.loss=mixed_softmax", "model.loss.num_negatives=0"], "model.loss.num_negatives"),
    (["model.loss=mixed_softmax", "model.loss.temperature=0"], "model.loss.temperature"),
    (["model.loss=full_softmax", "model.loss.cross_rank=true"], "model.loss.cross_rank"),
])
def test_bad_keys_of_the_new_losses_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, override)
