"""Synthetic long-history event log, streamed to Parquet (``user, item, ts``), seeded.

Catalog (both kinds): items have Zipf popularity and belong to one of ``num_clusters`` latent
interests (clusters). A user's history is a sequence of segments (a new segment with
``switch_prob`` per event); a segment draws items from one cluster by popularity, and
``noise_prob`` of events come from global popularity instead.

``kind="drift"`` (default): each user holds ``interests_per_user`` interest slots; a segment
uses a random slot, whose cluster is first replaced by a random one with prob. ``drift``, so
interests drift and mostly the recent past predicts the next item.

``kind="longrange"``: far-back events carry signal the recent window does not.
  * ``interests_per_user`` STABLE clusters per user that never change, each with ``favourites``
    items of it (a uniform subset, fixed per user). A segment revisits a stable cluster (uniformly)
    with prob. ``revisit_prob`` and draws uniformly from its favourites; else it is a short-term
    segment on the user's short-term cluster z, by popularity, z being first replaced by a random
    cluster with prob. ``drift``. A revisit shows a few favourites; the rest lie further back.
  * routines: ``num_routines`` items per user drawn by popularity, in a fixed cycle; each event is
    with prob. ``routine_prob`` the next item of the cycle, so a routine item comes back about
    every ``num_routines / routine_prob`` events (periodic re-consumption).
  ``data_pipeline.oracle`` computes the exact next-item distribution of this process.

Lengths are lognormal clipped to [min_length, max_length]; gaps are exponential with
``tie_prob`` zero gaps. Users are generated in chunks of ~``rows_per_group`` events (vectorised
numpy; memory bounded), rows are shuffled inside each chunk (``shuffle_rows``) so the file is not
sorted by user.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

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
    w = popularity_weights(cfg)
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


def popularity_weights(cfg: SyntheticConfig) -> np.ndarray:
    """Unnormalised Zipf weight of each popularity rank."""
    return 1.0 / np.arange(1, cfg.num_items + 1, dtype=np.float64) ** cfg.zipf_exponent


def lengths(cfg: SyntheticConfig) -> np.ndarray:
    rng = np.random.default_rng([cfg.seed, 1])
    mu = np.log(cfg.mean_length) - cfg.length_sigma**2 / 2
    raw = rng.lognormal(mu, cfg.length_sigma, cfg.num_users)
    return np.clip(np.rint(raw), cfg.min_length, cfg.max_length).astype(np.int64)


@dataclass
class Events:
    """One chunk's events in generation order (users contiguous), with their latent labels."""

    lens: np.ndarray  # [nu] events per user
    rank: np.ndarray  # [n] popularity rank of the item
    cluster: np.ndarray  # [n] cluster of the event's segment
    group: np.ndarray  # [n] drift: the segment's slot; longrange: 1 = stable revisit, 0 = short-term
    noise: np.ndarray  # [n] bool: the item was drawn from global popularity
    routine: np.ndarray  # [n] longrange: routine cycle position of a routine event, else -1
    latent: dict = field(default_factory=dict)  # per-user latents (arrays with nu rows)

    @property
    def starts(self) -> np.ndarray:
        return np.cumsum(self.lens) - self.lens


def _segment_clusters(rng, cfg: SyntheticConfig, seg_user: np.ndarray, first: np.ndarray, nu: int):
    """Cluster of each segment: its slot's latest replacement, else the slot's initial cluster.

    Returns (cluster, slot) per segment and the initial slot clusters [nu, interests_per_user]."""
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
    return out, slot, init


def _cluster_items(rng, cat: Catalog, cl: np.ndarray) -> np.ndarray:
    pick = np.searchsorted(cat.cluster_cdf, cl + rng.random(len(cl)), side="right")
    return cat.by_cluster[np.minimum(pick, len(cat.by_cluster) - 1)]


def _popular_items(rng, cat: Catalog, size: int) -> np.ndarray:
    return np.minimum(np.searchsorted(cat.global_cdf, rng.random(size), side="right"), len(cat.item_ids) - 1)


def _drift_events(rng, cfg: SyntheticConfig, cat: Catalog, ln: np.ndarray) -> Events:
    nu, n = len(ln), int(ln.sum())
    uloc = np.repeat(np.arange(nu), ln)
    first = np.zeros(n, dtype=bool)
    first[np.cumsum(ln) - ln] = True
    switch = (rng.random(n) < cfg.switch_prob) | first
    seg = np.cumsum(switch) - 1
    seg_clusters, seg_slot, init = _segment_clusters(rng, cfg, uloc[switch], first[switch], nu)
    rank = _cluster_items(rng, cat, seg_clusters[seg])
    noise = rng.random(n) < cfg.noise_prob
    rank[noise] = _popular_items(rng, cat, int(noise.sum()))
    return Events(ln, rank, seg_clusters[seg], seg_slot[seg], noise, np.full(n, -1, dtype=np.int64), {"init": init})


