"""ElasticDataModule in one process: batch contents, exact evaluation split, errors."""
import json
import os
from collections import Counter

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from data_pipeline import sharding
from data_pipeline.datamodule import ElasticDataModule, LoaderConfig
from data_pipeline.manifest import ManifestError
from data_pipeline.sharding import ShardReadError
from tests.shard_fixtures import random_sequences, read_manifest, write_manifest, write_shards

STRIDE = 1000  # item = user * STRIDE + position + 1: every item tells its user and position


def coded_sequences(num_users: int, seed: int = 0, min_len: int = 1, max_len: int = 40) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(u * STRIDE + 1 + np.arange(rng.integers(min_len, max_len + 1))).astype(np.int32) for u in range(num_users)]


def consume(loader) -> list:
    """``list(loader)``, shutting DataLoader workers down at once even when it raises (an iterator
    left to the garbage collector after an error waits 5 s per worker in torch 2.13)."""
    it = iter(loader)
    try:
        return list(it)
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def make_dm(data_dir, rank=0, world_size=1, **overrides) -> ElasticDataModule:
    kw = dict(data_dir=str(data_dir), max_len=8, batch_size=4, eval_batch_size=5, num_workers=0, shuffle_buffer=16)
    kw.update(overrides)
    dm = ElasticDataModule(LoaderConfig(**kw), rank=rank, world_size=world_size)
    dm.setup()
    return dm


@pytest.fixture()
def coded(tmp_path):
    seqs = coded_sequences(60)
    write_shards(str(tmp_path), seqs, 3, block_size=7, num_items=60 * STRIDE, shard_sizes=[31, 4, 25])
    return tmp_path, seqs


def test_train_batches_are_windows_of_the_training_part(coded):
    data_dir, seqs = coded
    dm = make_dm(data_dir, steps_per_epoch=30)
    batches = list(dm.train_dataloader())
    assert len(batches) == 30
    rows = 0
    for b in batches:
        items, targets = b["items"], b["targets"]
        assert items.dtype == targets.dtype == torch.int64 and items.shape == targets.shape
        assert items.shape[0] == 4 and 1 <= items.shape[1] <= 8
        for x, y in zip(items.numpy(), targets.numpy()):
            real = x > 0
            assert real[-1] and np.all(np.diff(real.astype(int)) >= 0)  # left-padded
            np.testing.assert_array_equal(y[real], x[real] + 1)  # next item of the same user
            assert np.all(y[~real] == 0)
            user, pos = (y[real] - 1) // STRIDE, (y[real] - 1) % STRIDE
            assert len(set(user.tolist())) == 1
            assert pos.max() <= len(seqs[user[0]]) - 3  # never the valid (n-2) or test (n-1) target
            rows += 1
    assert rows == 120


def test_train_epochs_seeds_and_ranks(coded):
    data_dir, _ = coded
    rank1 = torch.cat([b["items"].flatten() for b in make_dm(data_dir, steps_per_epoch=5, rank=1, world_size=2).train_dataloader()])
    loader = make_dm(data_dir, steps_per_epoch=5).train_dataloader()
    first, second = [torch.cat([b["items"].flatten() for b in loader]) for _ in range(2)]
    assert not torch.equal(first, second)  # a new epoch draws new shards/windows
    assert not torch.equal(first, rank1)  # each rank its own stream
    resumed = make_dm(data_dir, steps_per_epoch=5).train_dataset()
    resumed.set_epoch(1)  # what a run resumed at epoch 1 draws
    assert torch.equal(second, torch.cat([b["items"].flatten() for b in resumed]))
    again = torch.cat([b["items"].flatten() for b in make_dm(data_dir, steps_per_epoch=5).train_dataloader()])
    assert torch.equal(first, again)  # deterministic by seed
    other = torch.cat([b["items"].flatten() for b in make_dm(data_dir, steps_per_epoch=5, seed=1).train_dataloader()])
    assert not torch.equal(first, other)


def test_persistent_workers_advance_the_epoch(coded):
    data_dir, _ = coded
    loader = make_dm(data_dir, steps_per_epoch=3, num_workers=1, persistent_workers=True).train_dataloader()
    first, second = [torch.cat([b["items"].flatten() for b in loader]) for _ in range(2)]
    assert not torch.equal(first, second)


