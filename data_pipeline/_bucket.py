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
from data_pipeline.errors import DataError


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
    per_user = pc.value_counts(table.column("user")).field("counts") if table.num_rows else None
    users = len(per_user) if per_user is not None else 0
    longest = pc.max(per_user).as_py() if per_user is not None else 0
    return {"bucket": b, "users": users, "events": table.num_rows, "dropped_users": dropped, "longest": longest}


def dense_items(item: pa.ChunkedArray, originals: pa.Array) -> np.ndarray:
    """Dense id (1..V, position in ``originals`` + 1) of each event's item; 0 if not in the map."""
    if not pa.types.is_integer(item.type):
        return (pc.fill_null(pc.index_in(item, value_set=originals), -1).to_numpy() + 1).astype(np.int32)
    x, o = item.to_numpy(), originals.to_numpy()
    lo, hi = int(o.min()), int(o.max())
    if hi - lo < max(4 * len(o), 1 << 24):  # lookup table: O(1) per event
        lut = np.zeros(hi - lo + 1, dtype=np.int32)
        lut[o - lo] = np.arange(1, len(o) + 1, dtype=np.int32)
        inside = (x >= lo) & (x <= hi)
        return lut[np.where(inside, x - lo, 0)] * inside if not inside.all() else lut[x - lo]
    so = np.argsort(o)
    pos = np.minimum(np.searchsorted(o[so], x), len(o) - 1)
    return np.where(o[so][pos] == x, so[pos] + 1, 0).astype(np.int32)


def stable_argsort(key: np.ndarray) -> np.ndarray:
    """``np.argsort(key, kind="stable")`` via a fast unstable sort plus a fix-up of tied runs."""
    n = len(key)
    order = np.argsort(key)
    ks = key[order]
    new = np.r_[True, ks[1:] != ks[:-1]]
    if new.all():
        return order
    tied = ~new | np.r_[~new[1:], False]  # members of runs longer than one
    idx = np.flatnonzero(tied)
    run = (np.cumsum(new) - 1)[idx]
    sub = order[idx]
    order[idx] = sub[np.argsort(run * n + sub)]  # unique keys: run < n, sub < n
    return order


def user_order(user: pa.ChunkedArray, ts: np.ndarray):
    """Order of events by (user id, ts, file position), the sorted unique users and their lengths."""
    if pa.types.is_integer(user.type):
        u = user.to_numpy()
        key_u, uniq = u - u.min(), None
    else:
        uniq = pc.unique(user)
        uniq = uniq.take(pc.sort_indices(uniq))
        key_u = pc.index_in(user, value_set=uniq).to_numpy().astype(np.int64)
    t = ts - ts.min()
    ubits, tbits = int(key_u.max()).bit_length(), int(t.max()).bit_length()
    if ubits + tbits <= 62 and len(ts) < (1 << 31):
        order = stable_argsort((key_u << tbits) | t)
    else:
        order = np.lexsort((ts, key_u))
    su = key_u[order]
    starts = np.flatnonzero(np.r_[True, su[1:] != su[:-1]])
    lengths = np.diff(np.r_[starts, len(su)]).astype(np.int64)
    if uniq is None:
        uniq = pa.array(u[order[starts]])
    return order, uniq, lengths


def write_bucket(stage_dir: str, b: int, item_map_path: str, k: int, user_base: int,
                 users_per_block: int, shard_max_events: int, parts_dir: str,
                 ts_per_second: Optional[int] = None) -> dict:
    """Sort bucket ``b`` into user sequences and write ``b{b}-p{j}.tar`` parts + a user map part.
    ``ts_per_second``: the staged ``ts`` are timestamps in these ticks, stored as epoch seconds
    (``ts.npy``); None: ``ts`` is the file order and no timestamps are stored."""
    omap = pq.read_table(item_map_path, columns=["original"]).column("original").combine_chunks()
    table = read_bucket(stage_dir, b)
    dense = dense_items(table.column("item"), omap)
    if k > 0:
        table, _ = _filter(table.filter(pa.array(dense > 0)), None, k)
        dense = dense_items(table.column("item"), omap)
    if len(dense) and dense.min() == 0:
        raise DataError(f"bucket {b}: items missing from the item map (stale work dir?)")
    ts = table.column("ts").to_numpy()
    if table.num_rows == 0:
        order, uniq, lengths = np.zeros(0, np.int64), pa.array([], table.schema.field("user").type), np.zeros(0, np.int64)
    else:
        order, uniq, lengths = user_order(table.column("user"), ts)
    items = dense[order]
    seconds = None if ts_per_second is None else np.floor_divide(ts[order], ts_per_second)
    del table, dense, order, ts
    offsets = np.r_[0, np.cumsum(lengths)]
    users = user_base + np.arange(len(uniq), dtype=np.int64)
    parts, writer = [], None
    for s in range(0, len(uniq), users_per_block):
        e = min(s + users_per_block, len(uniq))
        if writer is None:
            writer = ShardWriter(os.path.join(parts_dir, f"b{b:05d}-p{len(parts):05d}.tar"))
        o = offsets[s : e + 1]
        block_ts = None if seconds is None else seconds[o[0] : o[-1]]
        writer.write_block(f"u{users[s]:012d}", UserBlock(users[s:e], o - o[0], items[o[0] : o[-1]], block_ts))
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
