"""Choose the item-transition baseline's constants on validation, once for every dataset.

    python -m bench.transition_grid --config configs/ml-1m.yaml configs/amazon-beauty.yaml ... \
        --out bench/out/transition-grid.json

For every setting of the grid it scores the validation split of every dataset (test is never
read) and ranks the settings by the mean, over datasets, of val NDCG@10 divided by that
dataset's best val NDCG@10 in the grid, so that no dataset dominates by its scale. The winner
is the one set of constants (``elastic_pl.transition.DEFAULT``) used on every dataset.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
from pathlib import Path

import torch

from elastic_pl.config import load_config
from elastic_pl.popularity import evaluate_baselines
from elastic_pl.transition import TransitionParams, open_data, transition_items, transition_scores

WINDOWS = (1, 2, 3, 5)
LASTS = (1, 2, 3, 5, 10)
DECAYS = (0.3, 0.5, 0.8, 1.0)
POP_WEIGHT = 1e-3  # only breaks ties among items no recent item leads to


def grid_scores(config: str, overrides: list[str] | None = None) -> dict[TransitionParams, float]:
    """val NDCG@10 of every setting of the grid on the dataset of ``config``."""
    cfg = load_config(config, ["data.loader.num_workers=0", *(overrides or [])])
    dm = open_data(cfg)
    out = {}
    for window in WINDOWS:  # one matrix and one pass over the validation batches per window
        items = torch.from_numpy(transition_items(dm, window))
        settings = [TransitionParams(window, last, decay, POP_WEIGHT) for last, decay in itertools.product(LASTS, DECAYS)
                    if last > 1 or decay == DECAYS[0]]  # one recent item: the decay does not matter
        scorers = {p: (lambda batch, p=p: transition_scores(batch["items"], items, p)) for p in settings}
        for p, m in evaluate_baselines(cfg, dm, "valid", f"{Path(config).stem} window {window}", scorers).items():
            out[p] = m["val/ndcg@10"]
    return out


def choose(per_data: dict[str, dict[TransitionParams, float]]) -> list[tuple[float, TransitionParams]]:
    """Settings by mean relative val NDCG@10 over datasets, best first."""
    settings = set.intersection(*(set(s) for s in per_data.values()))
    rel = {p: statistics.fmean(s[p] / max(max(s.values()), 1e-12) for s in per_data.values()) for p in settings}
    return sorted(((v, p) for p, v in rel.items()), key=lambda t: -t[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", nargs="+", required=True, help="one experiment config per dataset")
    ap.add_argument("--out", default="bench/out/transition-grid.json")
    a = ap.parse_args()
    per_data = {c: grid_scores(c) for c in a.config}
    ranked = choose(per_data)
    names = [Path(c).stem for c in a.config]
    print("| window | last | decay | mean relative val NDCG@10 | " + " | ".join(names) + " |")
    print("|---|---|---|---|" + "---|" * len(names))
    for v, p in ranked[:10]:
        print(f"| {p.window} | {p.last} | {p.decay} | {v:.4f} | " + " | ".join(f"{per_data[c][p]:.4f}" for c in a.config) + " |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"configs": a.config, "best": dataclasses.asdict(ranked[0][1]),
                                       "scores": {c: [[p.window, p.last, p.decay, p.pop_weight, s] for p, s in per_data[c].items()]
                                                  for c in a.config}}, indent=1))


if __name__ == "__main__":
    main()
