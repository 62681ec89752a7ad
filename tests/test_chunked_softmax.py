"""The chunked full-catalog softmax CE (model/chunked_softmax.py) against the plain one
(losses.full_softmax): loss value and the gradients of the query and of the item matrix, for
random shapes, temperatures and chunk sizes."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from elastic_pl.model.chunked_softmax import chunked_full_softmax, default_chunk_rows
from elastic_pl.model.losses import full_softmax


def value_and_grads(fn, query, items, target, normalize: bool):
    q, w = query.clone().requires_grad_(), items.clone().requires_grad_()
    cand = F.normalize(w, dim=-1) if normalize else w  # a non-leaf item matrix, as with l2_normalize
    loss = fn(q, target, cand)
    (loss * 1.7).backward()  # an upstream gradient other than 1
    return loss.detach(), q.grad, w.grad


@pytest.mark.parametrize("seed", range(6))
def test_matches_the_plain_loss_fp32(seed):
    g = torch.Generator().manual_seed(seed)
    m, v, d = (int(x) for x in torch.randint(1, 90, (3,), generator=g))
    temperature = float(torch.empty(()).uniform_(0.05, 2.0, generator=g))
    chunk = [1, 3, m, m + 5, 0][seed % 5]
    query, items = torch.randn(m, d, generator=g), torch.randn(v + 1, d, generator=g)
    target = torch.randint(1, v + 1, (m,), generator=g)
    normalize = seed % 2 == 1
    ref = value_and_grads(lambda q, t, w: full_softmax(q, t, w, temperature), query, items, target, normalize)
    got = value_and_grads(lambda q, t, w: chunked_full_softmax(q, t, w, temperature, chunk), query, items, target,
                          normalize)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not got[2][0].any() or normalize  # the padding row is never a candidate


def test_no_grad_gives_the_value_only():
    query, items, target = torch.randn(10, 8), torch.randn(31, 8), torch.randint(1, 31, (10,))
    with torch.no_grad():
        value = chunked_full_softmax(query, target, items, 0.5, 4)
    assert torch.allclose(value, full_softmax(query, target, items, 0.5))
    assert default_chunk_rows(12_000) == 87 and default_chunk_rows(10**6) == 64


def test_the_loss_config_selects_it():
    from elastic_pl.config import ConfigError, load_config
    from elastic_pl.model import LOSSES

    cfg = load_config(None, ["model.loss=full_softmax"])
    assert cfg.model.loss.chunked and cfg.model.loss.chunk_rows == 0
    loss = LOSSES.get("full_softmax")
    chunked, plain = loss(cfg.model.loss), loss(dataclasses.replace(cfg.model.loss, chunked=False))
    query, items, target = torch.randn(9, 4), torch.randn(12, 4), torch.randint(1, 12, (9,))
    assert torch.allclose(chunked(query, target, items), plain(query, target, items))
    with pytest.raises(ConfigError, match="model.loss.chunk_rows"):
        load_config(None, ["model.loss=full_softmax", "model.loss.chunk_rows=-1"])
