"""Full-ranking evaluation built for large catalogs (elastic_pl.metrics).

* The CPU fast path (cache-sized tiles, user tiles in parallel threads) gives the same ranks as
  the plain one-matrix-per-chunk path, as one unchunked matrix, and as a brute-force oracle:
  random catalogs, integer scores (many ties), seen lists with duplicates, padding and the target.
* Under 2 gloo processes the real evaluation loader and ``ElasticLightningModule.ranks`` (chunked,
  2 workers per rank) score every user exactly once, with the ranks of one unchunked process.
"""
from __future__ import annotations

import datetime
import json
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from data_pipeline.datamodule import ElasticDataModule, LoaderConfig
from elastic_pl import metrics
from elastic_pl.config import EvalConfig, OptimConfig
from elastic_pl.lightning_module import ElasticLightningModule
from elastic_pl.metrics import FullRankingMetrics, target_ranks
from elastic_pl.model import ModelConfig
from tests.shard_fixtures import random_sequences, write_shards


def oracle_ranks(query, items, target, seen):
    """1 + #{j in 1..V, j != target, j not in seen: score_j >= score_target}, by brute force."""
    scores = (query.double() @ items.double().T).numpy()
    out = []
    for b in range(len(target)):
        t = int(target[b])
        if t == 0:
            out.append(0)
            continue
        excluded = set(seen[b].tolist()) - {t} if seen is not None else set()
        beat = [j for j in range(1, items.shape[0]) if j != t and j not in excluded and scores[b, j] >= scores[b, t]]
        out.append(1 + len(beat))
    return torch.tensor(out)


def random_case(seed: int, users: int, num_items: int, dim: int = 4, history: int = 9):
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(-2, 3, (num_items + 1, dim), generator=g).float()  # integer scores: ties, exact
    query = torch.randint(-2, 3, (users, dim), generator=g).float()
    target = torch.randint(1, num_items + 1, (users,), generator=g)
    target[::7] = 0  # padding samples
    seen = torch.randint(0, num_items + 1, (users, history), generator=g)
    seen[::3, 0] = target[::3]  # repeat consumption: the target in the history stays ranked
    seen[::4, 1] = seen[::4, 2]  # duplicates
    return query, items, target, seen


def plain_ranks(query, items, target, seen, chunk_size):
    """The one-[B, chunk]-matrix path (accelerators), called directly on CPU."""
    target_score = (query * items[target]).sum(-1, keepdim=True)
    count = metrics._count_chunked(query, items, target_score, metrics._exclusion_ids(target, seen), chunk_size)
    return torch.where(target > 0, count + 1, torch.zeros_like(count))


