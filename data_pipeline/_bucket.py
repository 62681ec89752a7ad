"""Per-bucket work of prepare: the counting pass (for k-core and the item map) and the final pass
that sorts each user's events by (ts, original row) and writes shard parts.

Both run in worker processes and exchange only paths and small JSON-able dicts.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_pipeline._stage import read_bucket
from data_pipeline._tarwriter import ShardWriter
from data_pipeline.shards import UserBlock


def _filter(table: pa.Table, keep_items: Optional[pa.Array], k: int):
    """Drop events of items not in ``keep_items``, then users with < k events (k-core step)."""
    if keep_items is not None:
        table = table.filter(pc.is_in(table.column("item"), value_set=keep_items))
    dropped = 0
    if k > 1 and table.num_rows:
        vc = pc.value_counts(table.column("user"))
        small = vc.field("values").filter(pc.less(vc.field("counts"), k))
        dropped = len(small)
        if dropped:
            table = table.filter(pc.invert(pc.is_in(table.column("user"), value_set=small)))
    return table, dropped


def count_bucket(stage_dir: str, b: int, keep_path: str, k: int, out_path: str) -> dict:
    """One k-core/count pass over bucket ``b``: item counts to ``out_path`` (Parquet)."""
    keep = pq.read_table(keep_path).column("item").combine_chunks() if keep_path else None
    table, dropped = _filter(read_bucket(stage_dir, b), keep, k)
    vc = pc.value_counts(table.column("item")) if table.num_rows else None
    items = vc.field("values") if vc is not None else pa.array([], table.schema.field("item").type)
    counts = vc.field("counts") if vc is not None else pa.array([], pa.int64())
    pq.write_table(pa.table({"item": items, "count": counts}), out_path + ".tmp")
    os.replace(out_path + ".tmp", out_path)
    users = len(pc.unique(table.column("user"))) if table.num_rows else 0
    return {"bucket": b, "users": users, "events": table.num_rows, "dropped_users": dropped}


def _sorted_users(user: pa.ChunkedArray):
    """(unique original ids sorted, code of each event) for int or string ids."""
    if pa.types.is_integer(user.type):
        uniq, codes = np.unique(user.to_numpy(), return_inverse=True)
        return pa.array(uniq), codes.astype(np.int64)
    uniq = pc.unique(user)
    uniq = uniq.take(pc.sort_indices(uniq))
    return uniq, pc.index_in(user, value_set=uniq).to_numpy().astype(np.int64)


def _order(codes: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Stable argsort by (user code, ts): equal keys keep file order, i.e. the original row."""
    if len(ts) == 0:
        return np.zeros(0, dtype=np.int64)
    t = ts - ts.min()
    if int(t.max()) < (1 << 32) and int(codes.max()) < (1 << 30):
        return np.argsort((codes << 32) | t, kind="stable")
    return np.lexsort((ts, codes))


def write_bucket(stage_dir: str, b: int, item_map_path: str, k: int, user_base: int,
                 users_per_block: int, shard_max_events: int, parts_dir: str) -> dict:
    """Sort bucket ``b`` into user sequences and write ``b{b}-p{j}.tar`` parts + a user map part."""
    omap = pq.read_table(item_map_path, columns=["original"]).column("original").combine_chunks()
    table = read_bucket(stage_dir, b)
    dense = pc.index_in(table.column("item"), value_set=omap)
    if k > 0:
        table, _ = _filter(table.filter(pc.is_valid(dense)), None, k)
        dense = pc.index_in(table.column("item"), value_set=omap)
    elif dense.null_count:
        raise ValueError(f"bucket {b}: items missing from the item map (stale work dir?)")
    uniq, codes = _sorted_users(table.column("user"))
    order = _order(codes, table.column("ts").to_numpy())
    items = (dense.to_numpy(zero_copy_only=False).astype(np.int32) + 1)[order]
    lengths = np.bincount(codes, minlength=len(uniq)).astype(np.int64)
    del table, dense, codes, order
    offsets = np.r_[0, np.cumsum(lengths)]
    users = user_base + np.arange(len(uniq), dtype=np.int64)
    parts, writer = [], None
    for s in range(0, len(uniq), users_per_block):
        e = min(s + users_per_block, len(uniq))
        if writer is None:
            writer = ShardWriter(os.path.join(parts_dir, f"b{b:05d}-p{len(parts):05d}.tar"))
        o = offsets[s : e + 1]
        writer.write_block(f"u{users[s]:012d}", UserBlock(users[s:e], o - o[0], items[o[0] : o[-1]]))
        if writer.events >= shard_max_events:
            parts.append(writer.close())
            writer = None
    if writer is not None:
        parts.append(writer.close())
    umap = os.path.join(parts_dir, f"b{b:05d}.users.parquet")
    pq.write_table(pa.table({"user": users, "original": uniq, "length": lengths}), umap + ".tmp")
    os.replace(umap + ".tmp", umap)
    return {"bucket": b, "users": int(len(uniq)), "events": int(offsets[-1]), "parts": parts,
            "user_map": os.path.basename(umap)}
