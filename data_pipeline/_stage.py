"""Stage 1 of prepare: stream the raw events once and split them by user hash into buckets.

Bucket b of input slice w is an Arrow IPC stream file ``w{w:03d}-b{b:05d}.arrow`` (``user, item,
ts``). Slices are contiguous ranges of the input (Parquet row groups, staged in parallel; text
inputs are one slice) and each slice is partitioned stably, so reading a bucket's slices in order
gives its events in original row order: a row's position is its (ts, row) tie-breaker and the
global ``row`` column need not be stored.
"""
from __future__ import annotations

import glob
import hashlib
import os
from typing import List

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_pipeline.config import PrepareConfig, SourceConfig
from data_pipeline.readers import ReadStats, iter_events, parquet_units
from data_pipeline.errors import DataError

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


def bucket_path(stage_dir: str, part: int, b: int) -> str:
    return os.path.join(stage_dir, f"w{part:03d}-b{b:05d}.arrow")


def stage_part(src: SourceConfig, cfg: PrepareConfig, stage_dir: str, part: int, units, progress: bool) -> dict:
    """Partition one contiguous slice of the input (``units``; None = all) into bucket files."""
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
        for batch in iter_events(src, stats, cfg.batch_rows, units):
            if len(batch) == 0:
                continue
            batch = pa.RecordBatch.from_arrays(batch.columns[:3], names=["user", "item", "ts"])
            if schema is None:
                schema = batch.schema
                for b in range(nb):
                    sinks[b] = pa.OSFile(bucket_path(stage_dir, part, b) + ".tmp", "wb")
                    writers[b] = pa.ipc.new_stream(sinks[b], schema)
            elif batch.schema != schema:
                raise DataError(f"{src.path}: files disagree on column types ({batch.schema} vs {schema})")
            bid = bucket_of(batch.column(0), nb)
            order = np.argsort(bid, kind="stable")
            cnt = np.bincount(bid, minlength=nb)
            part_batch = batch.take(pa.array(order))
            ends = np.cumsum(cnt)
            for b in np.nonzero(cnt)[0]:
                writers[b].write_batch(part_batch.slice(int(ends[b] - cnt[b]), int(cnt[b])))
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
    if schema is not None:
        for b in range(nb):
            os.replace(bucket_path(stage_dir, part, b) + ".tmp", bucket_path(stage_dir, part, b))
    return {"read": stats.as_dict(), "bucket_events": counts.tolist(),
            "schema": None if schema is None else [str(t) for t in schema.types]}


def _split(units: list, parts: int) -> list:
    """Contiguous slices of ``units`` with about equal rows (order is kept: row order = file order)."""
    rows = np.cumsum([u[2] for u in units])
    cuts = np.searchsorted(rows, rows[-1] * np.arange(1, parts) / parts, side="left") + 1
    bounds = np.unique(np.r_[0, np.minimum(cuts, len(units)), len(units)])
    return [units[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]


def stage(src: SourceConfig, cfg: PrepareConfig, stage_dir: str, progress: bool = True) -> dict:
    """Partition the events of ``src`` into ``cfg.num_buckets`` buckets; Parquet inputs are split
    into ``cfg.stage_workers`` contiguous row-group ranges staged in parallel. Returns counts."""
    from data_pipeline._pool import run_tasks
    os.makedirs(stage_dir, exist_ok=True)
    units = parquet_units(src) if cfg.stage_workers > 1 else None
    if units and len(units) > 1:
        slices = _split(units, cfg.stage_workers)
        res = run_tasks(stage_part, [(src, cfg, stage_dir, i, s, False) for i, s in enumerate(slices)],
                        cfg.stage_workers, "stage", progress)
    else:
        res = [stage_part(src, cfg, stage_dir, 0, None, progress)]
    schemas = {tuple(r["schema"]) for r in res if r["schema"] is not None}
    if len(schemas) > 1:
        raise DataError(f"{src.path}: files disagree on column types {sorted(schemas)}")
    counts = np.sum([r["bucket_events"] for r in res], axis=0)
    read = ReadStats()
    for r in res:
        read.merge(r["read"])
    if not schemas or counts.sum() == 0:
        what = " after filters" if read.rows else ""
        raise DataError(f"{src.path}: no events{what} (empty input)")
    schema = schemas.pop()
    return {"read": read.as_dict(), "events": int(counts.sum()), "bucket_events": counts.tolist(),
            "user_type": schema[0], "item_type": schema[1], "ts_per_second": read.ts_per_second}


def read_bucket(stage_dir: str, b: int) -> pa.Table:
    """The staged events of bucket ``b``, parts in input order (memory-mapped)."""
    parts = sorted(glob.glob(os.path.join(stage_dir, f"w*-b{b:05d}.arrow")))
    tables = [pa.ipc.open_stream(pa.memory_map(p)).read_all() for p in parts]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]
