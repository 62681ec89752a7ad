"""``cross_rank``: in-batch candidates over 2 gloo processes equal one process over the
concatenation of both ranks' rows (tests/loss_bruteforce.py), value and gradient.

The ranks hold different numbers of rows (as token-budget batches do) and share some targets, so
the global logQ differs from either rank's. DDP averages the ranks' gradients; the test checks that
average against the gradient of the single-process loss.
"""
from __future__ import annotations

import datetime
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from elastic_pl.model import LOSSES
from tests.loss_bruteforce import draw, mean, mixture_rows

WORLD, V, D, K = 2, 12, 4, 6
ROWS = (13, 8)  # rows per rank
SEED = 100  # rank r draws its uniform negatives from Generator().manual_seed(SEED + r)
CONFIGS = [{"name": "in_batch_softmax", "cross_rank": True, "temperature": 0.7},
           {"name": "mixed_softmax", "cross_rank": True, "num_negatives": K, "temperature": 0.7}]


def make_data():
    g = torch.Generator().manual_seed(3)
    query = torch.randn(sum(ROWS), D, generator=g, dtype=torch.float64)
    items = torch.randn(V + 1, D, generator=g, dtype=torch.float64)
    target = torch.randint(1, V + 1, (sum(ROWS),), generator=g)
    return query, items, target


def shard(rank: int) -> slice:
    start = sum(ROWS[:rank])
    return slice(start, start + ROWS[rank])


def worker(rank, port, out_path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        query, items, target = make_data()
        out = []
        for cfg in CONFIGS:
            loss = LOSSES.get(cfg["name"])(LOSSES.config_from_dict(cfg))
            q = query[shard(rank)].clone().requires_grad_(True)
            e = items.clone().requires_grad_(True)
            value = loss(q, target[shard(rank)], e, torch.Generator().manual_seed(SEED + rank))
            value.backward()
            out.append({"value": value.detach(), "query_grad": q.grad, "items_grad": e.grad})
        torch.save(out, f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


def single_process_reference(cfg: dict):
    """The loss over both ranks' rows in one process; rank r's rows use rank r's negatives."""
    query, items, target = make_data()
    q, e = query.clone().requires_grad_(True), items.clone().requires_grad_(True)
    rows = []
    for rank in range(WORLD):
        negatives = ()
        if "num_negatives" in cfg:
            negatives = draw(V, cfg["num_negatives"], torch.Generator().manual_seed(SEED + rank))
        s = shard(rank)
        rows += mixture_rows(q[s], target[s], e, cfg["temperature"], target.tolist(), negatives)
    value = mean(rows)
    value.backward()
    return value.detach(), q.grad, e.grad


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_ranks_share_targets_and_differ_in_logq():
    _, _, target = make_data()
    first, second = set(target[shard(0)].tolist()), set(target[shard(1)].tolist())
    assert first & second and first - second and second - first


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_process_gloo_equals_single_process_on_the_concatenation(tmp_path):
    out_path = str(tmp_path / "loss")
    mp.spawn(worker, args=(free_port(), out_path), nprocs=WORLD, join=True)
    outs = [torch.load(f"{out_path}.{r}", weights_only=True) for r in range(WORLD)]
    for i, cfg in enumerate(CONFIGS):
        want, want_q, want_e = single_process_reference(cfg)
        per_rank = [o[i] for o in outs]
        for out in per_rank:  # every rank reports the global batch's loss
            torch.testing.assert_close(out["value"], want, rtol=1e-6, atol=1e-6)
        # what DDP applies: the average over ranks of each rank's gradient
        query_grad = torch.cat([o["query_grad"] for o in per_rank]) / WORLD
        items_grad = sum(o["items_grad"] for o in per_rank) / WORLD
        torch.testing.assert_close(query_grad, want_q, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(items_grad, want_e, rtol=1e-6, atol=1e-6)
