"""Paired comparison of two models (or two groups of seeds) on the same users.

    python -m bench.paired --a runs/ml-latest-small-elastic/b32d2 --b runs/ml-latest-small-sasrec/b32d2
    python -m bench.paired --a runs/ml-1m-elastic/e12 --b runs/ml-1m-sasrec/e12 data.loader.seen_window=input

Each run directory's best checkpoint (``best_checkpoint`` of its ``test_metrics.json``) scores
the split named by ``--split`` through the models' own ranking path (``target_ranks``: full
catalog, history filtered as the run's saved ``config.yaml`` says, pessimistic ties), and the
per-user metric is kept. With several runs per side (the same recipe with different
``run.seed``), a user's value is the mean over that side's runs. Then, over users:

- the mean of each side and of the paired difference a - b;
- a 95% percentile bootstrap interval of the mean difference (users resampled with replacement);
- a two-sided sign-flip permutation p-value (under "no difference", each user's a - b is as
  likely to have either sign).

Why: on ml-latest-small (671 test users) one evaluation's NDCG@10 has a standard error near
0.008, as large as the gaps between models, so "matches" needs more than two numbers. The
interval covers the test users' sampling only; seed-to-seed variation enters through the means
over several runs per side.

A side may also be a no-training baseline, ``baseline:transition`` or ``baseline:popularity``
(``elastic_pl/baselines.py``), scored on the data and with the evaluation settings of the first run
directory given (its saved ``config.yaml``):

    python -m bench.paired --a runs/amazon-beauty-elastic/long60 --b baseline:transition

Each run's mean is checked against the test metric it stored when trained, so a mismatch in
data or protocol fails loudly instead of comparing different things. Trailing ``key=value``
overrides change how both sides are evaluated (e.g. ``data.loader.seen_window=input``, the
input-window history filter); the means then differ from the stored ones by design, so that check
is left out and the overrides are named in the output.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

METRICS = ["ndcg@5", "ndcg@10", "ndcg@20", "ndcg@50", "hr@1", "hr@5", "hr@10", "hr@20", "hr@50", "mrr"]


def per_user(ranks: np.ndarray, metric: str) -> np.ndarray:
    """The per-user value of ``metric`` for 1-based target ranks; its mean over users is what
    ``FullRankingMetrics`` reports."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if metric == "mrr":
        return 1.0 / ranks
    name, k = metric.split("@")
    hit = ranks <= int(k)
    if name == "hr":
        return hit.astype(np.float64)
    return np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0)