def _distinct(rng, high: np.ndarray, size: int) -> np.ndarray:
    """[len(high), size] distinct uniform integers in [0, high) per row (Floyd's algorithm)."""
    out = np.empty((len(high), size), dtype=np.int64)
    for j in range(size):
        top = high - size + j
        x = rng.integers(0, top + 1)
        out[:, j] = np.where((out[:, :j] == x[:, None]).any(axis=1), top, x)
    return out


def favourite_count(cfg: SyntheticConfig) -> int:
    """Favourite items per stable interest: ``favourites``, at most the smallest cluster's size."""
    return min(cfg.favourites, cfg.num_items // cfg.num_clusters)


def _longrange_events(rng, cfg: SyntheticConfig, cat: Catalog, ln: np.ndarray) -> Events:
    nu, n, k, big_l = len(ln), int(ln.sum()), cfg.num_clusters, cfg.interests_per_user
    starts = np.cumsum(ln) - ln
    uloc = np.repeat(np.arange(nu), ln)
    stable = _distinct(rng, np.full(nu, k), big_l)
    size = np.bincount(cat.cluster, minlength=k)
    first_of = np.cumsum(size) - size  # where each cluster's items start in cat.by_cluster
    m = favourite_count(cfg)
    fav = cat.by_cluster[first_of[stable][..., None] + _distinct(rng, size[stable].ravel(), m).reshape(nu, big_l, m)]
    z0 = rng.integers(0, k, size=nu)
    cycle = _popular_items(rng, cat, nu * cfg.num_routines).reshape(nu, cfg.num_routines)
    offset = rng.integers(0, cfg.num_routines, size=nu)
    first = np.zeros(n, dtype=bool)
    first[starts] = True
    switch = (rng.random(n) < cfg.switch_prob) | first
    seg_user = uloc[switch]
    revisit = rng.random(len(seg_user)) < cfg.revisit_prob
    pick = rng.integers(0, big_l, size=len(seg_user))
    replace = rng.random(len(seg_user)) < cfg.drift
    new = rng.integers(0, k, size=len(seg_user))
    # Short-term cluster of each short segment: the user's latest replacement so far, else z0.
    short = np.flatnonzero(~revisit)
    su, rs = seg_user[short], replace[short]
    anchor = rs | np.r_[True, su[1:] != su[:-1]][: len(su)]
    value = np.where(rs, new[short], z0[su])
    seg_cluster = stable[seg_user, pick]
    seg_cluster[short] = value[np.maximum.accumulate(np.where(anchor, np.arange(len(short)), 0))]
    seg = np.cumsum(switch) - 1
    cl, grp = seg_cluster[seg], revisit[seg]
    rank = _cluster_items(rng, cat, cl)
    rank[grp] = fav[uloc[grp], pick[seg][grp], rng.integers(0, m, size=int(grp.sum()))]
    noise = rng.random(n) < cfg.noise_prob
    rank[noise] = _popular_items(rng, cat, int(noise.sum()))
    routine = rng.random(n) < cfg.routine_prob
    done = np.cumsum(routine) - routine  # routine events before each event, over the chunk
    pos = (done - done[starts][uloc] + offset[uloc]) % cfg.num_routines
    rank[routine] = cycle[uloc[routine], pos[routine]]
    latent = {"stable": stable, "favourites": fav, "z0": z0, "cycle": cycle, "offset": offset}
    return Events(ln, rank, cl, grp.astype(np.int64), noise & ~routine, np.where(routine, pos, -1), latent)


def chunk_events(cfg: SyntheticConfig, cat: Catalog, lens: np.ndarray, u0: int, u1: int, chunk: int):
    """(events of users ``u0..u1-1``, the chunk's generator positioned after them)."""
    if cfg.kind == "drift":
        rng = np.random.default_rng([cfg.seed, 2, chunk])
        return _drift_events(rng, cfg, cat, lens[u0:u1]), rng
    rng = np.random.default_rng([cfg.seed, 3, chunk])
    return _longrange_events(rng, cfg, cat, lens[u0:u1]), rng


def generate_chunk(cfg: SyntheticConfig, cat: Catalog, lens: np.ndarray, u0: int, u1: int, chunk: int) -> pa.Table:
    """Events of users ``u0..u1-1`` (deterministic given seed and chunk index)."""
    ev, rng = chunk_events(cfg, cat, lens, u0, u1, chunk)
    ln, starts = ev.lens, ev.starts
    nu, n = u1 - u0, len(ev.rank)
    gaps = rng.exponential(cfg.mean_gap_s, n).astype(np.int64) + 1
    gaps[rng.random(n) < cfg.tie_prob] = 0
    gaps[starts] = 0
    cs = np.cumsum(gaps)
    t0 = BASE_TS + rng.integers(0, 365 * 86400, size=nu)
    ts = np.repeat(t0 - cs[starts], ln) + cs
    user = (np.repeat(np.arange(nu), ln) + u0 + 1).astype(np.int64)
    item = cat.item_ids[ev.rank]
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
