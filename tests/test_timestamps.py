"""Timestamps: prepare stores each item's time (epoch seconds) beside it; the loader hands them
out aligned with ``items`` when ``data.loader.timestamps`` is on."""
from __future__ import annotations

import json
import os
import tarfile
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds

from data_pipeline.config import PrepareConfig, SourceConfig
from data_pipeline.datamodule import ElasticDataModule, LoaderConfig
from data_pipeline.manifest import ManifestError
from data_pipeline.prepare import prepare
from data_pipeline.shards import decode_block
from tests.shard_fixtures import coded_timestamps, random_sequences, write_shards

NO_TS = "this dataset was prepared without timestamps; re-run prepare from a source with a timestamp column"


def _log(seed: int = 0, n: int = 600):
    """(user, item, seconds) with ties and negative (pre-1970) times."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 40, n)
    item = rng.integers(100, 160, n)
    seconds = rng.integers(-5, 60, n) * 1000 + rng.integers(0, 3, n)  # many equal timestamps
    return user, item, seconds


def _reference(user, item, seconds):
    """{original user: (original items, seconds)} by a stable sort on (seconds, row)."""
    out = {}
    for j in sorted(range(len(user)), key=lambda j: (seconds[j], j)):
        items, ts = out.setdefault(int(user[j]), ([], []))
        items.append(int(item[j]))
        ts.append(int(seconds[j]))
    return out


def _read_shards(out: str):
    """{original user: (original items, seconds)} from prepare's output."""
    m = json.load(open(os.path.join(out, "manifest.json")))
    users = pq.read_table(os.path.join(out, "user_map.parquet")).column("original").to_pylist()
    items = [None] + pq.read_table(os.path.join(out, "item_map.parquet")).column("original").to_pylist()
    got = {}
    for sample in wds.WebDataset([os.path.join(out, s["name"]) for s in m["shards"]], shardshuffle=False,
                                 empty_check=False):
        block = decode_block(sample, m["num_items"], timestamps=True)
        for j, u in enumerate(block.users.tolist()):
            a, b = block.offsets[j], block.offsets[j + 1]
            got[users[u]] = ([items[i] for i in block.items[a:b].tolist()], block.timestamps[a:b].tolist())
    return m, got


