"""Stage + plan of prepare: partition the raw log into buckets, run the (k-core) counting passes,
write the item map (dense ids 1..V by descending count, ties by original id) and fix each
bucket's first dense user id. The plan is a small JSON file that every bucket task reads.
"""
from __future__ import annotations

import os
from typing import List

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_pipeline._bucket import count_bucket
from data_pipeline._pool import run_tasks
from data_pipeline._stage import stage
from data_pipeline.config import PrepareConfig, SourceConfig, parse_size
from data_pipeline.errors import DataError

BYTES_PER_EVENT = 120  # per-bucket working set per event: ~110 B measured at 3.1M events/bucket (docs/DATA.md)


def _merge_counts(paths: List[str], flush_rows: int = 1 << 23) -> pa.Table:
    """Sum per-bucket (item, count) tables; merges in batches of ~flush_rows rows."""
    def merge(ts):
        t = pa.concat_tables(ts)
        return t.group_by("item").aggregate([("count", "sum")]).rename_columns(["item", "count"])

    pending, rows = [], 0
    for p in paths:
        pending.append(pq.read_table(p))
        rows += pending[-1].num_rows
        if rows > flush_rows and len(pending) > 1:
            pending = [merge(pending)]
            rows = pending[0].num_rows
    return merge(pending) if len(pending) > 1 else pending[0]


MIN_USER_EVENTS = 4  # a training pair, then the validation and the test item


def make_plan(src: SourceConfig, cfg: PrepareConfig, work: str, item_map_path: str) -> dict:
    """Stage the log into buckets and compute the plan (see module docstring)."""
    stage_dir, count_dir = os.path.join(work, "stage"), os.path.join(work, "counts")
    os.makedirs(count_dir, exist_ok=True)
    staged = stage(src, cfg, stage_dir, cfg.progress)
    biggest = max(staged["bucket_events"])
    if biggest * BYTES_PER_EVENT > parse_size(cfg.memory_limit):
        need = -(-staged["events"] * BYTES_PER_EVENT // parse_size(cfg.memory_limit)) * 2
        raise DataError(f"prepare.num_buckets: bucket of {biggest} events needs ~{biggest * BYTES_PER_EVENT / 1e9:.1f} GB "
                         f"> memory_limit={cfg.memory_limit}; use num_buckets >= {need}")
    nb, k = cfg.num_buckets, cfg.k_core
    keep_path, rounds = "", 0
    while True:
        rounds += 1
        outs = [os.path.join(count_dir, f"r{rounds:03d}-b{b:05d}.parquet") for b in range(nb)]
        res = run_tasks(count_bucket, [(stage_dir, b, keep_path, k, outs[b]) for b in range(nb)],
                        cfg.workers, f"count{' (k-core round %d)' % rounds if k > 1 else ''}", cfg.progress)
        counts = _merge_counts(outs)
        if counts is None or counts.num_rows == 0:
            raise DataError(f"{src.path}: no events left after k_core={k}")
        small = pc.less(counts.column("count"), k) if k > 1 else None
        # the user set is a function of the item set, so the fixed point is reached when no
        # surviving item has 0 < count < k (items left with no events vanish harmlessly)
        if k <= 1 or not pc.any(small).as_py():
            break
        keep_path = os.path.join(count_dir, f"keep-r{rounds:03d}.parquet")
        pq.write_table(counts.filter(pc.invert(small)).select(["item"]), keep_path)
    longest = max(r["longest"] for r in res)
    if longest < MIN_USER_EVENTS:
        raise DataError(f"{src.path}: no user has {MIN_USER_EVENTS} or more events (the longest history has "
                        f"{longest}{f' after k_core={k}' if k > 1 else ''}): leave-one-out needs two for a training "
                        "pair, then the validation and test items, so nothing could be trained or evaluated")
    order = pc.sort_indices(counts, sort_keys=[("count", "descending"), ("item", "ascending")])
    counts = counts.take(order)
    item_map = pa.table({"item": pa.array(range(1, counts.num_rows + 1), pa.int64()),
                         "original": counts.column("item"), "count": counts.column("count")})
    pq.write_table(item_map, item_map_path + ".tmp")
    os.replace(item_map_path + ".tmp", item_map_path)
    bases, acc = [], 0
    for r in res:
        bases.append(acc)
        acc += r["users"]
    return {"stage": staged, "ts_per_second": staged["ts_per_second"], "k_core_rounds": rounds, "num_items": counts.num_rows, "num_users": acc,
            "num_events": sum(r["events"] for r in res), "bucket_users": [r["users"] for r in res],
            "bucket_events": [r["events"] for r in res], "user_base": bases}
