"""Token-budget batches (data.loader.max_tokens): the cutting rule against a plain loop, the
budget, the fill on heavy-tailed lengths, determinism, nothing dropped, users longer than the
budget."""
from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from data_pipeline import batching
from data_pipeline.datamodule import ElasticDataModule, LoaderConfig
from tests.shard_fixtures import random_sequences, write_shards


def plain_cut(lengths: list[int], max_tokens: int) -> list[int]:
    """Reference: add sorted rows one by one, start a new batch when the next would not fit."""
    bounds, rows, longest = [0], 0, 0
    for i, n in enumerate(lengths):
        if rows and (rows + 1) * max(longest, n) > max_tokens:
            bounds.append(i)
            rows, longest = 0, 0
        rows, longest = rows + 1, max(longest, n)
    if lengths:
        bounds.append(len(lengths))
    return bounds


@pytest.mark.parametrize("seed", range(20))
def test_greedy_cut_matches_a_plain_loop(seed):
    rng = np.random.default_rng(seed)
    budget = int(rng.integers(1, 300))
    lengths = np.sort(rng.integers(1, budget + 1, size=int(rng.integers(0, 200))))
    assert batching.greedy_cut(lengths, budget).tolist() == plain_cut(lengths.tolist(), budget)


def heavy_tailed(tmp_path, num_users=4000, sigma=1.5, seed=0):
    """Lognormal lengths (sigma >= 1.5: a few users hold most events)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.rint(rng.lognormal(np.log(40) - sigma**2 / 2, sigma, num_users)), 4, 3000).astype(int)
    seqs = [rng.integers(1, 800, size=n).astype(np.int32) for n in lengths]
    write_shards(str(tmp_path), seqs, 4, block_size=50, num_items=800)
    return seqs


def dm_for(tmp_path, rank=0, world_size=1, **kw) -> ElasticDataModule:
    cfg = dict(data_dir=str(tmp_path), max_len=256, batch_size=64, eval_batch_size=64, num_workers=0,
               shuffle_buffer=512, max_tokens=2048)
    cfg.update(kw)
    dm = ElasticDataModule(LoaderConfig(**cfg), rank=rank, world_size=world_size)
    dm.setup()
    return dm


def fill(batches) -> float:
    real = sum(int((b["items"] != 0).sum()) for b in batches)
    return real / sum(b["items"].numel() for b in batches)


def test_budget_batches_are_full_and_within_budget_on_heavy_tailed_lengths(tmp_path):
    heavy_tailed(tmp_path)
    fixed = list(dm_for(tmp_path, max_tokens=None).train_dataloader())
    dm = dm_for(tmp_path)
    train = list(dm.train_dataloader())
    assert len(train) == dm.steps_per_epoch
    assert all(b["items"].numel() <= 2048 for b in train)
    assert fill(train) >= 0.9 > 0.5 > fill(fixed)  # the same data in batches of 64 users is mostly padding
    for split in ("valid", "test"):
        batches = list(dm.eval_dataset(split))
        assert all(b["items"].numel() <= 2048 for b in batches)
        assert fill(batches) >= 0.9


def test_budget_batches_keep_rows_intact(tmp_path):
    """Every training row is a window of one user's training part, as with fixed-size batches."""
    seqs = heavy_tailed(tmp_path, num_users=300)
    prefixes = {tuple(s[:-2].tolist()) for s in seqs}
    for b in dm_for(tmp_path, max_tokens=300, max_len=40).train_dataloader():
        for x, y in zip(b["items"].numpy(), b["targets"].numpy()):
            real = x > 0
            window = np.append(x[real], y[real][-1])
            assert any(window.tobytes() in np.asarray(p, dtype=np.int64).tobytes() for p in prefixes)


def test_same_batches_for_the_same_seed_epoch_rank_and_worker(tmp_path):
    heavy_tailed(tmp_path, num_users=600)

    def digest(**kw):
        return [b["items"].numpy().tobytes() for b in dm_for(tmp_path, steps_per_epoch=6, **kw).train_dataloader()]

    assert digest() == digest()
    assert digest() != digest(seed=1)
    assert digest(rank=0, world_size=2) != digest(rank=1, world_size=2)


def test_pool_yields_every_row_once_nothing_dropped():
    rng = np.random.default_rng(0)
    pulled = []

    def stream():  # rows (id, items) with unique ids; row 0 is longer than any other
        for i in itertools.count():
            pulled.append(i)
            yield i, np.arange(100 if i == 0 else int(rng.integers(1, 60)))

    max_tokens, pool = 128, 4
    out = batching.budget_batches(stream(), max_tokens, pool, np.random.default_rng(1), length=lambda r: len(r[1]))
    taken = Counter()
    for _ in range(2000):
        batch = next(out)
        assert len(batch) * max(len(r) for _, r in batch) <= max_tokens
        taken.update(i for i, _ in batch)
    assert max(taken.values()) == 1  # no row twice
    # a row not yet yielded waits in the current pool or the batch carried from the previous one,
    # each at most pool * max_tokens positions of rows at least 1 long
    waiting = set(pulled) - set(taken)
    assert 0 in taken and len(pulled) > 5000 and min(waiting) >= len(pulled) - 2 * pool * max_tokens


def test_a_user_longer_than_the_budget_is_an_error_naming_it_or_cut_when_asked(tmp_path):
    seqs = random_sequences(20, 50, min_len=4, max_len=10, seed=1)
    seqs[7] = np.arange(1, 41, dtype=np.int32)  # 40 events: a predict input of 40 items
    write_shards(str(tmp_path), seqs, 2, block_size=4)
    with pytest.raises(ValueError, match=r"user 7 has 40 events.*max_tokens=32.*truncate_to_budget"):
        dm_for(tmp_path, max_len=100, max_tokens=32).train_dataloader()
    dm = dm_for(tmp_path, max_len=100, max_tokens=32, truncate_to_budget=True)
    rows = {int(u): x for b in dm.eval_dataset("test") for u, x in zip(b["user"], b["items"].numpy())}
    np.testing.assert_array_equal(rows[7][rows[7] > 0], np.arange(8, 40))  # the last 32 of its history
    assert all(b["items"].numel() <= 32 for b in dm.train_dataloader())
    assert all(b["items"].numel() <= 32 for split in ("valid", "predict") for b in dm.eval_dataset(split))
    dm_for(tmp_path, max_len=100, max_tokens=40).train_dataloader()  # 40 items fit a budget of 40
    with pytest.raises(ValueError, match="user 7 has 40 events"):  # but not 39: predict reads all 40
        dm_for(tmp_path, max_len=100, max_tokens=39).train_dataloader()


def test_bad_budget_config_names_the_key():
    with pytest.raises(ValueError, match="max_tokens"):
        LoaderConfig(max_tokens=0)
