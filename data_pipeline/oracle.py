"""The synthetic generator's own next-item distribution at the leave-one-out targets: a ceiling.

The target of a user is the event at position ``t`` (test: the last, valid: the second to last, as
data_pipeline/splits.py); the events and their latent labels are re-derived from the seed, chunk
by chunk. With g the global popularity, cw the popularity within a cluster, s = switch_prob:

    p(item) = routine_prob * R(item) + (1 - routine_prob) * (noise_prob * g + (1 - noise_prob) * seg)

* drift: R = 0, ``seg = cw * pi[cluster]``, ``pi = (1 - s) onehot(cluster at t-1) + s * mean over
  slots of ((1 - drift) onehot(slot's cluster) + drift * uniform)``.
* longrange: R = the next item of the routine cycle, ``seg = fav * pi_rev[cluster] + cw *
  pi_short[cluster]``: fav is uniform over the user's favourites of a stable cluster, ``pi_rev``
  the current revisit going on or ``s * revisit_prob * uniform over the stable clusters``,
  ``pi_short`` the current short-term segment going on or ``s * (1 - revisit_prob) * ((1 - drift)
  onehot(z) + drift * uniform)``, z the short-term cluster.

Predictors, each the exact Bayes predictive for what it knows: ``full`` knows the latent state;
``window-W`` only the labels of the last W events (a slot, z, next routine item, stable cluster or
favourite not shown there is a uniform draw among those consistent with the labels, whose
likelihood does not depend on it); ``popularity`` ranks by training counts (all but the last two
events), as ``elastic-pl evaluate --baseline popularity``.

Ranking is the evaluation's (elastic_pl/metrics.py): every item of the log, history items other than
the target excluded (``filter_seen``), ties against the target (the oracles break their exact ties
by popularity, as any model could). Without the filter, ranking by p is Bayes-optimal: ``full`` is
the ceiling. With it, ranking by p is what a perfect next-item model scores, but ranking consumed
items first does better on repeat targets (the filter drops their competitors): ``seen_first``.

    python -m data_pipeline.oracle --config configs/synthetic-longrange.yaml [--window 50] [--out o.json]
"""
from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np

from data_pipeline.config import SyntheticConfig
from data_pipeline.synthetic import (Catalog, Events, catalog, chunk_bounds, chunk_events, favourite_count, lengths,
                                     popularity_weights)
from data_pipeline.errors import DataError

HELD_OUT = {"test": 1, "valid": 2}


def item_tables(cfg: SyntheticConfig, cat: Catalog) -> tuple[np.ndarray, np.ndarray]:
    """(g, cw) per popularity rank: global share and share within the item's cluster."""
    w = popularity_weights(cfg)
    return w / w.sum(), w / np.bincount(cat.cluster, weights=w, minlength=cfg.num_clusters)[cat.cluster]


def _last(mask: np.ndarray) -> np.ndarray:
    """Index of the latest event at or before each event where ``mask`` holds, else -1."""
    return np.maximum.accumulate(np.where(mask, np.arange(len(mask)), -1))


