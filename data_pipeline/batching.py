"""Token-budget batches: rows of similar length grouped so that ``rows x longest row <= max_tokens``.

A padded batch costs ``rows x width`` positions whatever its real content, so a fixed number of
users per batch pays for the longest user of each batch. With ``LoaderConfig.max_tokens`` set,
batches are cut by a budget of padded positions instead, from rows sorted by length:

* training (:func:`budget_batches`): consecutive windows of the shuffled stream are collected into
  a pool, sorted by length and cut greedily; the pool's batches are yielded in a random order and
  the last, unfilled batch is carried into the next pool (nothing is dropped);
* evaluation (:func:`plan_eval_batches`): a rank's slots are sorted by length within windows of
  consecutive slots holding about ``EVAL_POOL_BATCHES`` batches and cut greedily; every rank then
  runs as many batches as the busiest one (the others are padded with one-row dummy batches), so
  the exact-once split and the equal batch counts of ``sharding`` hold.

:func:`greedy_cut` is the one cutting rule; ``tests/test_batching.py`` checks it against a plain
per-row loop.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

EVAL_POOL_BATCHES = 64  # evaluation sorts this many batches' worth of consecutive users together


def greedy_cut(sorted_lengths: np.ndarray, max_tokens: int) -> np.ndarray:
    """Batch boundaries for rows sorted by *ascending* length: ``bounds`` with batch ``j`` =
    rows ``bounds[j]:bounds[j+1]``, each the longest run with ``rows x longest <= max_tokens``.

    Ascending order makes the last row the longest, so the budget of a run ``[a, b)`` is
    ``(b - a) * lengths[b - 1]``. Every row must fit alone (``length <= max_tokens``)."""
    lengths = np.asarray(sorted_lengths, dtype=np.int64)
    n, a, bounds = len(lengths), 0, [0]
    while a < n:
        # no more rows than the shortest (first) one allows; among those, the run ends at the
        # last row whose (rows so far) x (its length) still fits
        hi = min(n, a + max(1, max_tokens // max(int(lengths[a]), 1)))
        ends = np.arange(a + 1, hi + 1)
        fits = np.flatnonzero((ends - a) * lengths[ends - 1] <= max_tokens)
        a = int(ends[fits[-1]]) if len(fits) else a + 1
        bounds.append(a)
    return np.asarray(bounds, dtype=np.int64)


def budget_batches(rows: Iterator[np.ndarray], max_tokens: int, pool_batches: int, rng: np.random.Generator,
                   length=len) -> Iterator[list]:
    """Endless token-budget batches (lists of rows) from an endless row stream; ``length(row)`` is
    a row's padded width (for training windows, inputs = window - 1). A pool holds rows of about
    ``pool_batches`` full batches: the more rows of each length a pool has, the fuller its batches."""
    carry: list = []
    while True:
        pool, tokens = carry, sum(length(r) for r in carry)
        while tokens < pool_batches * max_tokens:
            pool.append(next(rows))
            tokens += length(pool[-1])
        lengths = np.fromiter((length(r) for r in pool), dtype=np.int64, count=len(pool))
        order = np.argsort(lengths, kind="stable")
        bounds = greedy_cut(lengths[order], max_tokens).tolist()
        batches = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        # the longest rows, maybe too few to fill a batch, wait for the next pool, but only once:
        # the longest row of all would otherwise wait forever
        carried = len(carry)
        carry = []
        if len(batches) > 1 and batches[-1].min() >= carried:
            carry = [pool[i] for i in batches.pop()]
        for j in rng.permutation(len(batches)).tolist():
            yield [pool[i] for i in batches[j]]


def plan_eval_batches(row_lengths: np.ndarray, rank_start: int, max_tokens: int,
                      pool_batches: int = EVAL_POOL_BATCHES) -> list[np.ndarray]:
    """Token-budget batches of one rank's slots ``rank_start + [0, len(row_lengths))``: a list of
    global slot arrays, window by window (consecutive slots holding about ``pool_batches`` full
    batches), each window's rows sorted by length and cut greedily. Every slot appears in exactly
    one batch."""
    lengths = np.asarray(row_lengths, dtype=np.int64)
    ends = np.cumsum(lengths)
    out: list[np.ndarray] = []
    lo = 0
    while lo < len(lengths):
        before = ends[lo - 1] if lo else 0
        hi = max(int(np.searchsorted(ends, before + pool_batches * max_tokens, side="right")), lo + 1)
        w = lengths[lo:hi]
        order = np.argsort(w, kind="stable")
        bounds = greedy_cut(w[order], max_tokens).tolist()
        out.extend(rank_start + lo + order[a:b] for a, b in zip(bounds[:-1], bounds[1:]))
        lo = hi
    return out
