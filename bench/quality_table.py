"""Collect test metrics of finished runs into the markdown table of BENCHMARKS.md.

    python -m bench.quality_table --runs runs --run-id q1 --popularity bench/out

For each dataset it reads ``runs/<dataset>-<encoder>/<run_id>/test_metrics.json`` (written by
``elastic-pl train``), the epochs and wall time from the run's CSV logs, and
``<popularity dir>/pop-<dataset>.json`` (``elastic-pl evaluate --baseline popularity --out ...``).
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

DATASETS = ["ml-1m", "ml-100k", "ml-latest-small", "lastfm", "wikipedia", "amazon-beauty", "amazon-sports"]


def _training(run: Path) -> str:
    """'E epochs (best E*)' from the run's CSV logs (all launches)."""
    rows = []
    for f in sorted(run.glob("csv/fit-*/metrics.csv")):
        rows += [r for r in csv.DictReader(open(f)) if r.get("val/ndcg@10")]
    if not rows:
        return "?"
    best = max(rows, key=lambda r: float(r["val/ndcg@10"]))
    return f"{int(rows[-1]['epoch']) + 1} (best {int(best['epoch']) + 1})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--run-id", default="q1")
    ap.add_argument("--popularity", default="bench/out")
    a = ap.parse_args()
    print("| data | model (loss) | test NDCG@10 | test HR@10 | epochs (best val) | users |")
    print("|---|---|---|---|---|---|")
    for d in DATASETS:
        pop = Path(a.popularity) / f"pop-{d}.json"
        if pop.is_file():
            m = json.loads(pop.read_text())
            print(f"| {d} | popularity | {m['test/ndcg@10']:.4f} | {m['test/hr@10']:.4f} | - | {int(m['test/count'])} |")
        for enc, name in (("elastic", "ELASTIC"), ("sasrec", "SASRec")):
            run = Path(a.runs) / f"{d}-{enc}" / a.run_id
            f = run / "test_metrics.json"
            if not f.is_file():
                continue
            m = json.loads(f.read_text())["test"]
            print(f"| {d} | {name} (sampled softmax, 512 uniform negatives) | {m['test/ndcg@10']:.4f} | "
                  f"{m['test/hr@10']:.4f} | {_training(run)} | {int(m['test/count'])} |")


if __name__ == "__main__":
    main()