def _onehot(values: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((len(values), size))
    out[np.arange(len(values)), values] = 1.0
    return out


class _Chunk:
    """Latent-state look-ups for the users of one chunk (indices run over the chunk's events).

    Every method takes ``users`` (chunk-local), ``e`` (index of each user's event before the
    target), ``lo`` (first event known: the user's first, or the window's) and ``win`` (None for
    the whole state, else ``(idx, ok)``: [B, W] event indices of the window and which are real)."""

    def __init__(self, cfg: SyntheticConfig, cat: Catalog, ev: Events):
        self.cfg, self.cat, self.ev, self.starts = cfg, cat, ev, ev.starts
        self.k = cfg.num_clusters
        if cfg.kind == "drift":
            self.last_slot = [_last(ev.group == s) for s in range(cfg.interests_per_user)]
        else:
            self.last_short, self.last_routine = _last(ev.group == 0), _last(ev.routine >= 0)

    def _known(self, i, lo, win) -> np.ndarray:
        """[B, 1] whether a latent last set at event ``i`` is known: always with the whole state,
        else only if ``i`` is in the window (a latent never shown there is a fresh uniform draw)."""
        return np.ones((len(i), 1), dtype=bool) if win is None else (i >= lo)[:, None]

    def drift_fresh(self, users, e, lo, win) -> np.ndarray:
        """[B, K] drift: the cluster of a new segment (a random slot, maybe replaced)."""
        ev, k = self.ev, self.k
        uniform = np.full((len(users), k), 1.0 / k)
        slots = np.zeros((len(users), k))
        for s, last in enumerate(self.last_slot):
            i = last[e]
            value = np.where(i >= self.starts[users], ev.cluster[i], ev.latent["init"][users, s])
            slots += np.where(self._known(i, lo, win), _onehot(value, k), uniform)
        return self.cfg.drift * uniform + (1 - self.cfg.drift) * slots / self.cfg.interests_per_user

    def stable_shown(self, users, win) -> np.ndarray:
        """[B, K] bool: the stable clusters known (all of them, or those revisited in the window)."""
        shown = np.zeros((len(users), self.k), dtype=bool)
        if win is None:
            shown[np.arange(len(users))[:, None], self.ev.latent["stable"][users]] = True
        else:
            idx, ok = win
            sel = ok & (self.ev.group[idx] == 1)
            shown[np.nonzero(sel)[0], self.ev.cluster[idx[sel]]] = True
        return shown

    def new_revisit(self, shown) -> np.ndarray:
        """[B, K] the cluster of a new revisit: uniform over the stable clusters; the ones not
        shown are a uniform random subset of the clusters not shown."""
        big_l = self.cfg.interests_per_user
        n_shown = shown.sum(axis=1, keepdims=True)
        return np.where(shown, 1.0 / big_l, (big_l - n_shown) / (big_l * np.maximum(self.k - n_shown, 1)))

    def short_term(self, users, e, lo, win) -> np.ndarray:
        """[B, K] the short-term cluster z (one-hot if known, else uniform)."""
        i = self.last_short[e]
        z = np.where(i >= self.starts[users], self.ev.cluster[i], self.ev.latent["z0"][users])
        return np.where(self._known(i, lo, win), _onehot(z, self.k), 1.0 / self.k)

    def favourite_probs(self, users, shown, win) -> np.ndarray:
        """[B, V] p(item | a revisit of its cluster): 1/m on the user's m favourites of it. In the
        window: the favourites drawn there are known, the rest are a uniform subset of the others."""
        m, cl = favourite_count(self.cfg), self.cat.cluster
        out = np.zeros((len(users), len(cl)))
        if win is None:
            out[np.arange(len(users))[:, None], self.ev.latent["favourites"][users].reshape(len(users), -1)] = 1 / m
            return out
        idx, ok = win
        ev = self.ev
        sel = ok & (ev.group[idx] == 1) & ~ev.noise[idx] & (ev.routine[idx] < 0)
        drawn = np.zeros(out.shape, dtype=bool)
        drawn[np.nonzero(sel)[0], ev.rank[idx[sel]]] = True
        n_drawn = np.zeros((len(users), self.k))
        rows, items = np.nonzero(drawn)
        np.add.at(n_drawn, (rows, cl[items]), 1)
        size = np.bincount(cl, minlength=self.k)[cl]
        nd = n_drawn[:, cl]
        rest = (m - nd) / (m * np.maximum(size - nd, 1))
        return np.where(shown[:, cl], np.where(drawn, 1 / m, rest), 1.0 / size)

    def routine_item(self, users, e, lo, win, g) -> np.ndarray:
        """[B, V] the routine item at t: the next one of the cycle, if known, else by popularity."""
        ev, r = self.ev, self.cfg.num_routines
        i = self.last_routine[e]
        pos = np.where(i >= self.starts[users], ev.routine[i] + 1, ev.latent["offset"][users]) % r
        if win is None:
            return _onehot(ev.latent["cycle"][users, pos], len(g))
        idx, ok = win
        hit = ok & (ev.routine[idx] == pos[:, None]) & (i >= lo)[:, None]  # next position shown
        item = ev.rank[idx[np.arange(len(users)), hit.argmax(axis=1)]]
        return np.where(hit.any(axis=1)[:, None], _onehot(item, len(g)), g[None, :])


def next_item_probs(cfg: SyntheticConfig, cat: Catalog, chunk: _Chunk, users: np.ndarray, t: np.ndarray,
                    window: int | None = None) -> np.ndarray:
    """[B, V] p(item at position t of each user | the latent state before t, or only the labels
    of its last ``window`` events). ``users`` are chunk-local, ``t >= 1`` positions in them."""
    g, cw = item_tables(cfg, cat)
    ev, k, s = chunk.ev, cfg.num_clusters, cfg.switch_prob
    start = chunk.starts[users]
    e = start + t - 1  # the event before the target
    lo, win = start, None
    if window is not None:
        lo = start + np.maximum(t - window, 0)
        span = lo[:, None] + np.arange(window)
        win = (np.minimum(span, e[:, None]), span <= e[:, None])
    current = (1 - s) * _onehot(ev.cluster[e], k)  # the segment goes on
    if cfg.kind == "drift":
        pi = current + s * chunk.drift_fresh(users, e, lo, win)
        return cfg.noise_prob * g + (1 - cfg.noise_prob) * cw * pi[:, cat.cluster]
    on_revisit = (ev.group[e] == 1)[:, None]
    shown = chunk.stable_shown(users, win)
    uniform = np.full((len(users), k), 1.0 / k)
    pi_revisit = current * on_revisit + s * cfg.revisit_prob * chunk.new_revisit(shown)
    short = (1 - cfg.drift) * chunk.short_term(users, e, lo, win) + cfg.drift * uniform
    pi_short = current * ~on_revisit + s * (1 - cfg.revisit_prob) * short
    seg = (chunk.favourite_probs(users, shown, win) * pi_revisit[:, cat.cluster]
           + cw * pi_short[:, cat.cluster])
    p = cfg.noise_prob * g + (1 - cfg.noise_prob) * seg
    return (1 - cfg.routine_prob) * p + cfg.routine_prob * chunk.routine_item(users, e, lo, win, g)


def filtered_ranks(scores: np.ndarray, target: np.ndarray, seen: np.ndarray | None,
                   strict: bool = False) -> np.ndarray:
    """1-based rank of each target: 1 + #{j != target, j not seen, score_j >= score_target}
    (ties against the target, as elastic_pl.metrics.target_ranks). ``strict``: exact ties are
    ordered by popularity instead (a fixed tie-break any model could use)."""
    rows = np.arange(len(target))
    mine = scores[rows, target][:, None]
    ge = scores >= mine
    if strict:
        ge = (scores > mine) | (ge & (np.arange(scores.shape[1]) < target[:, None]))
    if seen is not None:
        ge &= ~seen
    ge[rows, target] = False
    return 1 + ge.sum(axis=1)


def _chunks(cfg: SyntheticConfig, cat: Catalog, lens: np.ndarray):
    bounds = chunk_bounds(cfg, lens)
    for c in range(len(bounds) - 1):
        yield chunk_events(cfg, cat, lens, int(bounds[c]), int(bounds[c + 1]), c)[0]


def log_counts(cfg: SyntheticConfig, cat: Catalog, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([V] count of each popularity rank over all but the last two events of every user,
    [V] bool: the rank occurs in the log at all, i.e. is in the prepared catalog)."""
    counts, present = np.zeros(cfg.num_items, dtype=np.int64), np.zeros(cfg.num_items, dtype=bool)
    for ev in _chunks(cfg, cat, lens):
        pos = np.arange(len(ev.rank)) - np.repeat(ev.starts, ev.lens)
        counts += np.bincount(ev.rank[pos < np.repeat(ev.lens - 2, ev.lens)], minlength=cfg.num_items)
        present[ev.rank] = True
    return counts, present


def _consumed(ev: Events, users: np.ndarray, t: np.ndarray, lo: np.ndarray, v: int) -> np.ndarray:
    """[B, V] bool: the items of events ``lo .. start + t - 1`` of each user."""
    start = ev.starts[users]
    n = start + t - lo
    out = np.zeros((len(users), v), dtype=bool)
    events = np.repeat(lo - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
    out[np.repeat(np.arange(len(users)), n), ev.rank[events]] = True
    return out


def target_batches(cfg: SyntheticConfig, split: str = "test", windows=(50,), popularity: bool = True,
                   seen_first: bool = False):
    """Yield ``(scores, target, seen)`` per batch of users with a ``split`` target: ``scores`` maps
    each predictor to [B, V] (by popularity rank), ``target`` [B] ranks, ``seen`` [B, V] history.
    ``seen_first``: each oracle scores the items it knows were consumed (its whole history, or its
    window) +inf, the Bayes-optimal ranking when the evaluation filters the history."""
    cat, lens = catalog(cfg), lengths(cfg)
    held, v = HELD_OUT[split], cfg.num_items
    counts, present = log_counts(cfg, cat, lens)
    absent = ~present  # never ranked: prepare's catalog holds only the items of the log
    pop = np.where(present, counts, -np.inf)
    size = max(1, (1 << 21) // v)  # users per batch: a few [B, V] float64 arrays
    for ev in _chunks(cfg, cat, lens):
        chunk = _Chunk(cfg, cat, ev)
        eligible = np.flatnonzero(ev.lens >= held + 1)
        for b in range(0, len(eligible), size):
            users = eligible[b : b + size]
            t = ev.lens[users] - held
            start = chunk.starts[users]
            seen = _consumed(ev, users, t, start, v)
            scores = {"full": next_item_probs(cfg, cat, chunk, users, t)}
            scores["full"][:, absent] = -np.inf
            if seen_first:
                scores["full"][seen] = np.inf
            for w in windows:
                scores[f"window-{w}"] = p = next_item_probs(cfg, cat, chunk, users, t, window=w)
                p[:, absent] = -np.inf
                if seen_first:
                    p[_consumed(ev, users, t, start + np.maximum(t - w, 0), v)] = np.inf
            if popularity:
                scores["popularity"] = np.broadcast_to(pop, seen.shape)
            yield scores, ev.rank[start + t], seen


def oracle_metrics(cfg: SyntheticConfig, split: str = "test", windows=(50,), filter_seen: bool = True,
                   popularity: bool = True, seen_first: bool = False) -> dict:
    """``{predictor: {"hr@10": ..., "ndcg@10": ..., "mrr": ..., "count": ...}}`` (FullRankingMetrics)."""
    import torch

    from elastic_pl.metrics import FullRankingMetrics

    if seen_first and not filter_seen:
        raise DataError("seen_first only makes sense when the history is filtered")
    metrics: dict = {}
    for scores, target, seen in target_batches(cfg, split, windows, popularity, seen_first):
        for name, sc in scores.items():
            strict = name != "popularity"  # the oracles' exact ties are arbitrary, not information
            ranks = torch.from_numpy(filtered_ranks(sc, target, seen if filter_seen else None, strict))
            metrics.setdefault(name, FullRankingMetrics()).update(ranks, torch.ones(len(ranks), dtype=torch.bool))
    return {name: {k: (int(v) if k == "count" else float(v)) for k, v in m.compute().items()}
            for name, m in metrics.items()}


def load_synthetic(path: str, overrides=()) -> SyntheticConfig:
    """``data.synthetic`` of a run config (elastic_pl.config), with ``key=value`` overrides; a key
    without a ``data.`` prefix is one of data.synthetic."""
    from elastic_pl.config import load_config

    cfg = load_config(path, [o if o.startswith("data.") else f"data.synthetic.{o}" for o in overrides])
    if cfg.data.synthetic is None:
        raise DataError(f"{path}: data.synthetic is null (not a synthetic log)")
    return cfg.data.synthetic


def main(argv=None) -> dict:
    import argparse

    ap = argparse.ArgumentParser(description="Oracle NDCG/HR of a synthetic config (the generator's own "
                                             "next-item distribution, full history vs the last W events).")
    ap.add_argument("--config", required=True, help="run config with a data.synthetic section")
    ap.add_argument("overrides", nargs="*", help="key=value for data.synthetic (e.g. num_users=500)")
    ap.add_argument("--window", type=int, nargs="+", default=[50], help="recent-window sizes W")
    ap.add_argument("--split", choices=sorted(HELD_OUT), default="test")
    ap.add_argument("--no-filter-seen", action="store_true", help="rank history items too")
    ap.add_argument("--seen-first", action="store_true",
                    help="oracles rank the items they know were consumed first (the filtered ceiling)")
    ap.add_argument("--out", help="write the metrics as JSON here")
    a = ap.parse_args(argv)
    cfg = load_synthetic(a.config, a.overrides)
    if cfg.tie_prob > 0 and cfg.shuffle_rows:
        print("warning: tie_prob > 0 with shuffle_rows: prepare orders tied events by file position, "
              "so some leave-one-out targets may differ from the generation order used here")
    res = oracle_metrics(cfg, a.split, a.window, filter_seen=not a.no_filter_seen, seen_first=a.seen_first)
    print(f"{a.split}, {res['full']['count']} users, full ranking over the log's items, "
          f"history {'not ' if a.no_filter_seen else ''}filtered{', seen items first' if a.seen_first else ''}")
    print("| predictor | ndcg@10 | hr@10 | mrr | ndcg@10 / full |\n|---|---|---|---|---|")
    for name, m in res.items():
        print(f"| {name} | {m['ndcg@10']:.4f} | {m['hr@10']:.4f} | {m['mrr']:.4f} | "
              f"{m['ndcg@10'] / res['full']['ndcg@10']:.3f} |")
    out = {"config": asdict(cfg), "split": a.split, "filter_seen": not a.no_filter_seen,
           "seen_first": a.seen_first, "metrics": res}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
