"""Row-sparse item-table updates (elastic_pl.sparse_optim, elastic_pl.sparse_rows).

Each rule is checked against a plain per-row loop written from its definition, and against an
independent torch optimizer where the two coincide (lazy Adam with every row touched = Adam;
row-wise Adagrad with D = 1 = Adagrad). Untouched rows and their state stay bitwise unchanged.
"""
from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

from elastic_pl.model import ModelConfig, SequentialRecommender
from elastic_pl.sparse_optim import ROW_RULES, ItemTableOptimizer, touched_rows
from elastic_pl.sparse_rows import WholeTableRead, sparse_table_reads

LR, BETAS, EPS = 0.05, (0.9, 0.98), 1e-8


# -- plain references, one row at a time, from the definitions -----------------------------------
def reference_adagrad(w, grads, lr=LR, eps=EPS):
    w, acc = w.clone().double(), torch.zeros(w.shape[0], dtype=torch.float64)
    for g in grads:
        for r in range(w.shape[0]):
            gr = g[r].double()
            if torch.any(gr != 0):
                acc[r] += float((gr * gr).mean())
                w[r] -= lr * gr / (math.sqrt(acc[r]) + eps)
    return w


def reference_lazy_adam(w, grads, lr=LR, betas=BETAS, eps=EPS):
    (b1, b2), w = betas, w.clone().double()
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        for r in range(w.shape[0]):
            gr = g[r].double()
            if torch.any(gr != 0):
                m[r] = b1 * m[r] + (1 - b1) * gr
                v[r] = b2 * v[r] + (1 - b2) * gr * gr
                w[r] -= lr / (1 - b1**t) * m[r] / ((v[r] / (1 - b2**t)).sqrt() + eps)
    return w


REFERENCES = {"rowwise_adagrad": reference_adagrad, "lazy_adam": reference_lazy_adam}


