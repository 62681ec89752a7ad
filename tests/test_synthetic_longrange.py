"""Long-range synthetic log and its oracle: determinism, chunking, the oracle's exactness (against a
loop over the process definition, and against the generator's own draws), and that far history
carries signal that the last 50 events do not."""
from __future__ import annotations

import json
import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from data_pipeline import oracle
from data_pipeline.config import SyntheticConfig
from data_pipeline.synthetic import catalog, chunk_bounds, chunk_events, favourite_count, generate, lengths
from elastic_pl.config import load_config
from elastic_pl.metrics import target_ranks

FROZEN = str(Path(__file__).resolve().parents[1] / "configs" / "synthetic-longrange.yaml")
TINY = dict(kind="longrange", num_items=40, num_clusters=5, interests_per_user=2, favourites=3, num_routines=4,
            routine_prob=0.2, switch_prob=0.3, revisit_prob=0.6, drift=0.5, noise_prob=0.1, zipf_exponent=1.0,
            mean_length=30, length_sigma=0.5, min_length=4, max_length=200, tie_prob=0.0)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_deterministic_by_seed_streamed_in_bounded_chunks(tmp_path):
    c = dict(kind="longrange", num_users=400, num_items=600, num_clusters=12, mean_length=60, rows_per_group=4000,
             tie_prob=0.0)
    info = generate(SyntheticConfig(**c, seed=1), str(tmp_path / "a.parquet"))
    generate(SyntheticConfig(**c, seed=1), str(tmp_path / "b.parquet"))
    generate(SyntheticConfig(**c, seed=2), str(tmp_path / "c.parquet"))
    assert _sha(tmp_path / "a.parquet") == _sha(tmp_path / "b.parquet")
    a, d = (pq.read_table(str(tmp_path / f"{x}.parquet")) for x in "ac")
    n = min(len(a), len(d))
    assert not np.array_equal(a["item"].to_numpy()[:n], d["item"].to_numpy()[:n])
    f = pq.ParquetFile(str(tmp_path / "a.parquet"))
    cfg = SyntheticConfig(**c, seed=1)
    sizes = [f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)]
    assert f.num_row_groups > 3 and max(sizes) <= cfg.rows_per_group + cfg.max_length  # one chunk per group
    _, counts = np.unique(a["user"].to_numpy(), return_counts=True)
    assert np.array_equal(counts, lengths(cfg)) and info["events"] == len(a)
    # A chunk is regenerated alone (as the oracle does) into exactly the events of its row group.
    cat, lens = catalog(cfg), lengths(cfg)
    bounds = chunk_bounds(cfg, lens)
    ev = chunk_events(cfg, cat, lens, int(bounds[2]), int(bounds[3]), 2)[0]
    group = f.read_row_group(2)
    order = np.lexsort((group["ts"].to_numpy(), group["user"].to_numpy()))
    assert np.array_equal(group["item"].to_numpy()[order], cat.item_ids[ev.rank])


def test_frozen_config_lengths_heavy_tailed_and_clipped():
    cfg = load_config(FROZEN).data.synthetic
    assert cfg.kind == "longrange" and cfg.tie_prob == 0  # generation order = prepare's order
    ln = lengths(cfg)
    assert ln.max() <= cfg.max_length == 16_000 and ln.min() >= cfg.min_length
    assert 1000 <= ln.mean() <= 2000 and np.median(ln) < 0.8 * ln.mean() and ln.max() > 5 * ln.mean()
    b = chunk_bounds(cfg, ln)
    assert b[0] == 0 and b[-1] == cfg.num_users and np.all(np.diff(b) >= 1)


