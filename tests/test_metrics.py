"""Full-ranking metrics against a brute-force oracle (explicit per-user loops, no argsort).

Embeddings are quantised (small integers or multiples of 1/64) so every score is exact in fp32,
bf16 inputs and float64: the oracle and the implementation see identical scores, ties included.
"""

import math

import numpy as np
import pytest
import torch

from elastic_pl.metrics import FullRankingMetrics, target_ranks

KS_HR = (1, 5, 10, 20, 50)
KS_NDCG = (5, 10, 20, 50)


# ----------------------------------------------------------------------------- oracles
def oracle_rank(q, emb, t, seen_row):
    """1 + #{j in 1..V, j != t, j not in seen, score_j >= score_t}, one item at a time."""
    if t == 0:
        return 0
    excluded = set() if seen_row is None else {int(s) for s in seen_row if s != 0}
    st = float(np.dot(q, emb[t]))
    rank = 1
    for j in range(1, emb.shape[0]):
        if j == t or j in excluded:
            continue
        if float(np.dot(q, emb[j])) >= st:
            rank += 1
    return rank


def oracle_ranks(query, items, target, seen):
    q = query.double().numpy()
    e = items.double().numpy()
    return [
        oracle_rank(q[b], e, int(target[b]), None if seen is None else seen[b].tolist())
        for b in range(q.shape[0])
    ]


def oracle_metrics(ranks, valid):
    users = [int(r) for r, v in zip(ranks, valid) if v]
    n = len(users)
    out = {}
    for k in KS_HR:
        out[f"hr@{k}"] = sum(1.0 for r in users if r <= k) / n
    for k in KS_NDCG:
        out[f"ndcg@{k}"] = sum(1.0 / math.log2(r + 1) for r in users if r <= k) / n
    out["mrr"] = sum(1.0 / r for r in users) / n
    out["count"] = n
    return out


def assert_metrics_equal(got, want):
    assert set(got) == set(want)
    assert int(got["count"]) == want["count"]
    for key, value in want.items():
        assert float(got[key]) == pytest.approx(value, rel=1e-12, abs=1e-15), key


# ----------------------------------------------------------------------------- data
def random_case(seed, quant):
    g = torch.Generator().manual_seed(seed)
    B = int(torch.randint(1, 25, (1,), generator=g))
    V = int(torch.randint(1, 200, (1,), generator=g))
    D = int(torch.randint(1, 12, (1,), generator=g))
    M = int(torch.randint(0, 30, (1,), generator=g))
    if quant == "int":  # values in [-2, 2]: lots of exact ties
        items = torch.randint(-2, 3, (V + 1, D), generator=g).float()
        query = torch.randint(-2, 3, (B, D), generator=g).float()
    else:  # multiples of 1/64 in [-2, 2]: exact in bf16 and fp32, few ties
        items = torch.randint(-128, 129, (V + 1, D), generator=g).float() / 64
        query = torch.randint(-128, 129, (B, D), generator=g).float() / 64
    items[0] = 7.0  # padding row with a huge score: must never be ranked
    target = torch.randint(1, V + 1, (B,), generator=g)
    target[torch.rand(B, generator=g) < 0.15] = 0  # padding samples
    # History: duplicates (ids drawn from a small range), 0-padding, sometimes the target.
    seen = torch.randint(0, max(2, V // 3) + 1, (B, M), generator=g)
    if M > 0:
        put_target = torch.rand(B, generator=g) < 0.5
        seen[put_target, 0] = target[put_target]
        seen[:, -1] = 0
    return query, items, target, seen


# ----------------------------------------------------------------------------- target_ranks
@pytest.mark.parametrize("quant", ["int", "frac"])
@pytest.mark.parametrize("seed", range(8))
def test_ranks_match_oracle(seed, quant):
    query, items, target, seen = random_case(seed, quant)
    V = items.shape[0] - 1
    valid = target > 0
    want_filtered = oracle_ranks(query, items, target, seen)
    want_all = oracle_ranks(query, items, target, None)
    for chunk in (1, 3, 7, max(1, V - 1), V + 5, 65536):  # includes non-divisors of V
        got = target_ranks(query, items, target, seen, chunk_size=chunk)
        assert got.dtype == torch.int64
        assert got[valid].tolist() == [r for r, v in zip(want_filtered, valid) if v], chunk
        got_all = target_ranks(query, items, target, None, chunk_size=chunk)
        assert got_all[valid].tolist() == [r for r, v in zip(want_all, valid) if v], chunk
    assert (got[~valid] == 0).all()


@pytest.mark.parametrize("seed", range(4))
def test_bf16_inputs_rank_like_fp32(seed):
    query, items, target, seen = random_case(100 + seed, "frac")
    want = oracle_ranks(query, items, target, seen)
    got = target_ranks(query.bfloat16(), items.bfloat16(), target, seen, chunk_size=5)
    valid = target > 0
    assert got[valid].tolist() == [r for r, v in zip(want, valid) if v]


def test_scores_are_upcast_to_fp32():
    # In bf16, 1 + 1/256 rounds to 1 and item 2 would tie item 1 (pessimistic rank 2).
    query = torch.tensor([[1.0, 1.0 / 256]], dtype=torch.bfloat16)
    items = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0]], dtype=torch.bfloat16)
    assert target_ranks(query, items, torch.tensor([1]), None).tolist() == [1]
    assert target_ranks(query, items, torch.tensor([2]), None).tolist() == [2]


def test_ties_are_pessimistic():
    items = torch.ones(6, 3)  # every item scores the same
    items[0] = 0.0
    query = torch.ones(2, 3)
    target = torch.tensor([1, 4])
    assert target_ranks(query, items, target, None, chunk_size=2).tolist() == [5, 5]
    items[3] = 2.0  # strictly better than everything else
    assert target_ranks(query, items, torch.tensor([3, 2]), None).tolist() == [1, 5]


