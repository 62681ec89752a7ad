"""Synthetic long-history event log, streamed to Parquet (``user, item, ts``), seeded.

Model: items have Zipf popularity and belong to one of ``num_clusters`` latent interests. Each
user holds ``interests_per_user`` interest slots; its history is a sequence of segments (a new
segment with ``switch_prob`` per event) each drawing items from one slot's cluster by popularity;
at a segment start the chosen slot is replaced by a new random cluster with prob. ``drift``, so
interests drift over time. ``noise_prob`` of events come from global popularity. Lengths are
lognormal clipped to [min_length, max_length]; gaps are exponential with ``tie_prob`` zero gaps.
Users are generated in chunks of ~``rows_per_group`` events (vectorised numpy; memory bounded),
rows are shuffled inside each chunk (``shuffle_rows``) so the file is not sorted by user.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline.config import SyntheticConfig

SCHEMA = pa.schema([("user", pa.int64()), ("item", pa.int64()), ("ts", pa.int64())])
BASE_TS = 1_500_000_000


@dataclass(frozen=True)
class Catalog:
    """The item side: original ids by popularity rank, clusters, sampling tables."""

    item_ids: np.ndarray  # int64 [V] original id of the item of popularity rank r
    cluster: np.ndarray  # int64 [V] cluster of rank r
    global_cdf: np.ndarray  # float64 [V]
    by_cluster: np.ndarray  # int64 [V] ranks grouped by cluster (popular first)
    cluster_cdf: np.ndarray  # float64 [V] c + within-cluster cdf, aligned with by_cluster


def catalog(cfg: SyntheticConfig) -> Catalog:
    rng = np.random.default_rng([cfg.seed, 0])
    v, k = cfg.num_items, cfg.num_clusters
    w = 1.0 / np.arange(1, v + 1, dtype=np.float64) ** cfg.zipf_exponent
    item_ids = rng.permutation(v).astype(np.int64) * 7 + 11  # sparse, unrelated to popularity
    cluster = rng.permutation(np.arange(v) % k).astype(np.int64)  # every cluster non-empty
    by_cluster = np.argsort(cluster, kind="stable")
    cw = w[by_cluster]
    cc = cluster[by_cluster]
    starts = np.searchsorted(cc, np.arange(k))
    cs = np.cumsum(cw)
    before = np.repeat(cs[starts] - cw[starts], np.diff(np.append(starts, v)))
    totals = np.add.reduceat(cw, starts)
    cluster_cdf = cc + (cs - before) / totals[cc]
    return Catalog(item_ids, cluster, np.cumsum(w) / w.sum(), by_cluster, cluster_cdf)


def lengths(cfg: SyntheticConfig) -> np.ndarray:
    rng = np.random.default_rng([cfg.seed, 1])
    mu = np.log(cfg.mean_length) - cfg.length_sigma**2 / 2
    raw = rng.lognormal(mu, cfg.length_sigma, cfg.num_users)
    return np.clip(np.rint(raw), cfg.min_length, cfg.max_length).astype(np.int64)


def _segment_clusters(rng, cfg: SyntheticConfig, seg_user: np.ndarray, first: np.ndarray, nu: int) -> np.ndarray:
    """Cluster of each segment: its slot's latest replacement, else the slot's initial cluster."""
    s, k, n = cfg.interests_per_user, cfg.num_clusters, len(seg_user)
    init = rng.integers(0, k, size=(nu, s))
    slot = rng.integers(0, s, size=n)
    replace = (rng.random(n) < cfg.drift) & ~first
    new = rng.integers(0, k, size=n)
    key = seg_user * s + slot
    order = np.argsort(key, kind="stable")
    ks, rs = key[order], replace[order]
    group_start = np.r_[True, ks[1:] != ks[:-1]]
    anchor = group_start | rs
    value = np.where(rs, new[order], init[seg_user[order], slot[order]])
    src = np.maximum.accumulate(np.where(anchor, np.arange(n), 0))
    out = np.empty(n, dtype=np.int64)
    out[order] = value[src]
    return out


def generate_chunk(cfg: SyntheticConfig, cat: Catalog, lens: np.ndarray, u0: int, u1: int, chunk: int) -> pa.Table:
    """Events of users ``u0..u1-1`` (deterministic given seed and chunk index)."""
    rng = np.random.default_rng([cfg.seed, 2, chunk])
    ln = lens[u0:u1]
    nu, n = u1 - u0, int(ln.sum())
    starts = np.cumsum(ln) - ln
    uloc = np.repeat(np.arange(nu), ln)
    first = np.zeros(n, dtype=bool)
    first[starts] = True
    switch = (rng.random(n) < cfg.switch_prob) | first
    seg = np.cumsum(switch) - 1
    seg_clusters = _segment_clusters(rng, cfg, uloc[switch], first[switch], nu)
    cl = seg_clusters[seg]
    pick = np.searchsorted(cat.cluster_cdf, cl + rng.random(n), side="right")
    rank = cat.by_cluster[np.minimum(pick, len(cat.by_cluster) - 1)]
    noise = rng.random(n) < cfg.noise_prob
    rank[noise] = np.minimum(np.searchsorted(cat.global_cdf, rng.random(int(noise.sum())), side="right"), len(cat.item_ids) - 1)
    gaps = rng.exponential(cfg.mean_gap_s, n).astype(np.int64) + 1
    gaps[rng.random(n) < cfg.tie_prob] = 0
    gaps[starts] = 0
    cs = np.cumsum(gaps)
    t0 = BASE_TS + rng.integers(0, 365 * 86400, size=nu)
    ts = np.repeat(t0 - cs[starts], ln) + cs
    user = (uloc + u0 + 1).astype(np.int64)
    item = cat.item_ids[rank]
    if cfg.shuffle_rows:
        perm = rng.permutation(n)
        user, item, ts = user[perm], item[perm], ts[perm]
    return pa.Table.from_arrays([pa.array(user), pa.array(item), pa.array(ts)], schema=SCHEMA)


def chunk_bounds(cfg: SyntheticConfig, lens: np.ndarray) -> np.ndarray:
    """User boundaries of the chunks: each chunk holds ~rows_per_group events (>= 1 user)."""
    ends = np.cumsum(lens)
    cuts = np.searchsorted(ends, np.arange(cfg.rows_per_group, ends[-1], cfg.rows_per_group), side="left") + 1
    return np.unique(np.r_[0, np.minimum(cuts, len(lens)), len(lens)])


def generate(cfg: SyntheticConfig, path: str, progress: bool = False) -> dict:
    """Write the log to ``path`` (Parquet, one row group per chunk); return counts."""
    cat, lens = catalog(cfg), lengths(cfg)
    bounds = chunk_bounds(cfg, lens)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    it = range(len(bounds) - 1)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="synthetic", unit="chunk")
    with pq.ParquetWriter(tmp, SCHEMA, compression="snappy") as w:
        for c in it:
            w.write_table(generate_chunk(cfg, cat, lens, int(bounds[c]), int(bounds[c + 1]), c),
                          row_group_size=1 << 30)
    os.replace(tmp, path)
    return {"path": path, "events": int(lens.sum()), "users": cfg.num_users, "items": cfg.num_items,
            "max_length": int(lens.max())}


def item_clusters(cfg: SyntheticConfig) -> dict:
    """Original item id -> latent cluster (ground truth, for tests and diagnostics)."""
    cat = catalog(cfg)
    return dict(zip(cat.item_ids.tolist(), cat.cluster.tolist()))


def main(argv=None) -> None:
    import argparse
    from dataclasses import fields
    ap = argparse.ArgumentParser(description="Write a synthetic event log (Parquet).")
    ap.add_argument("output")
    def boolean(text: str) -> bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
        return text.lower() in ("true", "1")

    for f in fields(SyntheticConfig):
        kind = boolean if isinstance(f.default, bool) else type(f.default)
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    a = vars(ap.parse_args(argv))
    out = a.pop("output")
    print(generate(SyntheticConfig(**a), out, progress=True))


if __name__ == "__main__":
    main()