def _brute_force_p(cfg, cat, ev, u, t, window=None):
    """p(item at t) of chunk-local user u by a loop over the process definition."""
    v, k, s, m = cfg.num_items, cfg.num_clusters, cfg.switch_prob, favourite_count(cfg)
    w = 1.0 / np.arange(1, v + 1) ** cfg.zipf_exponent
    members = [np.flatnonzero(cat.cluster == c) for c in range(k)]
    start = int(ev.starts[u])
    lo = 0 if window is None else max(0, t - window)
    known = range(start + lo, start + t)  # the events whose labels the predictor sees

    def pop(c, j):
        return w[j] / w[members[c]].sum() if cat.cluster[j] == c else 0.0

    cur = int(ev.cluster[start + t - 1])
    if cfg.kind == "drift":
        slots = []
        for slot in range(cfg.interests_per_user):
            hits = [i for i in range(start, start + t) if ev.group[i] == slot]
            if window is None:
                slots.append(int(ev.cluster[hits[-1]]) if hits else int(ev.latent["init"][u, slot]))
            else:
                slots.append(int(ev.cluster[hits[-1]]) if hits and hits[-1] in known else None)
        p = np.zeros(v)
        for j in range(v):
            fresh = 0.0
            for val in slots:
                fresh += ((1 - cfg.drift) * (pop(val, j) if val is not None else sum(pop(c, j) for c in range(k)) / k)
                          + cfg.drift * sum(pop(c, j) for c in range(k)) / k) / len(slots)
            p[j] = cfg.noise_prob * w[j] / w.sum() + (1 - cfg.noise_prob) * ((1 - s) * pop(cur, j) + s * fresh)
        return p

    big_l = cfg.interests_per_user
    if window is None:
        stable = {int(c) for c in ev.latent["stable"][u]}
        favs = {int(ev.latent["stable"][u, i]): set(ev.latent["favourites"][u, i].tolist()) for i in range(big_l)}
        shorts = [i for i in range(start, start + t) if ev.group[i] == 0]
        z = int(ev.cluster[shorts[-1]]) if shorts else int(ev.latent["z0"][u])
        done = sum(1 for i in range(start, start + t) if ev.routine[i] >= 0)
        routine = {int(ev.latent["cycle"][u, (done + ev.latent["offset"][u]) % cfg.num_routines]): 1.0}
    else:
        stable = {int(ev.cluster[i]) for i in known if ev.group[i] == 1}
        favs = {c: {int(ev.rank[i]) for i in known if ev.group[i] == 1 and ev.cluster[i] == c
                    and not ev.noise[i] and ev.routine[i] < 0} for c in stable}
        shorts = [i for i in known if ev.group[i] == 0]
        z = int(ev.cluster[shorts[-1]]) if shorts else None
        fired = [i for i in known if ev.routine[i] >= 0]
        routine = None
        if fired:
            nxt = (ev.routine[fired[-1]] + 1) % cfg.num_routines
            routine = {int(ev.rank[i]): 1.0 for i in fired if ev.routine[i] == nxt} or None

    def fav(c, j):
        if cat.cluster[j] != c:
            return 0.0
        if window is None:
            return 1.0 / m if j in favs.get(c, ()) else 0.0
        if c not in stable:
            return 1.0 / len(members[c])
        d = len(favs[c])
        return 1.0 / m if j in favs[c] else (m - d) / (m * (len(members[c]) - d))

    p = np.zeros(v)
    for j in range(v):
        seg = (1 - s) * (fav(cur, j) if ev.group[start + t - 1] == 1 else pop(cur, j))
        for c in range(k):
            pc = 1.0 / big_l if c in stable else (big_l - len(stable)) / (big_l * (k - len(stable)))
            pz = (1 - cfg.drift) * ((z == c) if z is not None else 1.0 / k) + cfg.drift / k
            seg += s * (cfg.revisit_prob * pc * fav(c, j) + (1 - cfg.revisit_prob) * pz * pop(c, j))
        r = routine.get(j, 0.0) if routine is not None else w[j] / w.sum()
        p[j] = ((1 - cfg.routine_prob) * (cfg.noise_prob * w[j] / w.sum() + (1 - cfg.noise_prob) * seg)
                + cfg.routine_prob * r)
    return p


@pytest.mark.parametrize("kind", ["longrange", "drift"])
def test_oracle_matches_brute_force(kind):
    cfg = SyntheticConfig(**{**TINY, "kind": kind}, num_users=30, seed=3)
    cat, lens = catalog(cfg), lengths(cfg)
    ev = chunk_events(cfg, cat, lens, 0, cfg.num_users, 0)[0]  # one chunk: all 30 users
    chunk = oracle._Chunk(cfg, cat, ev)
    users = np.arange(cfg.num_users)
    t = ev.lens - 1
    gains, first, present = [], [], set(ev.rank.tolist())  # present: the log's items, the catalog
    for window in (None, 5, 12):  # 5: z and slots often unknown; 12: the next routine item often shown
        p = oracle.next_item_probs(cfg, cat, chunk, users, t, window)
        brute = np.stack([_brute_force_p(cfg, cat, ev, u, int(t[u]), window) for u in users])
        np.testing.assert_allclose(p, brute, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-9)
        if window is None:  # NDCG@10 by a loop over the ranking definition
            for u in users:
                tgt, seen = int(ev.rank[ev.starts[u] + t[u]]), set(ev.rank[ev.starts[u] : ev.starts[u] + t[u]].tolist())
                q = brute[u]
                rank = 1 + sum(1 for j in present if j != tgt and j not in seen
                               and (q[j] > q[tgt] or (q[j] == q[tgt] and j < tgt)))
                gains.append(1 / np.log2(rank + 1) if rank <= 10 else 0.0)
                first.append(1.0 if tgt in seen else gains[-1])  # the seen items, ranked first, are filtered
    res = oracle.oracle_metrics(cfg, windows=(5,))
    assert res["full"]["count"] == 30 and res["full"]["ndcg@10"] == pytest.approx(np.mean(gains), abs=1e-12)
    res = oracle.oracle_metrics(cfg, windows=(5,), seen_first=True)
    assert res["full"]["ndcg@10"] == pytest.approx(np.mean(first), abs=1e-12) and np.mean(first) > np.mean(gains)