def random_grads(rows: int, dim: int, steps: int, seed: int, sparse: bool):
    """Per step a gradient that is zero on a random subset of rows (dense, or sparse COO with
    duplicate row entries summing to the same dense gradient)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        dense = torch.randn(rows, dim, generator=g) * (torch.rand(rows, 1, generator=g) < 0.3)
        if not sparse:
            out.append(dense)
            continue
        ids = dense.ne(0).any(1).nonzero().squeeze(1)
        half = dense[ids] * torch.rand(len(ids), 1, generator=g)  # split each row into two entries
        idx = torch.cat([ids, ids]).unsqueeze(0)
        out.append(torch.sparse_coo_tensor(idx, torch.cat([half, dense[ids] - half]), (rows, dim), check_invariants=True))
    return out


def step_table(rule: str, w0: torch.Tensor, grads):
    """Steps an ItemTableOptimizer whose only dense parameter has no gradient."""
    table = torch.nn.Parameter(w0.clone())
    other = torch.nn.Parameter(torch.zeros(3))
    opt = ItemTableOptimizer([{"params": [other, table]}], table, rule, lr=1e-3, betas=BETAS, eps=EPS, table_lr=LR)
    snapshots = []
    for g in grads:
        before = table.detach().clone()
        table.grad = g
        opt.step()
        snapshots.append((before, table.detach().clone()))
    return table.detach(), opt, snapshots


def as_dense(g: torch.Tensor) -> torch.Tensor:
    return g.to_dense() if g.is_sparse else g


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("rule", sorted(ROW_RULES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rule_equals_the_per_row_reference(rule, seed, sparse):
    w0 = torch.randn(40, 5, generator=torch.Generator().manual_seed(100 + seed))
    grads = random_grads(40, 5, steps=6, seed=seed, sparse=sparse)
    got, opt, snapshots = step_table(rule, w0, grads)
    want = REFERENCES[rule](w0, [as_dense(g) for g in grads])
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    for (before, after), g in zip(snapshots, grads):
        untouched = ~as_dense(g).ne(0).any(1)
        assert untouched.any() and (~untouched).any()
        assert torch.equal(after[untouched], before[untouched])  # bitwise
        assert not torch.equal(after[~untouched], before[~untouched])


def test_untouched_rows_keep_their_state_bitwise():
    w0 = torch.randn(30, 4)
    grads = random_grads(30, 4, steps=2, seed=7, sparse=True)
    _, opt, _ = step_table("lazy_adam", w0, grads[:1])
    state = {k: v.clone() for k, v in opt.state[opt.param_groups[-1]["params"][0]].items()}
    table = opt.param_groups[-1]["params"][0]
    table.grad = grads[1]
    opt.step()
    untouched = ~as_dense(grads[1]).ne(0).any(1)
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(opt.state[table][key][untouched], state[key][untouched]), key


def test_lazy_adam_with_every_row_touched_is_adam():
    w0 = torch.randn(20, 6)
    grads = [torch.randn(20, 6) for _ in range(5)]
    got, _, _ = step_table("lazy_adam", w0, grads)
    p = torch.nn.Parameter(w0.clone())
    adam = torch.optim.Adam([p], lr=LR, betas=BETAS, eps=EPS)
    for g in grads:
        p.grad = g.clone()
        adam.step()
    torch.testing.assert_close(got, p.detach(), rtol=1e-5, atol=1e-6)


def test_rowwise_adagrad_with_one_column_is_adagrad():
    w0 = torch.randn(25, 1)
    grads = [torch.randn(25, 1) for _ in range(5)]
    got, _, _ = step_table("rowwise_adagrad", w0, grads)
    p = torch.nn.Parameter(w0.clone())
    adagrad = torch.optim.Adagrad([p], lr=LR, eps=EPS)
    for g in grads:
        p.grad = g.clone()
        adagrad.step()
    torch.testing.assert_close(got, p.detach(), rtol=1e-5, atol=1e-6)


def test_touched_rows_of_sparse_and_dense_gradients_agree():
    (sparse,) = random_grads(50, 3, steps=1, seed=4, sparse=True)
    rows_s, vals_s = touched_rows(sparse)
    rows_d, vals_d = touched_rows(sparse.to_dense())
    assert torch.equal(rows_s, rows_d)
    torch.testing.assert_close(vals_s, vals_d)
    # a row read with an exactly zero gradient is not touched
    zero_entry = torch.sparse_coo_tensor(torch.tensor([[2, 5]]), torch.tensor([[0.0, 0.0], [1.0, 0.0]]), (8, 2))
    assert touched_rows(zero_entry)[0].tolist() == [5]


def test_dense_groups_step_exactly_like_adamw_and_the_schedule_drives_the_table():
    torch.manual_seed(0)
    table, dense = torch.nn.Parameter(torch.randn(10, 3)), torch.nn.Parameter(torch.randn(4, 3))
    twin = torch.nn.Parameter(dense.detach().clone())
    groups = [{"params": [dense], "weight_decay": 0.1}, {"params": [table], "weight_decay": 0.0}]
    opt = ItemTableOptimizer(groups, table, "rowwise_adagrad", lr=1e-2, betas=BETAS, table_lr=0.5)
    plain = torch.optim.AdamW([{"params": [twin], "weight_decay": 0.1}], lr=1e-2, betas=BETAS)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0 / (s + 1)) for o in (opt, plain)]
    for _ in range(4):
        g = torch.randn(4, 3)
        dense.grad, twin.grad = g.clone(), g.clone()
        table.grad = torch.randn(10, 3)
        opt.step()
        plain.step()
        for s in scheds:
            s.step()
        assert torch.equal(dense, twin)
    assert opt.param_groups[-1]["lr"] == pytest.approx(0.5 / 5)


@pytest.mark.parametrize("rule", sorted(ROW_RULES))
def test_state_dict_round_trip_continues_bitwise(rule):
    w0 = torch.randn(30, 4)
    grads = random_grads(30, 4, steps=6, seed=11, sparse=True)
    straight, _, _ = step_table(rule, w0, grads)
    first, opt, _ = step_table(rule, w0, grads[:3])
    buf = io.BytesIO()
    torch.save({"table": first, "optim": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    table = torch.nn.Parameter(saved["table"].clone())
    other = torch.nn.Parameter(torch.zeros(3))
    resumed = ItemTableOptimizer([{"params": [other, table]}], table, rule, lr=1e-3, betas=BETAS, eps=EPS, table_lr=LR)
    resumed.load_state_dict(saved["optim"])
    for g in grads[3:]:
        table.grad = g
        resumed.step()
    assert torch.equal(table.detach(), straight)


def test_clip_grad_norm_counts_the_coalesced_sparse_gradient():
    table, dense = torch.nn.Parameter(torch.randn(12, 3)), torch.nn.Parameter(torch.randn(5))
    (sparse,) = random_grads(12, 3, steps=1, seed=3, sparse=True)
    dense_grad = torch.randn(5) * 10
    opt = ItemTableOptimizer([{"params": [dense, table]}], table, "lazy_adam", lr=1e-3)
    table.grad, dense.grad = sparse, dense_grad.clone()
    norm = opt.clip_grad_norm_(1.0)
    twin_t, twin_d = torch.nn.Parameter(table.detach().clone()), torch.nn.Parameter(dense.detach().clone())
    twin_t.grad, twin_d.grad = sparse.to_dense(), dense_grad.clone()
    want = torch.nn.utils.clip_grad_norm_([twin_d, twin_t], 1.0)
    torch.testing.assert_close(norm, want)
    torch.testing.assert_close(table.grad.to_dense(), twin_t.grad)
    torch.testing.assert_close(dense.grad, twin_d.grad)


# -- sparse reads of the real model's table ------------------------------------------------------------
def _model(**kw) -> SequentialRecommender:
    cfg = dict(num_items=300, d_model=16, n_heads=2, n_layers=1, num_experts=4, chunk_size=8,
               memory_subkeys=8, memory_topk=4, memory_key_dim=8, max_positions=32, dropout=0.0)
    if kw.get("loss", "sampled_softmax") == "sampled_softmax":
        cfg["num_negatives"] = 20
    torch.manual_seed(0)
    return SequentialRecommender(ModelConfig.from_flat({**cfg, **kw}))


def _loss(model, items, targets, sparse: bool):
    gen = torch.Generator().manual_seed(5)  # the same negatives both times
    table = model.embedding.items.weight
    ctx = sparse_table_reads(table) if sparse else torch.enable_grad()
    with ctx:
        loss = model.loss(model(items), targets, generator=gen)
    loss.backward()
    grad, table.grad = table.grad, None
    return loss.detach(), grad


@pytest.mark.parametrize("loss", ["sampled_softmax", "bce"])
def test_model_loss_under_sparse_reads_has_the_dense_gradient(loss):
    model = _model(loss=loss)
    g = torch.Generator().manual_seed(1)
    items = torch.randint(0, 301, (4, 12), generator=g)
    items[:, :3] = 0
    targets = torch.randint(1, 301, (4, 12), generator=g) * (items != 0)
    loss_d, grad_d = _loss(model, items, targets, sparse=False)
    model.zero_grad()
    loss_s, grad_s = _loss(model, items, targets, sparse=True)
    assert not grad_d.is_sparse and grad_s.is_sparse
    assert torch.equal(loss_s, loss_d)  # the same rows read: the same values
    torch.testing.assert_close(grad_s.to_dense(), grad_d, rtol=1e-6, atol=1e-8)
    read = torch.unique(torch.cat([items.flatten(), targets.flatten()]))
    assert set(read[read > 0].tolist()) <= set(grad_s.coalesce().indices()[0].tolist())


@pytest.mark.parametrize("override", [{"loss": "full_softmax"}, {"l2_normalize": True}])
def test_whole_table_reads_are_refused_under_sparse_reads(override):
    model = _model(**override)
    items = torch.randint(1, 301, (2, 6))
    with pytest.raises(WholeTableRead, match="optim.item_table=dense"):
        with sparse_table_reads(model.embedding.items.weight):
            model.loss(model(items), items)


def test_reads_without_gradients_pass_under_sparse_reads():
    model = _model()
    table = model.embedding.items.weight
    with sparse_table_reads(table), torch.no_grad():
        assert torch.equal(F.normalize(table, dim=-1), F.normalize(table.detach(), dim=-1))
        assert table[1:].shape == (300, 16)
