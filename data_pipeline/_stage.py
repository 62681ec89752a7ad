"""Stage 1 of prepare: stream the raw events once and split them by user hash into buckets.

Each bucket is an Arrow IPC stream file ``b{bucket:05d}.arrow`` with columns ``user, item, ts``.
Rows keep their original relative order inside a bucket (a stable partition of each batch, batches
in input order), so a row's position in its bucket file is its (ts, row) tie-breaker: the global
``row`` column need not be stored.
"""
from __future__ import annotations

import hashlib
import os
from typing import List

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_pipeline.config import PrepareConfig, SourceConfig
from data_pipeline.readers import ReadStats, iter_events

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def bucket_of(users: pa.Array, num_buckets: int) -> np.ndarray:
    """Deterministic bucket of each user id (splitmix64 of int64 ids; blake2b of strings)."""
    if pa.types.is_integer(users.type):
        x = users.to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint64)
        with np.errstate(over="ignore"):
            x = x ^ (x >> np.uint64(30))
            x = x * _M1
            x = x ^ (x >> np.uint64(27))
            x = x * _M2
            x = x ^ (x >> np.uint64(31))
        return (x % np.uint64(num_buckets)).astype(np.uint16 if num_buckets <= 65535 else np.int64)
    enc = pc.dictionary_encode(users).combine_chunks() if isinstance(users, pa.ChunkedArray) else pc.dictionary_encode(users)
    hashes = np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") % num_buckets
                       for s in enc.dictionary.to_pylist()], dtype=np.uint16)
    return hashes[enc.indices.to_numpy(zero_copy_only=False)]


def bucket_path(stage_dir: str, b: int) -> str:
    return os.path.join(stage_dir, f"b{b:05d}.arrow")


def stage(src: SourceConfig, cfg: PrepareConfig, stage_dir: str, progress: bool = True) -> dict:
    """Partition the events of ``src`` into ``cfg.num_buckets`` bucket files; return counts."""
    os.makedirs(stage_dir, exist_ok=True)
    nb = cfg.num_buckets
    stats = ReadStats()
    writers: List = [None] * nb
    sinks: List = [None] * nb
    counts = np.zeros(nb, dtype=np.int64)
    schema = None
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(desc="stage", unit="ev", unit_scale=True)
    try:
        for batch in iter_events(src, stats, cfg.batch_rows):
            if len(batch) == 0:
                continue
            batch = pa.RecordBatch.from_arrays(batch.columns[:3], names=["user", "item", "ts"])
            if schema is None:
                schema = batch.schema
                for b in range(nb):
                    sinks[b] = pa.OSFile(bucket_path(stage_dir, b) + ".tmp", "wb")
                    writers[b] = pa.ipc.new_stream(sinks[b], schema)
            elif batch.schema != schema:
                raise ValueError(f"{src.path}: files disagree on column types ({batch.schema} vs {schema})")
            bid = bucket_of(batch.column(0), nb)
            order = np.argsort(bid, kind="stable")
            cnt = np.bincount(bid, minlength=nb)
            part = batch.take(pa.array(order))
            ends = np.cumsum(cnt)
            for b in np.nonzero(cnt)[0]:
                writers[b].write_batch(part.slice(int(ends[b] - cnt[b]), int(cnt[b])))
            counts += cnt
            if bar is not None:
                bar.update(len(batch))
    finally:
        for w, s in zip(writers, sinks):
            if w is not None:
                w.close()
                s.close()
        if bar is not None:
            bar.close()
    if schema is None or counts.sum() == 0:
        what = " after filters" if stats.rows else ""
        raise ValueError(f"{src.path}: no events{what} (empty input)")
    for b in range(nb):
        os.replace(bucket_path(stage_dir, b) + ".tmp", bucket_path(stage_dir, b))
    return {"read": stats.as_dict(), "events": int(counts.sum()), "bucket_events": counts.tolist(),
            "user_type": str(schema.field("user").type), "item_type": str(schema.field("item").type)}


def read_bucket(stage_dir: str, b: int) -> pa.Table:
    """The staged events of bucket ``b`` (memory-mapped; empty table if the bucket is empty)."""
    return pa.ipc.open_stream(pa.memory_map(bucket_path(stage_dir, b))).read_all()