def test_seen_filtering_duplicates_target_and_padding_row():
    items = torch.arange(6, dtype=torch.float32).unsqueeze(1)  # score of item j = j
    items[0] = 100.0  # padding row: never ranked even though it scores highest
    query = torch.ones(3, 1)
    target = torch.tensor([2, 2, 5])
    seen = torch.tensor(
        [
            [4, 4, 4, 0, 0],  # duplicate seen id: removed once -> rank 1 + |{3, 5}| = 3
            [2, 5, 2, 3, 0],  # target inside seen stays ranked; 3, 5 excluded -> rank 2
            [5, 5, 1, 0, 0],  # target seen twice, best item -> rank 1
        ]
    )
    assert target_ranks(query, items, target, seen, chunk_size=2).tolist() == [3, 2, 1]
    assert target_ranks(query, items, target, None, chunk_size=4).tolist() == [4, 4, 1]
    assert target_ranks(query, items, target, seen[:, :0]).tolist() == [4, 4, 1]


def test_target_padding_rows_get_rank_zero():
    items = torch.randn(10, 4)
    ranks = target_ranks(torch.randn(3, 4), items, torch.tensor([0, 3, 0]), None, chunk_size=4)
    assert ranks[0] == 0 and ranks[2] == 0 and ranks[1] >= 1


def test_bad_arguments():
    with pytest.raises(ValueError):
        target_ranks(torch.randn(2, 3), torch.randn(5, 4), torch.tensor([1, 2]), None)
    with pytest.raises(ValueError):
        target_ranks(torch.randn(2, 3), torch.randn(5, 3), torch.tensor([1, 2]), None, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_ranks_on_cuda_match_cpu():
    for seed in range(4):
        query, items, target, seen = random_case(200 + seed, "frac")
        want = target_ranks(query, items, target, seen, chunk_size=7)
        got = target_ranks(
            query.cuda().bfloat16(), items.cuda().bfloat16(), target.cuda(), seen.cuda(), 7
        )
        assert got.device.type == "cuda"
        assert got.cpu().tolist() == want.tolist()


# ----------------------------------------------------------------------------- metrics
def random_ranks(seed, n):
    g = torch.Generator().manual_seed(seed)
    ranks = torch.randint(1, 80, (n,), generator=g)
    at_k = torch.rand(n, generator=g) < 0.3  # ranks exactly at a cut-off k
    ks = torch.tensor(KS_HR + KS_NDCG)
    ranks[at_k] = ks[torch.randint(0, len(ks), (int(at_k.sum()),), generator=g)]
    valid = torch.rand(n, generator=g) < 0.8
    valid[0] = True
    ranks[~valid] = torch.randint(-3, 3, (int((~valid).sum()),), generator=g)  # garbage
    return ranks, valid


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_oracle_and_accumulate(seed):
    ranks, valid = random_ranks(seed, 97)
    want = oracle_metrics(ranks.tolist(), valid.tolist())

    one_shot = FullRankingMetrics()
    one_shot.update(ranks, valid)
    assert_metrics_equal(one_shot.compute(), want)

    split = FullRankingMetrics()
    for lo, hi in ((0, 1), (1, 40), (40, 41), (41, 97)):
        split.update(ranks[lo:hi], valid[lo:hi])
    assert_metrics_equal(split.compute(), want)

    stepped = FullRankingMetrics()  # forward() also accumulates into the global state
    for lo in range(0, 97, 16):
        stepped(ranks[lo : lo + 16], valid[lo : lo + 16])
    assert_metrics_equal(stepped.compute(), want)


def test_metrics_at_k_boundaries():
    m = FullRankingMetrics()
    m.update(torch.tensor([1, 3, 5, 50, 51, 9]), torch.tensor([True] * 5 + [False]))
    out = m.compute()
    assert int(out["count"]) == 5
    assert float(out["hr@1"]) == pytest.approx(1 / 5)
    assert float(out["hr@5"]) == pytest.approx(3 / 5)  # rank == k is a hit
    assert float(out["hr@50"]) == pytest.approx(4 / 5)
    want_ndcg5 = (1.0 + 0.5 + 1 / math.log2(6)) / 5  # 1/log2(2), 1/log2(4), 1/log2(6)
    assert float(out["ndcg@5"]) == pytest.approx(want_ndcg5)
    assert float(out["mrr"]) == pytest.approx((1 + 1 / 3 + 1 / 5 + 1 / 50 + 1 / 51) / 5)
    assert sorted(out) == sorted(
        [f"hr@{k}" for k in KS_HR] + [f"ndcg@{k}" for k in KS_NDCG] + ["mrr", "count"]
    )


def test_metrics_reset_and_custom_ks():
    m = FullRankingMetrics(ks_hr=(2,), ks_ndcg=(3,))
    m.update(torch.tensor([2, 4]), torch.tensor([True, True]))
    out = m.compute()
    assert set(out) == {"hr@2", "ndcg@3", "mrr", "count"}
    assert float(out["hr@2"]) == 0.5
    m.reset()
    m.update(torch.tensor([1]), torch.tensor([True]))
    assert int(m.compute()["count"]) == 1 and float(m.compute()["mrr"]) == 1.0


def test_end_to_end_ranks_to_metrics():
    query, items, target, seen = random_case(7, "int")
    valid = target > 0
    want = oracle_metrics(oracle_ranks(query, items, target, seen), valid.tolist())
    m = FullRankingMetrics()
    m.update(target_ranks(query, items, target, seen, chunk_size=11), valid)
    assert_metrics_equal(m.compute(), want)