def test_default_steps_per_epoch(coded):
    data_dir, _ = coded
    assert make_dm(data_dir, batch_size=4).steps_per_epoch == 15
    assert make_dm(data_dir, batch_size=4, rank=1, world_size=2).steps_per_epoch == 8
    assert len(make_dm(data_dir, batch_size=4, world_size=1).train_dataloader()) == 15


@pytest.mark.parametrize("split,min_n,held", [("valid", 3, 2), ("test", 2, 1), ("predict", 1, 0)])
def test_eval_batches_content(coded, split, min_n, held):
    data_dir, seqs = coded
    got = {}
    for b in make_dm(data_dir, max_len=6).eval_dataset(split):
        for items, target, seen, user, valid in zip(*(b[k].numpy() for k in ("items", "target", "seen", "user", "valid"))):
            if not valid:
                assert user == -1
                continue
            assert user not in got
            history = seqs[user][: len(seqs[user]) - held]
            np.testing.assert_array_equal(items[items > 0], history[-6:])
            np.testing.assert_array_equal(seen[seen > 0], history)
            assert target == (seqs[user][-held] if held else 0)
            got[int(user)] = True
    assert sorted(got) == [u for u, s in enumerate(seqs) if len(s) >= min_n]


def test_seen_window_input(coded):
    data_dir, _ = coded
    for b in make_dm(data_dir, max_len=6, seen_window="input").eval_dataset("test"):
        assert torch.equal(b["seen"], b["items"])


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
@pytest.mark.parametrize("num_workers", [1, 2, 4])
@pytest.mark.parametrize("num_shards", [1, 3, 7])
@pytest.mark.parametrize("max_tokens", [None, 20])
def test_every_eval_user_once_on_any_rank_and_worker_count(tmp_path, monkeypatch, world_size, num_workers, num_shards,
                                                           max_tokens):
    seqs = random_sequences(41, 30, min_len=1, max_len=12, seed=num_shards)
    write_shards(str(tmp_path), seqs, num_shards, block_size=3)
    counts, batches_per_rank = Counter(), []
    for rank in range(world_size):
        ds = make_dm(tmp_path, rank=rank, world_size=world_size, eval_batch_size=4,
                     max_tokens=max_tokens).eval_dataset("valid")
        n = 0
        for worker in range(num_workers):  # emulate each DataLoader worker of this rank
            monkeypatch.setattr(sharding, "current_worker", lambda w=worker: (w, num_workers))
            for b in ds:
                counts.update(b["user"][b["valid"]].tolist())
                assert max_tokens is None or b["items"].numel() <= max_tokens
                n += 1
        assert n == len(ds)
        batches_per_rank.append(n)
    assert len(set(batches_per_rank)) == 1
    assert counts == Counter(u for u, s in enumerate(seqs) if len(s) >= 3)


@pytest.mark.parametrize("contexts", [("fork", "fork"), ("spawn", "forkserver")])
def test_worker_start_methods_split_exactly(tmp_path, contexts):
    """Workers that do not inherit the parent's state (spawn, forkserver) still get their rank."""
    seqs = random_sequences(30, 20, min_len=3, max_len=9, seed=3)
    write_shards(str(tmp_path), seqs, 3, block_size=4)  # 3 shards < 2 ranks x 2 workers
    users, lengths = [], []
    for rank, context in enumerate(contexts):
        dm = make_dm(tmp_path, rank=rank, world_size=2, num_workers=2, multiprocessing_context=context,
                     steps_per_epoch=3)
        batches = consume(dm.val_dataloader())
        lengths.append(len(batches))
        users += [u for b in batches for u in b["user"][b["valid"]].tolist()]
        if context == "fork":  # spawn/forkserver train workers: see the DDP test (fewer slow starts)
            assert len(consume(dm.train_dataloader())) == 3
    assert lengths[0] == lengths[1]
    assert sorted(users) == list(range(30))  # no duplicates, nothing dropped


def test_pipe_url_from_config(coded):
    data_dir, seqs = coded
    names = [s["name"] for s in read_manifest(str(data_dir))["shards"]]
    urls = [f"pipe:cat {os.path.join(str(data_dir), n)}" for n in names]
    users = [u for b in make_dm(data_dir, urls=urls).eval_dataset("test") for u in b["user"][b["valid"]].tolist()]
    assert sorted(users) == [u for u, s in enumerate(seqs) if len(s) >= 2]


def _corrupt_npy(path):
    data = bytearray(open(path, "rb").read())
    mid = len(data) // 2
    data[mid : mid + 64] = b"x" * 64
    open(path, "wb").write(bytes(data))


