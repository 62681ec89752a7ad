"""The quality-vs-cost frontier: test NDCG@10 against the training time to the best validation
epoch, one line per model, each point a run labelled by its ``max_len``.

    python -m bench.frontier --run runs/ml-latest-small-elastic/len200 runs/ml-latest-small-elastic/lenfull \
        runs/ml-latest-small-sasrec/len200 runs/ml-latest-small-sasrec/lenfull \
        --title ml-latest-small --png docs/frontier-ml-latest-small.png

Per run (a directory written by ``elastic-pl train``) it reads the saved ``config.yaml`` (encoder,
``max_len``, budget), ``test_metrics.json`` (the best checkpoint's test metrics) and the CSV logs:
the epoch of the best ``val/ndcg@10``, the wall seconds of the epochs up to it
(``train/epoch_time_s``, validation included), the median real tokens/s (``train/tokens_per_s``)
and the peak RSS (``train/peak_rss_gib``). With ``--paired``, each run is compared with the run of
the same model at the next shorter ``max_len`` on the same test users (``bench.paired``: paired
bootstrap CI of the NDCG@10 difference). Prints a markdown table; ``--png`` draws the figure
(needs matplotlib: ``pip install matplotlib``).
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

from omegaconf import OmegaConf


def _rows(run: Path) -> list[dict]:
    rows = []
    for f in sorted(run.glob("csv/fit-*/metrics.csv")):
        with open(f) as fh:
            rows.extend(csv.DictReader(fh))
    return rows


def _encoder_name(node) -> str:
    """``model.encoder`` of a saved config: ``{name: ..., ...}``, or a bare name (earlier layout)."""
    return node.name if OmegaConf.is_dict(node) else str(node)


def read_run(run: Path) -> dict:
    cfg = OmegaConf.load(run / "config.yaml")
    test = json.loads((run / "test_metrics.json").read_text())["test"]
    rows = _rows(run)
    val = {int(r["epoch"]): float(r["val/ndcg@10"]) for r in rows if r.get("val/ndcg@10")}
    if not val:
        raise ValueError(f"{run}: no val/ndcg@10 in its CSV logs")
    best = max(val, key=lambda e: (val[e], -e))  # the first epoch with the best value
    epoch_s = {int(r["epoch"]): float(r["train/epoch_time_s"]) for r in rows if r.get("train/epoch_time_s")}
    tokens = [float(r["train/tokens_per_s"]) for r in rows if r.get("train/tokens_per_s")]
    rss = [float(r["train/peak_rss_gib"]) for r in rows if r.get("train/peak_rss_gib")]
    missing = [e for e in range(best + 1) if e not in epoch_s]
    return {
        "run": str(run), "encoder": _encoder_name(cfg.model.encoder), "max_len": int(cfg.data.loader.max_len),
        "max_tokens": cfg.data.loader.max_tokens, "ndcg@10": test["test/ndcg@10"], "hr@10": test["test/hr@10"],
        "best_epoch": best, "epochs": max(len(epoch_s), max(val) + 1),
        "seconds_to_best": None if missing else sum(epoch_s[e] for e in range(best + 1)),
        "seconds_per_epoch": statistics.median(epoch_s.values()) if epoch_s else None,
        "tokens_per_s": statistics.median(tokens) if tokens else None,
        "peak_rss_gib": max(rss) if rss else None,
    }


def add_paired(points: list[dict]) -> None:
    from bench.paired import compare

    for enc in {p["encoder"] for p in points}:
        line = sorted((p for p in points if p["encoder"] == enc), key=lambda p: p["max_len"])
        for shorter, longer in zip(line, line[1:]):
            r = compare([Path(longer["run"])], [Path(shorter["run"])], "ndcg@10", "test", 10_000, 0)
            longer["vs_shorter"] = {"max_len": shorter["max_len"], "diff": r["diff"], "ci95": r["ci95"]}


def table(points: list[dict]) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    out = ["| model | max_len | test NDCG@10 | HR@10 | vs next shorter (paired 95% CI) | best epoch / epochs | s to best | "
           "s/epoch | real tokens/s | peak RSS GiB | run |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: (p["encoder"], p["max_len"])):
        vs = p.get("vs_shorter")
        paired = "-" if vs is None else f"{vs['diff']:+.4f} [{vs['ci95'][0]:+.4f}, {vs['ci95'][1]:+.4f}] vs {vs['max_len']}"
        out.append(f"| {p['encoder']} | {p['max_len']} | {p['ndcg@10']:.4f} | {p['hr@10']:.4f} | {paired} | "
                   f"{p['best_epoch'] + 1}/{p['epochs']} | {f(p['seconds_to_best'], '.0f')} | "
                   f"{f(p['seconds_per_epoch'], '.1f')} | {f(p['tokens_per_s'], ',.0f')} | "
                   f"{f(p['peak_rss_gib'], '.2f')} | `{p['run']}` |")
    return "\n".join(out)


def plot(points: list[dict], png: Path, title: str, hlines: dict[str, float] | None = None) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SystemExit("--png needs matplotlib: pip install matplotlib") from e
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for enc in sorted({p["encoder"] for p in points}):
        line = sorted((p for p in points if p["encoder"] == enc and p["seconds_to_best"]), key=lambda p: p["max_len"])
        xs, ys = [p["seconds_to_best"] for p in line], [p["ndcg@10"] for p in line]
        ax.plot(xs, ys, marker="o", label=enc)
        for p in line:
            ax.annotate(str(p["max_len"]), (p["seconds_to_best"], p["ndcg@10"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
    for name, value in (hlines or {}).items():  # baselines, e.g. popularity
        ax.axhline(value, color="grey", linestyle="--", linewidth=1)
        ax.annotate(name, (0.01, value), xycoords=("axes fraction", "data"), textcoords="offset points",
                    xytext=(0, 3), fontsize=8, color="grey")
    xs = [p["seconds_to_best"] for p in points if p["seconds_to_best"]]
    if xs and max(xs) > 3 * min(xs):  # a log axis only where the costs span a range
        ax.set_xscale("log")
    ax.set_xlabel("training wall seconds to the best validation epoch (one thread)")
    ax.set_ylabel("test NDCG@10 (full ranking)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", nargs="+", type=Path, required=True, help="run directories")
    ap.add_argument("--paired", action="store_true", help="paired CI against the next shorter max_len")
    ap.add_argument("--png", type=Path)
    ap.add_argument("--title", default="")
    ap.add_argument("--json", type=Path, help="write the points as JSON here")
    ap.add_argument("--hline", action="append", default=[], metavar="NAME=VALUE",
                    help="a horizontal reference line, e.g. popularity=0.12")
    args = ap.parse_args(argv)
    points = [read_run(r) for r in args.run]
    if args.paired:
        add_paired(points)
    print(table(points))
    if args.png:
        hlines = {}
        for item in args.hline:
            name, sep, value = item.rpartition("=")
            if not sep or not name:
                ap.error(f"--hline {item!r} is not NAME=VALUE")
            hlines[name] = float(value)
        plot(points, args.png, args.title, hlines)
    if args.json:
        args.json.write_text(json.dumps(points, indent=2))
    return points


if __name__ == "__main__":
    main()