@pytest.mark.parametrize("seed", range(4))
def test_tiled_ranks_equal_unchunked_and_oracle(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    users, num_items = int(rng.integers(20, 60)), int(rng.integers(80, 200))
    # small tiles so that one call crosses many user tiles, item tiles and chunk ends
    monkeypatch.setattr(metrics, "USER_TILE", int(rng.integers(3, 9)))
    monkeypatch.setattr(metrics, "ITEM_TILE", int(rng.integers(5, 17)))
    query, items, target, seen = random_case(seed, users, num_items)
    want = oracle_ranks(query, items, target, seen)
    assert torch.equal(plain_ranks(query, items, target, seen, num_items + 1), want)  # unchunked
    for chunk in (1, 6, 31, num_items - 1, num_items, num_items + 5):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert torch.equal(target_ranks(query, items, target, seen, chunk), want), (chunk, threads)
        assert torch.equal(plain_ranks(query, items, target, seen, chunk), want), chunk
    torch.set_num_threads(1)
    assert torch.equal(target_ranks(query, items, target, None, 13), oracle_ranks(query, items, target, None))


def test_default_tiles_on_float_scores_equal_the_plain_path():
    """Real tile sizes (several user tiles, a partial last item tile) on float embeddings."""
    g = torch.Generator().manual_seed(9)
    num_items, users = 5000, 600
    items, query = torch.randn(num_items + 1, 16, generator=g), torch.randn(users, 16, generator=g)
    target = torch.randint(1, num_items + 1, (users,), generator=g)
    seen = torch.randint(0, num_items + 1, (users, 40), generator=g)
    torch.set_num_threads(2)
    try:
        got = target_ranks(query, items, target, seen, 3000)
        # a model's item table (it requires grad), and the inference mode of Lightning's evaluation
        # loops: the worker threads score under the caller's modes
        table = torch.nn.Parameter(items.clone())
        assert torch.equal(target_ranks(query, table, target, seen, 3000), got)
        with torch.inference_mode():
            assert torch.equal(target_ranks(query, items.clone(), target, seen, 3000), got)
        assert torch.get_num_threads() == 2  # the caller's intra-op threads are given back
    finally:
        torch.set_num_threads(1)
    assert torch.equal(got, plain_ranks(query, items, target, seen, num_items + 1))


# -- 2-process gloo: the real loader and module score every user exactly once -------------------------
NUM_ITEMS, NUM_USERS, CHUNK = 700, 90, 97


def _model_and_loader(data_dir: str, rank: int, world: int, chunk: int):
    torch.manual_seed(0)  # the same weights on every rank
    cfg = ModelConfig.from_flat({"num_items": NUM_ITEMS, "d_model": 16, "n_layers": 1, "n_heads": 2,
                                 "num_experts": 4, "chunk_size": 8, "memory_subkeys": 8, "memory_topk": 4,
                                 "memory_key_dim": 8, "max_positions": 16, "dropout": 0.0})
    module = ElasticLightningModule.from_configs(cfg, OptimConfig(), EvalConfig(chunk_size=chunk)).eval()
    dm = ElasticDataModule(LoaderConfig(data_dir=data_dir, max_len=12, eval_batch_size=7, num_workers=2,
                                        shuffle_buffer=8, multiprocessing_context="fork"), rank=rank, world_size=world)
    dm.setup()
    return module, dm.test_dataloader()


def _score(module, loader) -> tuple[dict, FullRankingMetrics]:
    ranks, metric = {}, FullRankingMetrics()
    with torch.no_grad():
        for batch in loader:
            r = module.ranks(batch)
            metric.update(r, batch["valid"])
            for u, v in zip(batch["user"][batch["valid"]].tolist(), r[batch["valid"]].tolist()):
                assert u not in ranks, f"user {u} scored twice on one rank"
                ranks[u] = v
    return ranks, metric


def _rank_worker(rank: int, port: int, data_dir: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=120))
    try:
        ranks, metric = _score(*_model_and_loader(data_dir, rank, 2, CHUNK))
        result = {k: float(v) for k, v in metric.compute().items()}  # all-reduced sums
        with open(f"{out}.{rank}", "w") as f:
            json.dump({"ranks": ranks, "metrics": result}, f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_score_every_user_exactly_once(tmp_path):
    data_dir = str(tmp_path / "shards")
    write_shards(data_dir, random_sequences(NUM_USERS, NUM_ITEMS, min_len=1, max_len=20, seed=2), 3,
                 block_size=4, num_items=NUM_ITEMS)
    single_ranks, single_metric = _score(*_model_and_loader(data_dir, 0, 1, NUM_ITEMS + 1))  # unchunked
    single = {k: float(v) for k, v in single_metric.compute().items()}
    out = str(tmp_path / "ranks")
    mp.spawn(_rank_worker, args=(_free_port(), data_dir, out), nprocs=2, join=True)
    per_rank = [json.load(open(f"{out}.{r}")) for r in range(2)]
    users = [set(int(u) for u in r["ranks"]) for r in per_rank]
    assert users[0] and users[1] and not users[0] & users[1]  # split, no user on both ranks
    merged = {int(u): v for r in per_rank for u, v in r["ranks"].items()}
    assert merged == single_ranks  # every user once, with the unchunked ranks
    assert int(single["count"]) == len(single_ranks) > 0
    for r in per_rank:
        assert r["metrics"] == pytest.approx(single, abs=1e-12)