def _truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [_corrupt_npy, _truncate])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_shard_names_the_file(tmp_path, damage, num_workers):
    write_shards(str(tmp_path), random_sequences(300, 50, min_len=4, max_len=30), 3, block_size=5)
    damage(str(tmp_path / "seq-000001.tar"))
    dm = make_dm(tmp_path, num_workers=num_workers, steps_per_epoch=200)
    for loader in (dm.val_dataloader(), dm.train_dataloader()):
        with pytest.raises(Exception, match="seq-000001.tar") as info:
            consume(loader)
        if num_workers == 0:
            assert isinstance(info.value, ShardReadError)


def test_manifest_user_count_mismatch(tmp_path):
    write_shards(str(tmp_path), random_sequences(40, 20, min_len=4), 2, block_size=4)
    m = read_manifest(str(tmp_path))
    m["shards"][0]["users"] += 3
    m["shards"][1]["users"] -= 3
    write_manifest(str(tmp_path), m)
    dm = make_dm(tmp_path)
    with pytest.raises(ShardReadError, match="seq-00000[01].tar.*manifest"):
        consume(dm.val_dataloader())
    with pytest.raises(ShardReadError, match="seq-00000[01].tar.*manifest"):
        consume(make_dm(tmp_path, steps_per_epoch=50).train_dataloader())


def test_manifest_errors(tmp_path):
    with pytest.raises(ManifestError, match="no manifest"):
        make_dm(tmp_path)
    write_shards(str(tmp_path), random_sequences(20, 20, min_len=4), 2)
    m = read_manifest(str(tmp_path))
    (tmp_path / "seq-000002.tar").write_bytes((tmp_path / "seq-000001.tar").read_bytes())
    with pytest.raises(ManifestError, match="not in the manifest"):
        make_dm(tmp_path)
    os.remove(tmp_path / "seq-000002.tar")
    with pytest.raises(ManifestError, match="2 shard URLs given, the manifest lists 1"):
        write_manifest(str(tmp_path), {**m, "shards": m["shards"][:1], "num_users": m["shards"][0]["users"],
                                       "num_events": m["shards"][0]["events"]})
        make_dm(tmp_path, urls=[str(tmp_path / "seq-00000{0,1}.tar")])
    write_manifest(str(tmp_path), {**m, "num_users": m["num_users"] + 1})
    with pytest.raises(ManifestError, match="sum to 20, num_users is 21"):
        make_dm(tmp_path)
    write_manifest(str(tmp_path), m)
    with pytest.raises(ManifestError, match="does not name shard"):
        make_dm(tmp_path, urls=[str(tmp_path / "seq-000001.tar"), str(tmp_path / "seq-000000.tar")])
    os.remove(tmp_path / "seq-000001.tar")
    with pytest.raises(ManifestError, match="missing.*seq-000001.tar"):
        make_dm(tmp_path)


def test_checksum_verification(tmp_path):
    write_shards(str(tmp_path), random_sequences(20, 20, min_len=4), 2)
    make_dm(tmp_path, verify_checksums=True)
    path = tmp_path / "seq-000000.tar"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # in the end-of-archive padding: invisible to the reader, visible to sha256
    path.write_bytes(bytes(data))
    assert len(consume(make_dm(tmp_path, verify_checksums=False).val_dataloader())) > 0  # read unchecked
    with pytest.raises(ShardReadError, match="seq-000000.tar: sha256"):  # checked by default, while read
        consume(make_dm(tmp_path).val_dataloader())


def test_no_training_examples_is_an_error(tmp_path):
    write_shards(str(tmp_path), random_sequences(10, 20, min_len=1, max_len=3), 2)
    with pytest.raises(ShardReadError, match="no training examples"):
        list(make_dm(tmp_path, steps_per_epoch=2).train_dataloader())


def test_config_validation_and_structured_config(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        LoaderConfig(batch_size=0)
    with pytest.raises(ValueError, match="seen_window"):
        LoaderConfig(seen_window="all")
    with pytest.raises(ValueError, match="multiprocessing_context"):
        LoaderConfig(multiprocessing_context="thread")
    write_shards(str(tmp_path), random_sequences(20, 20, min_len=4), 2)
    cfg = OmegaConf.merge(OmegaConf.structured(LoaderConfig), {"data_dir": str(tmp_path), "num_workers": 0})
    dm = ElasticDataModule(cfg)
    assert dm.num_users == 20 and dm.num_items == json.load(open(tmp_path / "manifest.json"))["num_items"]
