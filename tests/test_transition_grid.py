"""bench/transition_grid.py scores all settings of a window in one pass over the validation
batches: each score must equal the baseline evaluated alone with that setting."""
from __future__ import annotations

import pytest

from bench import transition_grid
from elastic_pl import transition
from elastic_pl.config import load_config
from tests.shard_fixtures import random_sequences, write_shards


def test_one_pass_grid_equals_each_setting_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(transition_grid, "WINDOWS", (1, 3))
    monkeypatch.setattr(transition_grid, "LASTS", (1, 2, 4))
    monkeypatch.setattr(transition_grid, "DECAYS", (0.3, 1.0))
    write_shards(str(tmp_path / "shards"), random_sequences(60, 30, min_len=3, max_len=16, seed=7), num_shards=2,
                 num_items=30)
    config = tmp_path / "data.yaml"
    config.write_text(f"data:\n  loader:\n    data_dir: {tmp_path}/shards\n    eval_batch_size: 7\n")
    scores = transition_grid.grid_scores(str(config))
    assert len(scores) == 2 * (1 + 2 * 2)  # last=1 once per window, whatever the decay
    cfg = load_config(str(config), ["data.loader.num_workers=0"])
    for p, value in scores.items():
        alone = transition.evaluate_transition(cfg, "valid", p)["val/ndcg@10"]
        assert value == pytest.approx(alone, abs=1e-7), p
    assert len(set(round(v, 6) for v in scores.values())) > 1  # the settings do differ here
    best = transition_grid.choose({"a": scores})[0]
    assert best[0] == pytest.approx(1.0) and scores[best[1]] == max(scores.values())


def test_ranks_from_scores_equal_target_ranks():
    """The baselines' whole-matrix ranking against the models' chunked one, on random scores (no
    ties) with a random history filter."""
    import torch

    from elastic_pl.metrics import ranks_from_scores, target_ranks

    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        b, v, d = (int(x) for x in torch.randint(1, 40, (3,), generator=g))
        query, items = torch.randn(b, d, generator=g), torch.randn(v + 1, d, generator=g)
        target = torch.randint(0, v + 1, (b,), generator=g)  # 0: a padding row, rank 0
        seen = torch.randint(0, v + 1, (b, 6), generator=g)
        scores = torch.cat([torch.full((b, 1), 1e9), query @ items[1:].T], dim=1)  # column 0 never ranks
        for filt in (None, seen):
            assert torch.equal(ranks_from_scores(scores, target, filt), target_ranks(query, items, target, filt, 7))