def paired_stats(a: np.ndarray, b: np.ndarray, resamples: int = 10_000, seed: int = 0) -> dict:
    """Mean of a, b and a - b over users, a 95% bootstrap interval of the mean difference and a
    two-sided sign-flip permutation p-value (the observed difference counts as one permutation)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"need two equal-length, non-empty vectors (got {a.shape} and {b.shape})")
    d = a - b
    rng = np.random.default_rng(seed)
    boot = np.empty(resamples)
    flips = np.empty(resamples)
    for i in range(resamples):  # a loop keeps memory O(users) for any resample count
        boot[i] = d[rng.integers(0, len(d), len(d))].mean()
        flips[i] = (d * rng.choice((-1.0, 1.0), len(d))).mean()
    observed = d.mean()
    extreme = np.sum(np.abs(flips) >= abs(observed) - 1e-12)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"users": int(len(d)), "mean_a": float(a.mean()), "mean_b": float(b.mean()), "diff": float(observed),
            "ci95": [float(lo), float(hi)], "p_value": float((extreme + 1) / (resamples + 1)),
            "resamples": resamples}


def _best_checkpoint(run: Path) -> tuple[str, dict]:
    metrics_file = run / "test_metrics.json"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{metrics_file} not found: is {run} a finished run directory "
                                "(runs/<experiment>/<run_id>)?")
    stored = json.loads(metrics_file.read_text())
    ckpt = Path(stored["best_checkpoint"])
    if not ckpt.exists():  # run directory moved: the same file name under its checkpoints/
        ckpt = run / "checkpoints" / ckpt.name
    if not ckpt.exists():
        raise FileNotFoundError(f"{run}: best checkpoint {stored['best_checkpoint']} not found")
    return str(ckpt), stored.get("test", {})


@torch.no_grad()
def run_ranks(run: Path, split: str = "test", overrides: list[str] | None = None) -> tuple[dict[int, int], dict]:
    """{user id: 1-based target rank} of a run's best checkpoint on ``split`` (its saved config
    with ``overrides``), and the test metrics the run stored when it was trained."""
    from elastic_pl.config import load_config
    from elastic_pl.train import build_datamodule, load_module

    ckpt, stored = _best_checkpoint(run)
    cfg = load_config(str(run / "config.yaml"), overrides)
    dm = build_datamodule(cfg)
    dm.setup()
    module = load_module(ckpt).eval()
    module.eval_cfg = cfg.eval
    ranks: dict[int, int] = {}
    for batch in dm.eval_dataset(split):
        keep = batch["valid"]
        r = module.ranks(batch)
        ranks.update(zip(batch["user"][keep].tolist(), r[keep].tolist()))
    return ranks, stored


BASELINE_PREFIX = "baseline:"


def baseline_name(run: Path | str) -> str | None:
    """``NAME`` of a ``baseline:NAME`` side entry, else None (a run directory)."""
    text = str(run)
    return text[len(BASELINE_PREFIX):] if text.startswith(BASELINE_PREFIX) else None


def side_values(runs: list[Path], metric: str, split: str, check_tol: float = 1e-5,
                overrides: list[str] | None = None, reference: Path | None = None) -> tuple[list[int], np.ndarray]:
    """(sorted user ids, the metric per user averaged over ``runs``); every run must cover the same
    users. A ``baseline:NAME`` entry is scored with the config of the ``reference`` run directory."""
    users: list[int] = []
    rows = []
    for run in runs:
        name = baseline_name(run)
        if name is not None:
            from elastic_pl.baselines import baseline_ranks
            from elastic_pl.config import load_config

            if reference is None:
                raise ValueError(f"{run}: a baseline side needs a run directory on either side (its config.yaml "
                                 "names the data and the evaluation settings)")
            ranks, stored = baseline_ranks(load_config(str(reference / "config.yaml"), overrides), name, split), {}
        else:
            ranks, stored = run_ranks(run, split, overrides)
        if not rows:
            users = sorted(ranks)
        elif set(ranks) != set(users):
            raise ValueError(f"{run} was evaluated on other users than {runs[0]}: different data")
        values = per_user(np.array([ranks[u] for u in users]), metric)
        key = f"test/{metric}"
        if split == "test" and not overrides and key in stored and abs(values.mean() - stored[key]) > check_tol:
            raise ValueError(f"{run}: recomputed {key} {values.mean():.6f} differs from the stored "
                             f"{stored[key]:.6f} (different data or evaluation settings?)")
        rows.append(values)
    return users, np.mean(rows, axis=0)


def compare(a_runs: list[Path], b_runs: list[Path], metric: str = "ndcg@10", split: str = "test",
            resamples: int = 10_000, seed: int = 0, overrides: list[str] | None = None) -> dict:
    reference = next((Path(r) for r in [*a_runs, *b_runs] if baseline_name(r) is None), None)
    a_users, a = side_values(a_runs, metric, split, overrides=overrides, reference=reference)
    b_users, b = side_values(b_runs, metric, split, overrides=overrides, reference=reference)
    if a_users != b_users:
        raise ValueError("the two sides were evaluated on different users: different data")
    stats = paired_stats(a, b, resamples, seed)
    return {"metric": metric, "split": split, "overrides": list(overrides or []), "a": [str(r) for r in a_runs], "b": [str(r) for r in b_runs], **stats}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", nargs="+", required=True, type=Path, help="run directories of side a (or baseline:transition, baseline:popularity)")
    p.add_argument("--b", nargs="+", required=True, type=Path, help="run directories of side b (or baseline:transition, baseline:popularity)")
    p.add_argument("--metric", default="ndcg@10", choices=METRICS)
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--resamples", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="evaluation overrides for both sides, e.g. data.loader.seen_window=input")
    args = p.parse_args(argv)
    if args.resamples < 1:
        p.error("--resamples must be >= 1")
    result = compare(args.a, args.b, args.metric, args.split, args.resamples, args.seed, args.overrides)
    lo, hi = result["ci95"]
    print(f"{args.split} {args.metric}{' (' + ' '.join(args.overrides) + ')' if args.overrides else ''} over {result['users']} users: a {result['mean_a']:.4f} "
          f"({len(args.a)} run{'s' * (len(args.a) > 1)}), b {result['mean_b']:.4f} ({len(args.b)} "
          f"run{'s' * (len(args.b) > 1)}); a - b {result['diff']:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}], "
          f"sign-flip p = {result['p_value']:.3g}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
