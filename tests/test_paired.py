"""bench/paired.py: per-user metrics agree with FullRankingMetrics; the paired statistics behave."""
import numpy as np
import pytest
import torch

from bench import paired
from elastic_pl.metrics import FullRankingMetrics


def test_per_user_means_equal_full_ranking_metrics():
    rng = np.random.default_rng(0)
    ranks = rng.integers(1, 80, size=500)
    metrics = FullRankingMetrics()
    metrics.update(torch.from_numpy(ranks), torch.ones(500, dtype=torch.bool))
    expected = {k: float(v) for k, v in metrics.compute().items()}
    for metric in paired.METRICS:
        assert paired.per_user(ranks, metric).mean() == pytest.approx(expected[metric], abs=1e-12), metric


def test_identical_sides_have_no_difference():
    a = np.random.default_rng(1).random(300)
    out = paired.paired_stats(a, a.copy(), resamples=500)
    assert out["diff"] == 0.0 and out["ci95"] == [0.0, 0.0] and out["p_value"] == 1.0


def test_a_clear_shift_is_found_and_the_interval_covers_it():
    rng = np.random.default_rng(2)
    b = rng.random(400)
    a = b + 0.05 + rng.normal(0, 0.1, 400)
    out = paired.paired_stats(a, b, resamples=2000, seed=3)
    lo, hi = out["ci95"]
    assert out["diff"] == pytest.approx((a - b).mean())
    assert 0 < lo < 0.05 < hi and out["p_value"] < 0.01
    # a pure-noise difference is not called significant and its interval covers zero
    noise = paired.paired_stats(b + rng.normal(0, 0.1, 400), b, resamples=2000, seed=3)
    assert noise["ci95"][0] < 0 < noise["ci95"][1] and noise["p_value"] > 0.01


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="equal-length"):
        paired.paired_stats(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="equal-length"):
        paired.paired_stats(np.ones(0), np.ones(0))
