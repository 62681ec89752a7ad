"""Corruption is found by default: shard checksums while streaming, manifest <-> item map, and
file names that stay inside the data directory."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data_pipeline.datamodule import ElasticDataModule, LoaderConfig
from data_pipeline.manifest import ManifestError
from data_pipeline.shard_reader import ShardReadError, read_blocks
from tests.shard_fixtures import random_sequences, read_manifest, write_manifest, write_shards
from tests.test_datamodule import consume


def dm(data_dir, **kw) -> ElasticDataModule:
    base = dict(data_dir=str(data_dir), num_workers=0, batch_size=4, eval_batch_size=6, max_len=8, shuffle_buffer=8)
    module = ElasticDataModule(LoaderConfig(**{**base, **kw}))
    module.setup()
    return module


def flip_an_item(path: str) -> None:
    """Change one stored item id into another valid one: the shard still decodes and validates."""
    data = bytearray(open(path, "rb").read())
    at = data.index(b"items.npy") + 512 + 128 + 4 * 3  # member header, .npy header, a few items in
    data[at] = 1 if data[at] != 1 else 2
    open(path, "wb").write(bytes(data))


@pytest.fixture()
def shards(tmp_path):
    seqs = random_sequences(40, 30, min_len=4, max_len=20, seed=1)
    write_shards(str(tmp_path), seqs, 3, block_size=5, num_items=30)
    return tmp_path, seqs


def test_a_flipped_item_is_caught_in_training_evaluation_and_planning(shards):
    data_dir, _ = shards
    before = [b.items.copy() for b in read_blocks(str(data_dir / "seq-000001.tar"))]
    flip_an_item(str(data_dir / "seq-000001.tar"))
    after = [b.items for b in read_blocks(str(data_dir / "seq-000001.tar"))]  # unchecked: decodes fine
    assert sum(int((a != b).sum()) for a, b in zip(before, after)) == 1
    match = r"seq-000001.tar: sha256 [0-9a-f]{64} does not match the manifest"
    with pytest.raises(ShardReadError, match=match):
        consume(dm(data_dir, steps_per_epoch=40).train_dataloader())
    for split in ("valid", "test", "predict"):
        with pytest.raises(ShardReadError, match=match):
            consume(dm(data_dir).eval_dataset(split))
    with pytest.raises(ShardReadError, match=match):
        dm(data_dir, max_tokens=64).lengths()
    assert len(consume(dm(data_dir, verify_checksums=False).test_dataloader())) > 0  # the opt-out reads it


def test_through_dataloader_workers(shards):
    data_dir, _ = shards
    flip_an_item(str(data_dir / "seq-000002.tar"))
    with pytest.raises(Exception, match=r"seq-000002.tar: sha256"):
        consume(dm(data_dir, num_workers=2).val_dataloader())


@pytest.mark.parametrize("budget", [None, 48])
@pytest.mark.parametrize("shard", [0, 1, 2])
def test_every_shard_is_checked_when_evaluation_splits_it(shards, shard, budget):
    """Ranks stop reading a shard where their slots end; the rank holding its last slot reads it
    whole (the last shard too), so some rank always reports the corrupt shard."""
    data_dir, _ = shards
    flip_an_item(str(data_dir / f"seq-00000{shard}.tar"))
    for world in (1, 2, 3, 4):
        errors = 0
        for rank in range(world):
            module = ElasticDataModule(LoaderConfig(data_dir=str(data_dir), num_workers=0, eval_batch_size=3,
                                                    max_tokens=budget, verify_checksums=False),
                                       rank=rank, world_size=world)
            if budget:
                module.lengths()  # planning reads every shard whole: plan unchecked, check the eval pass alone
            module.cfg.verify_checksums = True
            try:
                consume(module.eval_dataset("test"))
            except ShardReadError as e:
                assert f"seq-00000{shard}.tar: sha256" in str(e)
                errors += 1
        assert errors >= 1, world


def test_a_clean_read_matches_an_unchecked_one(shards):
    data_dir, _ = shards
    a = consume(dm(data_dir, steps_per_epoch=6).train_dataloader())
    b = consume(dm(data_dir, steps_per_epoch=6, verify_checksums=False).train_dataloader())
    assert all(torch.equal(x["items"], y["items"]) for x, y in zip(a, b))


def test_a_manifest_without_checksums_needs_the_opt_out(shards):
    data_dir, _ = shards
    m = read_manifest(str(data_dir))
    del m["shards"][1]["sha256"]
    write_manifest(str(data_dir), m)
    with pytest.raises(ManifestError, match=r"shard seq-000001.tar has no sha256.*verify_checksums=false"):
        dm(data_dir)
    dm(data_dir, verify_checksums=False)


def test_manifest_and_item_map_must_agree(shards):
    data_dir, _ = shards
    m = read_manifest(str(data_dir))
    write_manifest(str(data_dir), {**m, "num_items": 31})
    with pytest.raises(ManifestError, match=r"num_items is 31 but the item map .*item_map.parquet has 30 rows "
                                            r"\(the manifest claims more items than its item map"):
        dm(data_dir)
    write_manifest(str(data_dir), {**m, "num_items": 29})
    with pytest.raises(ManifestError, match=r"num_items is 29 but .* has 30 rows"):
        dm(data_dir)
    write_manifest(str(data_dir), m)
    os.remove(data_dir / "item_map.parquet")
    with pytest.raises(ManifestError, match=r"item map .*item_map.parquet is missing"):
        dm(data_dir)
    (data_dir / "item_map.parquet").write_text("not parquet")
    with pytest.raises(ManifestError, match=r"item_map.parquet: cannot read the item map"):
        dm(data_dir)
    pq.write_table(pa.table({"item": np.arange(1, 31), "original": np.arange(1, 31)}), data_dir / "item_map.parquet")
    dm(data_dir)


@pytest.mark.parametrize("field,value", [
    ("shard", "/etc/seq-000000.tar"), ("shard", "../seq-000000.tar"), ("shard", "a/../../seq-000000.tar"),
    ("item_map", "../item_map.parquet"), ("item_map", "/tmp/item_map.parquet"), ("user_map", "../users.parquet"),
])
def test_file_names_stay_inside_the_data_dir(shards, field, value):
    data_dir, _ = shards
    m = read_manifest(str(data_dir))
    if field == "shard":
        m["shards"][0]["name"] = value
    else:
        m[field] = value
    write_manifest(str(data_dir), m)
    with pytest.raises(ManifestError, match=rf"{json.dumps(value)[1:-1]!s}".replace(".", r"\.") + r".* must be a file "
                                            r"name inside the data directory.*no absolute path, no '\.\.'"):
        dm(data_dir)


def test_a_process_hashes_a_shard_until_one_whole_read_matched(shards, monkeypatch):
    from data_pipeline import shard_reader

    data_dir, _ = shards
    hashed = []
    real = shard_reader.HashingReader
    monkeypatch.setattr(shard_reader, "HashingReader", lambda raw: hashed.append(raw.name) or real(raw))
    consume(dm(data_dir).test_dataloader())
    assert len(hashed) == 3
    consume(dm(data_dir).test_dataloader())
    assert len(hashed) == 3  # unchanged files: not hashed again
    path = str(data_dir / "seq-000001.tar")
    flip_an_item(path)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a rewritten file has a new mtime
    with pytest.raises(ShardReadError, match=r"seq-000001.tar: sha256"):
        consume(dm(data_dir).test_dataloader())
    assert hashed[3:] == [path]


@pytest.mark.parametrize("baseline", ["popularity", "transition"])
def test_the_baselines_counts_check_the_shards_too(shards, baseline):
    """The baselines count items over every shard outside the loaders: that pass is checked too."""
    from elastic_pl.popularity import training_item_counts
    from elastic_pl.transition import transition_items
    count = training_item_counts if baseline == "popularity" else transition_items
    data_dir, _ = shards
    flip_an_item(str(data_dir / "seq-000001.tar"))
    with pytest.raises(ShardReadError, match=r"seq-000001.tar: sha256 [0-9a-f]{64} does not match"):
        count(dm(data_dir))
    assert count(dm(data_dir, verify_checksums=False)).sum() > 0
