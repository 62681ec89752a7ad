"""FullRankingMetrics reduced over 2 gloo processes equals one process over all users.

Each rank gets a different, unequal share of the users, batched with padding rows (valid=False,
target 0) so both ranks run the same number of batches, as the evaluation DataModule does.
"""

import datetime
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from elastic_pl.metrics import FullRankingMetrics, target_ranks

WORLD = 2
NUM_USERS = 61
SPLIT = 40  # rank 0 gets users [0, 40), rank 1 gets [40, 61)
BATCH = 8
NUM_BATCHES = 6  # ceil(40 / 8) = 5 for rank 0: both ranks padded to 6 batches
CHUNK = 13


def make_data():
    g = torch.Generator().manual_seed(1234)
    V, D, M = 150, 6, 12
    items = torch.randint(-2, 3, (V + 1, D), generator=g).float()  # integer scores: ties
    query = torch.randint(-2, 3, (NUM_USERS, D), generator=g).float()
    target = torch.randint(1, V + 1, (NUM_USERS,), generator=g)
    seen = torch.randint(0, V + 1, (NUM_USERS, M), generator=g)
    seen[::3, 0] = target[::3]
    return query, items, target, seen


def padded_batches(query, target, seen):
    """Yield NUM_BATCHES batches of BATCH rows; rows past the shard are padding samples."""
    n = query.shape[0]
    for i in range(NUM_BATCHES):
        idx = torch.arange(i * BATCH, (i + 1) * BATCH)
        valid = idx < n
        idx = idx.clamp(max=max(n - 1, 0))
        yield query[idx], torch.where(valid, target[idx], 0), seen[idx], valid


def single_process_reference():
    query, items, target, seen = make_data()
    metric = FullRankingMetrics()
    ranks = target_ranks(query, items, target, seen, CHUNK)
    metric.update(ranks, torch.ones(NUM_USERS, dtype=torch.bool))
    return metric.compute()


def worker(rank, port, out_path):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        query, items, target, seen = make_data()
        shard = slice(0, SPLIT) if rank == 0 else slice(SPLIT, NUM_USERS)
        metric = FullRankingMetrics()
        for q, t, s, valid in padded_batches(query[shard], target[shard], seen[shard]):
            ranks = target_ranks(q, items, t, s, CHUNK)
            ranks = torch.where(valid, ranks, torch.full_like(ranks, 1))  # garbage on padding
            metric.update(ranks, valid)
        local_count = int(metric.count)
        result = metric.compute()  # all-reduces the sum states
        torch.save({"local_count": local_count, "result": result}, f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_process_gloo_equals_single_process(tmp_path):
    want = single_process_reference()
    assert int(want["count"]) == NUM_USERS

    out_path = str(tmp_path / "metrics")
    mp.spawn(worker, args=(free_port(), out_path), nprocs=WORLD, join=True)

    outs = [torch.load(f"{out_path}.{r}") for r in range(WORLD)]
    assert [o["local_count"] for o in outs] == [SPLIT, NUM_USERS - SPLIT]
    for out in outs:
        got = out["result"]
        assert set(got) == set(want)
        assert int(got["count"]) == NUM_USERS  # every user once: no drop, no duplicate
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-12, atol=0.0)
