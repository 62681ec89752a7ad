"""The no-training baselines, by name: ``evaluate --baseline NAME`` and ``bench/paired.py``'s
``baseline:NAME`` sides. A new baseline is one function ``cfg -> (opened data, scorer)`` here.

- ``popularity``: training-set frequency (``elastic_pl/popularity.py``);
- ``transition``: windowed, distance-weighted item co-occurrence (``elastic_pl/transition.py``).
"""
from __future__ import annotations

from typing import Callable

from .config import Config
from .popularity import Scorer, evaluate_baseline, popularity_scorer, ranked_batches
from .transition import transition_scorer

BASELINES: dict[str, Callable[[Config], tuple[object, Scorer]]] = {
    "popularity": popularity_scorer,
    "transition": transition_scorer,
}


def _scorer(cfg: Config, name: str):
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}: one of {sorted(BASELINES)}")
    return BASELINES[name](cfg)


def evaluate_named(cfg: Config, name: str, split: str = "test") -> dict:
    """The baseline's metrics on ``split``, ranked like the models."""
    dm, scorer = _scorer(cfg, name)
    return evaluate_baseline(cfg, dm, split, name, scorer)


def baseline_ranks(cfg: Config, name: str, split: str = "test") -> dict[int, int]:
    """{user id: 1-based target rank} of the baseline on ``split`` (paired comparisons)."""
    dm, scorer = _scorer(cfg, name)
    out: dict[int, int] = {}
    for batch, ranks in ranked_batches(cfg, dm, split, name, {name: scorer}):
        keep = batch["valid"]
        out.update(zip(batch["user"][keep].tolist(), ranks[name][keep].tolist()))
    return out
