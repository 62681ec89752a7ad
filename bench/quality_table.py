"""Collect test metrics of finished runs into the markdown table of BENCHMARKS.md.

    python -m bench.quality_table --runs runs --run-id ce4 ce3 ce2 ce1 q1 --popularity bench/out

For each dataset and run id it reads ``runs/<dataset>-<encoder>/<run_id>/test_metrics.json``
(written by ``elastic-pl train``), the loss from the run's saved ``config.yaml``, the epochs and
the wall seconds per epoch (``train/epoch_time_s``, validation included) from its CSV logs,
and the baselines ``<popularity dir>/pop-<dataset>.json`` and ``transition-<dataset>.json``
(``elastic-pl evaluate --baseline popularity|transition --out``).

Where history filtering misleads (repeat consumption: the target is kept while every other history
item is removed, so "recommend what the user had" wins), an unfiltered evaluation is shown in an
extra row when present: ``<run>/test_unfiltered.json`` (``elastic-pl evaluate --checkpoint <the
``best_checkpoint`` of test_metrics.json> eval.filter_seen=false --out ...``) and ``pop-<dataset>-unfiltered.json``.

``--seeds ce1,ce1s1,ce1s2`` adds a second table: for each group of run ids (the same recipe with
different ``run.seed``), the mean and sample standard deviation of the test metrics over the runs
of the group that exist (where two or more do).
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

from omegaconf import OmegaConf

from elastic_pl.model import ENCODERS, ModelConfig

DATASETS = ["ml-1m", "ml-100k", "ml-latest-small", "lastfm", "wikipedia", "amazon-beauty", "amazon-sports"]


def _training(run: Path) -> tuple[str, str]:
    """('E (best E*)', mean wall seconds per epoch, validation included, or '-') from the run's CSV
    logs (all launches)."""
    rows = []
    for f in sorted(run.glob("csv/fit-*/metrics.csv")):
        rows += list(csv.DictReader(open(f)))
    val = [r for r in rows if r.get("val/ndcg@10")]
    times = [float(r["train/epoch_time_s"]) for r in rows if r.get("train/epoch_time_s")]
    per_epoch = f"{sum(times) / len(times):.0f}" if times else "-"
    if not val:
        return "?", per_epoch
    best = max(val, key=lambda r: float(r["val/ndcg@10"]))
    return f"{int(val[-1]['epoch']) + 1} (best {int(best['epoch']) + 1})", per_epoch


def _encoders() -> list[tuple[str, str]]:
    """(registered name, display name) of every registered encoder: runs/<dataset>-<name>/."""
    return [(e, ENCODERS.get(e).display_name or e) for e in ENCODERS.names()]


def _model(run: Path, name: str) -> str:
    """'ELASTIC (full softmax CE)': the loss and any variant as the run's resolved config (its
    encoder's and loss's ``describe()``) names them, e.g. 'ELASTIC without memory (...)'."""
    m = ModelConfig.from_dict(OmegaConf.to_container(OmegaConf.load(run / "config.yaml").model, resolve=True))
    variant = m.encoder.describe()
    return f"{name}{' ' + variant if variant else ''} ({m.loss.describe()})"


def _row(data: str, model: str, run_id: str, m: dict, epochs: str, per_epoch: str) -> str:
    return (f"| {data} | {model} | {run_id} | {m['test/ndcg@10']:.4f} | {m['test/hr@10']:.4f} | {epochs} | "
            f"{per_epoch} | {int(m['test/count'])} |")


def _mean_sd(values: list[float]) -> str:
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def _seed_table(runs: Path, groups: list[str]) -> None:
    print("\n| data | model (loss) | runs | test NDCG@10 (mean ± sd) | test HR@10 (mean ± sd) | seeds |")
    print("|---|---|---|---|---|---|")
    for d in DATASETS:
        for group in groups:
            for enc, name in _encoders():
                found = [runs / f"{d}-{enc}" / r for r in group.split(",")]
                found = [r for r in found if (r / "test_metrics.json").is_file()]
                if len(found) < 2:  # a single run is a row of the first table
                    continue
                m = [json.loads((r / "test_metrics.json").read_text())["test"] for r in found]
                print(f"| {d} | {_model(found[0], name)} | {', '.join(r.name for r in found)} | "
                      f"{_mean_sd([x['test/ndcg@10'] for x in m])} | {_mean_sd([x['test/hr@10'] for x in m])} | "
                      f"{len(m)} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--run-id", nargs="+", default=["q1"], help="one row per run id found")
    ap.add_argument("--popularity", default="bench/out", help="directory of the baselines' JSON files")
    ap.add_argument("--seeds", nargs="*", default=[], metavar="ID,ID,...",
                    help="groups of run ids (one recipe, several seeds) to average in a second table")
    a = ap.parse_args()
    print("| data | model (loss) | run | test NDCG@10 | test HR@10 | epochs (best val) | s/epoch | users |")
    print("|---|---|---|---|---|---|---|---|")
    for d in DATASETS:
        for prefix, baseline in (("pop", "popularity"), ("transition", "item transitions")):
            for suffix, note in (("", ""), ("-unfiltered", ", history not filtered")):
                f = Path(a.popularity) / f"{prefix}-{d}{suffix}.json"
                if f.is_file():
                    print(_row(d, f"{baseline}{note}", "-", json.loads(f.read_text()), "-", "-"))
        for run_id in a.run_id:
            for enc, name in _encoders():
                run = Path(a.runs) / f"{d}-{enc}" / run_id
                f = run / "test_metrics.json"
                if not f.is_file():
                    continue
                epochs, per_epoch = _training(run)
                model = _model(run, name)
                print(_row(d, model, run_id, json.loads(f.read_text())["test"], epochs, per_epoch))
                unfiltered = run / "test_unfiltered.json"
                if unfiltered.is_file():
                    print(_row(d, f"{model}, history not filtered", run_id,
                               json.loads(unfiltered.read_text()), epochs, per_epoch))
    if a.seeds:
        _seed_table(Path(a.runs), a.seeds)


if __name__ == "__main__":
    main()
