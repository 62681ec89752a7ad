"""Tiny shard sets for tests: user sequences -> ``seq-{shard:06d}.tar`` + ``manifest.json`` +
an identity ``item_map.parquet`` (original id = dense id).

Follows docs/ARCHITECTURE.md (manifest) and ``data_pipeline.shards`` (a block of users per tar
sample), written with ``webdataset.TarWriter``, independent of ``data_pipeline.prepare``.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

from data_pipeline.shards import UserBlock, encode_block


def random_sequences(num_users: int, num_items: int, min_len: int = 1, max_len: int = 30, seed: int = 0) -> list[np.ndarray]:
    """``num_users`` int32 sequences with lengths in ``[min_len, max_len]`` and items in ``1..num_items``."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, size=num_users)
    return [rng.integers(1, num_items + 1, size=n).astype(np.int32) for n in lengths]


def make_block(sequences: Sequence[np.ndarray], users: Sequence[int],
               timestamps: Sequence[np.ndarray] | None = None) -> UserBlock:
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = np.concatenate(list(sequences)).astype(np.int32) if len(sequences) else np.zeros(0, np.int32)
    ts = None
    if timestamps is not None:
        ts = np.concatenate(list(timestamps)).astype(np.int64) if len(timestamps) else np.zeros(0, np.int64)
    return UserBlock(np.asarray(users, dtype=np.int64), offsets, items, ts)


def coded_timestamps(sequences: Sequence[np.ndarray]) -> list[np.ndarray]:
    """A timestamp per item that tells its item: ``10 * item + 7`` (never 0)."""
    return [s.astype(np.int64) * 10 + 7 for s in sequences]


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_shards(
    data_dir: str,
    sequences: Sequence[np.ndarray],
    num_shards: int,
    block_size: int = 8,
    num_items: int | None = None,
    user_ids: Sequence[int] | None = None,
    shard_sizes: Sequence[int] | None = None,
    timestamps: Sequence[np.ndarray] | None = None,
    format_version: int = 2,
) -> dict:
    """Write users (in order) into ``num_shards`` shards of near-equal size, ``block_size`` users per
    tar sample, and a manifest. User ``i`` gets id ``user_ids[i]`` (default ``i``). ``shard_sizes``
    (users per shard, summing to ``len(sequences)``) overrides the even split. ``timestamps``: one
    array per sequence, stored as ``ts.npy``. ``format_version=1`` writes the old manifest (no
    timestamps field). Returns the manifest."""
    os.makedirs(data_dir, exist_ok=True)
    users = list(range(len(sequences))) if user_ids is None else list(user_ids)
    if num_items is None:
        num_items = int(max((int(s.max()) for s in sequences if len(s)), default=1))
    if shard_sizes is None:
        bounds = np.linspace(0, len(sequences), num_shards + 1).round().astype(int)
    else:
        assert len(shard_sizes) == num_shards and sum(shard_sizes) == len(sequences)
        bounds = np.concatenate([[0], np.cumsum(shard_sizes)]).astype(int)
    shards = []
    for k in range(num_shards):
        lo, hi = int(bounds[k]), int(bounds[k + 1])
        name = f"seq-{k:06d}.tar"
        path = os.path.join(data_dir, name)
        with wds.TarWriter(path) as sink:
            for b, start in enumerate(range(lo, hi, block_size)):
                stop = min(start + block_size, hi)
                ts = None if timestamps is None else timestamps[start:stop]
                sink.write(encode_block(f"b{b:06d}", make_block(sequences[start:stop], users[start:stop], ts)))
        shards.append({"name": name, "users": hi - lo, "events": int(sum(len(s) for s in sequences[lo:hi])),
                       "sha256": _sha256(path)})
    write_item_map(data_dir, num_items)
    manifest = {
        "format_version": format_version,
        "num_items": num_items,
        "num_users": len(sequences),
        "num_events": int(sum(len(s) for s in sequences)),
        "shards": shards,
        "item_map": "item_map.parquet",
        "user_map": "user_map.parquet",
        "prepare_config": {"writer": "tests/shard_fixtures.py"},
        "source": {"synthetic": True},
    }
    if format_version >= 2:
        manifest["timestamps"] = timestamps is not None
    write_manifest(data_dir, manifest)
    return manifest


def write_item_map(data_dir: str, num_items: int) -> None:
    ids = np.arange(1, num_items + 1, dtype=np.int64)
    pq.write_table(pa.table({"item": ids, "original": ids, "count": np.ones(num_items, np.int64)}),
                   os.path.join(data_dir, "item_map.parquet"))


def write_manifest(data_dir: str, manifest: dict) -> None:
    with open(os.path.join(data_dir, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)


def read_manifest(data_dir: str) -> dict:
    with open(os.path.join(data_dir, "manifest.json"), encoding="utf-8") as f:
        return json.load(f)