def _iso(s: int) -> str:
    return datetime.fromtimestamp(s, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


SOURCES = {  # name -> (file name, writer(path, user, item, seconds) -> SourceConfig overrides)
    "parquet-int-s": lambda p, u, i, s: (pq.write_table(pa.table({"user": u, "item": i, "ts": s}), p), {}),
    "parquet-int-ms": lambda p, u, i, s: (pq.write_table(pa.table({"user": u, "item": i, "ts": s * 1000 + 999}), p),
                                          {"ts_unit": "ms"}),
    "parquet-float-s": lambda p, u, i, s: (pq.write_table(pa.table({"user": u, "item": i, "ts": s + 0.75}), p), {}),
    "parquet-timestamp-ms": lambda p, u, i, s: (pq.write_table(pa.table({"user": u, "item": i, "ts": pa.array(
        s * 1000 + 5, pa.timestamp("ms"))}), p), {}),
    "csv": lambda p, u, i, s: (open(p, "w").write("user,item,timestamp\n" + "".join(
        f"{a},{b},{c}\n" for a, b, c in zip(u, i, s))), {}),
    "jsonl-iso": lambda p, u, i, s: (open(p, "w").write("".join(
        json.dumps({"user": int(a), "item": int(b), "ts": _iso(int(c))}) + "\n" for a, b, c in zip(u, i, s))), {}),
}
SUFFIX = {"csv": ".csv", "jsonl-iso": ".jsonl"}


@pytest.mark.parametrize("kind", list(SOURCES))
def test_prepare_stores_each_items_time_in_seconds(tmp_path, kind):
    user, item, seconds = _log()
    path = str(tmp_path / ("log" + SUFFIX.get(kind, ".parquet")))
    _, overrides = SOURCES[kind](path, user, item, seconds)
    out = str(tmp_path / "out")
    prepare(SourceConfig(path=path, **overrides), PrepareConfig(output_dir=out, num_buckets=3, users_per_block=7,
                                                                workers=1, progress=False))
    m, got = _read_shards(out)
    assert m["format_version"] == 2 and m["timestamps"] is True
    assert got == _reference(user, item, seconds)


def test_date_columns_become_midnight_seconds(tmp_path):
    days = np.array([0, 1, 1, -1, 19000])
    path = str(tmp_path / "d.parquet")
    pq.write_table(pa.table({"user": [1] * 5, "item": [1, 2, 3, 4, 5], "ts": pa.array(days.astype(np.int32), pa.date32())}), path)
    prepare(SourceConfig(path=path), PrepareConfig(output_dir=str(tmp_path / "o"), num_buckets=1, workers=1,
                                                   progress=False))
    _, got = _read_shards(str(tmp_path / "o"))
    assert got == {1: ([4, 1, 2, 3, 5], [-86400, 0, 86400, 86400, 19000 * 86400])}


def test_sources_without_timestamps_store_none(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("".join(f"{u} {j}\n" for u in range(6) for j in range(1, 6)))
    out = str(tmp_path / "o")
    m = prepare(SourceConfig(path=str(path)), PrepareConfig(output_dir=out, num_buckets=2, workers=1, progress=False))
    assert m["timestamps"] is False
    for s in m["shards"]:
        assert not any(n.endswith(".ts.npy") for n in tarfile.open(os.path.join(out, s["name"])).getnames())
    assert len(list(ElasticDataModule(LoaderConfig(data_dir=out, num_workers=0)).val_dataloader())) > 0
    with pytest.raises(ManifestError, match=NO_TS):
        ElasticDataModule(LoaderConfig(data_dir=out, num_workers=0, timestamps=True))


def test_version_1_shards_still_read(tmp_path):
    seqs = random_sequences(30, 20, min_len=4)
    write_shards(str(tmp_path), seqs, 2, format_version=1)
    assert json.load(open(tmp_path / "manifest.json"))["format_version"] == 1
    dm = ElasticDataModule(LoaderConfig(data_dir=str(tmp_path), num_workers=0, batch_size=4, steps_per_epoch=3))
    assert len(list(dm.train_dataloader())) == 3
    assert sum(int(b["valid"].sum()) for b in dm.test_dataloader()) == 30
    with pytest.raises(ManifestError, match=NO_TS):
        ElasticDataModule(LoaderConfig(data_dir=str(tmp_path), num_workers=0, timestamps=True))


def _coded(tmp_path, n=50):
    seqs = random_sequences(n, 40, min_len=1, max_len=30, seed=4)
    write_shards(str(tmp_path), seqs, 3, block_size=6, num_items=40, timestamps=coded_timestamps(seqs))
    return seqs


def _aligned(batch, rows=slice(None)) -> bool:
    items, ts = batch["items"], batch["timestamps"]
    return ts.dtype == torch.int64 and ts.shape == items.shape and \
        torch.equal(ts[rows], torch.where(items > 0, items * 10 + 7, 0)[rows])


@pytest.mark.parametrize("budget", [None, 40])
def test_train_batches_carry_aligned_timestamps_and_the_same_items(tmp_path, budget):
    _coded(tmp_path)
    kw = dict(data_dir=str(tmp_path), num_workers=0, batch_size=5, max_len=8, shuffle_buffer=8, steps_per_epoch=12,
              max_tokens=budget)
    with_ts = list(ElasticDataModule(LoaderConfig(**kw, timestamps=True)).train_dataloader())
    without = list(ElasticDataModule(LoaderConfig(**kw)).train_dataloader())
    assert len(with_ts) == 12 and all(_aligned(b) for b in with_ts)
    assert "timestamps" not in without[0]
    for a, b in zip(with_ts, without):  # the same draws: timestamps change nothing else
        assert torch.equal(a["items"], b["items"]) and torch.equal(a["targets"], b["targets"])


def test_a_resumed_epoch_continues_with_the_same_timestamps(tmp_path):
    _coded(tmp_path)
    kw = dict(data_dir=str(tmp_path), num_workers=0, batch_size=4, max_len=8, shuffle_buffer=8, steps_per_epoch=10,
              timestamps=True)
    full = ElasticDataModule(LoaderConfig(**kw)).train_dataset()
    full.set_epoch(2)
    resumed = ElasticDataModule(LoaderConfig(**kw)).train_dataset()
    resumed.set_epoch(2, skip=6)
    a, b = list(full)[6:], list(resumed)
    assert len(a) == len(b) == 4
    assert all(torch.equal(x["timestamps"], y["timestamps"]) and torch.equal(x["items"], y["items"]) for x, y in zip(a, b))


@pytest.mark.parametrize("budget", [None, 60])
def test_eval_batches_carry_the_input_items_timestamps(tmp_path, budget):
    seqs = _coded(tmp_path)
    for split, held in (("valid", 2), ("test", 1), ("predict", 0)):
        seen_users = []
        for rank in (0, 1):
            dm = ElasticDataModule(LoaderConfig(data_dir=str(tmp_path), num_workers=0, eval_batch_size=7, max_len=6,
                                                max_tokens=budget, timestamps=True), rank=rank, world_size=2)
            for b in dm.eval_dataset(split):
                assert _aligned(b, b["valid"])
                assert not b["timestamps"][~b["valid"]].any()  # padding rows: all 0
                for row, user, ok in zip(b["items"], b["user"].tolist(), b["valid"].tolist()):
                    if ok:
                        hist = seqs[user][: len(seqs[user]) - held][-6:]
                        assert row[row > 0].tolist() == hist.tolist()
                        seen_users.append(user)
        assert sorted(seen_users) == [u for u, s in enumerate(seqs) if len(s) > held]


def test_shards_missing_their_timestamps_are_an_error(tmp_path):
    seqs = random_sequences(20, 20, min_len=4)
    write_shards(str(tmp_path), seqs, 2)
    m = json.load(open(tmp_path / "manifest.json"))
    m["timestamps"] = True  # a manifest that claims what its shards do not hold
    json.dump(m, open(tmp_path / "manifest.json", "w"))
    dm = ElasticDataModule(LoaderConfig(data_dir=str(tmp_path), num_workers=0, timestamps=True))
    with pytest.raises(Exception, match=r"seq-00000\d.tar.*lacks members \['ts.npy'\]"):
        list(dm.val_dataloader())
