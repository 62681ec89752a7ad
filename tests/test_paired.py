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


def test_the_interval_covers_the_true_difference_about_95_percent_of_the_time():
    """Coverage over repeated samples with a known true shift: a percentile bootstrap of the
    paired mean covers it in roughly 95% of the draws (a wrong resampling, e.g. unpaired or of
    the wrong size, lands far outside this band)."""
    rng = np.random.default_rng(2)
    covered, draws = 0, 300
    for i in range(draws):
        b = rng.random(200)
        a = b + 0.02 + rng.normal(0, 0.1, 200)  # true mean difference 0.02
        lo, hi = paired.paired_stats(a, b, resamples=400, seed=i)["ci95"]
        covered += lo <= 0.02 <= hi
    assert 0.90 <= covered / draws <= 0.98, covered / draws


def test_the_p_value_is_calibrated_under_no_difference_and_small_under_a_shift():
    rng = np.random.default_rng(4)
    null = [paired.paired_stats(b + rng.normal(0, 0.1, 150), b, resamples=300, seed=i)["p_value"]
            for i, b in enumerate(rng.random((200, 150)))]
    assert 0.01 <= np.mean(np.array(null) < 0.05) <= 0.10
    b = rng.random(400)
    shifted = paired.paired_stats(b + 0.05 + rng.normal(0, 0.1, 400), b, resamples=2000, seed=3)
    assert shifted["p_value"] < 0.01 and 0 < shifted["ci95"][0]


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="equal-length"):
        paired.paired_stats(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="equal-length"):
        paired.paired_stats(np.ones(0), np.ones(0))