def test_filtered_ranks_is_the_evaluation_rank():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(50, 30)).astype(np.float64)  # many ties
    target = rng.integers(0, 30, size=50)
    seen = rng.random((50, 30)) < 0.3
    seen_ids = torch.from_numpy(np.where(seen, np.arange(1, 31), 0))
    items = torch.cat([torch.zeros(1, 30), torch.eye(30)]).double()  # item id j scores scores[:, j - 1]
    for s in (None, seen):
        ref = target_ranks(torch.from_numpy(scores), items, torch.from_numpy(target + 1),
                           None if s is None else seen_ids)
        assert np.array_equal(oracle.filtered_ranks(scores, target, s), ref.numpy())
    strict = oracle.filtered_ranks(scores, target, None, strict=True)
    assert np.all(strict <= oracle.filtered_ranks(scores, target, None))
    order = np.lexsort((np.arange(30)[None, :].repeat(50, 0), -scores), axis=1)  # by score, then rank
    assert np.array_equal(strict, 1 + np.argmax(order == target[:, None], axis=1))


@pytest.mark.parametrize("window", [None, 10])
def test_oracle_is_the_generators_next_item_distribution(window):
    """The generator's own draws at the targets follow the oracle's p (full state or window)."""
    cfg = SyntheticConfig(**TINY, num_users=6000, seed=11)
    name = "full" if window is None else f"window-{window}"
    total, hist, ps, sq, top_p, top_hit = np.zeros(cfg.num_items), np.zeros(cfg.num_items), [], [], [], []
    for scores, target, _ in oracle.target_batches(cfg, windows=(window,) if window else (), popularity=False):
        p = scores[name]
        total += p.sum(axis=0)
        hist += np.bincount(target, minlength=cfg.num_items)
        ps.append(p[np.arange(len(target)), target])
        sq.append((p**2).sum(axis=1))
        top_p.append(p.max(axis=1))
        top_hit.append(p.argmax(axis=1) == target)
    ps, sq, top_p, top_hit = map(np.concatenate, (ps, sq, top_p, top_hit))
    chi2 = ((hist - total) ** 2 / total).sum()
    assert chi2 < 3 * cfg.num_items, chi2  # df = V - 1: mean 39, sd ~9
    se = ps.std() / np.sqrt(len(ps))
    assert abs(ps.mean() - sq.mean()) < 4 * se  # E[p(target)] = E[sum p^2] when target ~ p
    se = top_hit.std() / np.sqrt(len(ps))
    assert abs(top_hit.mean() - top_p.mean()) < 4 * se  # top-1 calibrated


def test_long_history_carries_signal_the_recent_window_does_not():
    small = ["num_users=500", "mean_length=1000", "max_length=8000"]
    cfg = oracle.load_synthetic(FROZEN, small)
    res = oracle.oracle_metrics(cfg, windows=(50,))
    full, recent, pop = (res[k]["ndcg@10"] for k in ("full", "window-50", "popularity"))
    assert full >= 1.3 * recent and recent > 2 * pop, res  # measured ~1.6x and ~4x
    first = oracle.oracle_metrics(cfg, windows=(50, 1000), popularity=False, seen_first=True)
    assert first["full"]["ndcg@10"] >= max(first["window-1000"]["ndcg@10"], 1.3 * first["window-50"]["ndcg@10"])
    drift = oracle.oracle_metrics(SyntheticConfig(**{**cfg.__dict__, "kind": "drift", "drift": 0.05}), windows=(50,))
    assert drift["full"]["ndcg@10"] <= 1.05 * drift["window-50"]["ndcg@10"], drift  # recent past suffices


def test_config_validation_names_field():
    with pytest.raises(ValueError, match="synthetic.kind"):
        SyntheticConfig(kind="periodic")
    with pytest.raises(ValueError, match="synthetic.favourites"):
        SyntheticConfig(kind="longrange", favourites=0)
    with pytest.raises(ValueError, match="synthetic.routine_prob"):
        SyntheticConfig(kind="longrange", routine_prob=1.5)


def test_oracle_command_on_a_small_instance(tmp_path):
    """The command the docs quote, on a small override of the frozen config."""
    out = tmp_path / "oracle.json"
    res = oracle.main(["--config", FROZEN, "num_users=200", "mean_length=300", "max_length=2000",
                       "--window", "50", "--out", str(out)])
    m = res["metrics"]
    assert m["full"]["count"] == 200 and m["full"]["ndcg@10"] > m["window-50"]["ndcg@10"]
    assert json.loads(out.read_text())["metrics"]["full"]["ndcg@10"] == m["full"]["ndcg@10"]
