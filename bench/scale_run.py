"""The scale run, timed stage by stage: generate -> prepare -> train (fixed wall time) -> evaluate.

    python -m bench.scale_run --config configs/scale-1m.yaml --out runs/scale-run [--events 1e6] [key=value ...]

Each stage is a fresh subprocess running the package's own code (``data_pipeline.synthetic``,
``elastic-pl prepare``, ``elastic_pl.train.fit``, ``elastic-pl evaluate``); this process samples
the summed RSS of the stage's process tree (DataLoader workers and prepare's pool included) every
0.1 s and its summed PSS every 2 s or when the RSS grows. Per stage: wall time, throughput (events/s; training: real, non-padding tokens/s over the
training steps; evaluation: users/s), peak memory (PSS and summed RSS) and the disk used by the data and the run so far.

``--events N`` scales the config's synthetic log to about N events by its number of users (the
length distribution, the catalog and the model stay), for the scaled-down instances. The data and
the run go under ``--out``. Training stops at ``trainer.max_time_minutes`` (``--minutes``); the
test at the end of fit and the evaluation (validation split) score the first ``--eval-batches``
batches of users over the whole catalog. Writes ``<out>/scale_run.json`` and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.data_prepare import _pss_kb, _rss_kb, _tree

STAGES = ("generate", "prepare", "train", "evaluate")


class TreePeakRSS(threading.Thread):
    """Peaks of the summed PSS (the memory the tree holds) and of the summed RSS (which counts a page
    shared by forked workers once per process) of ``pid`` and its descendants. RSS is read every
    0.1 s; PSS every ``pss_every_s`` and whenever the summed RSS has grown 5% since the last PSS
    read. Reading a process's PSS walks its page tables (~30 ms for 3 GB, holding a lock its
    allocations wait for): runs that read it every 0.1 s trained at 14,500 tokens/s against 21,900."""

    def __init__(self, pid: int, pss_every_s: float = 2.0):
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self.peak_rss_kb, self._halt = pid, 0, 0, threading.Event()
        self.pss_every_s = pss_every_s

    def run(self) -> None:
        next_pss, rss_at_pss = 0.0, 0
        while not self._halt.is_set():
            tree = _tree(self.pid)
            rss = sum(_rss_kb(p) for p in tree)
            self.peak_rss_kb = max(self.peak_rss_kb, rss)
            if time.monotonic() >= next_pss or rss > 1.05 * rss_at_pss:
                self.peak_kb = max(self.peak_kb, sum(_pss_kb(p) for p in tree))
                next_pss, rss_at_pss = time.monotonic() + self.pss_every_s, rss
            self._halt.wait(0.1)

    def stop(self) -> tuple[float, float]:
        """(peak PSS GB, peak summed RSS GB)."""
        self._halt.set()
        self.join()
        return self.peak_kb * 1024 / 1e9, self.peak_rss_kb * 1024 / 1e9


def disk_bytes(*paths: Path) -> int:
    total = 0
    for root in paths:
        for dirpath, _, files in os.walk(root):
            total += sum(os.lstat(os.path.join(dirpath, f)).st_blocks * 512 for f in files)
    return total


# -- the stages (run in the subprocess) ----------------------------------------------------------
def _stage_generate(cfg, out: Path, args) -> dict:
    from data_pipeline.synthetic import generate

    info = generate(cfg.data.synthetic, cfg.data.source.path)
    return {"events": info["events"], "users": info["users"], "max_length": info["max_length"]}


def _stage_prepare(cfg, out: Path, args) -> dict:
    from elastic_pl.cli import main

    assert main(["prepare", *args.cli]) == 0, "prepare failed"
    manifest = json.loads((Path(cfg.data.prepare.output_dir) / "manifest.json").read_text())
    return {k: manifest[k] for k in ("num_events", "num_users", "num_items")}


def _stage_train(cfg, out: Path, args) -> dict:
    import lightning as L

    from elastic_pl.train import fit

    class Throughput(L.Callback):
        """Real tokens and the wall time of the training steps."""

        def __init__(self):
            self.tokens, self.step_s, self._t0 = 0, 0.0, None

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.step_s += time.perf_counter() - self._t0
            self.tokens += int((batch["items"] != 0).sum())

    meter = Throughput()
    result = fit(cfg, callbacks=[meter])
    return {"steps": result.trainer.global_step, "real_tokens": meter.tokens, "step_s": round(meter.step_s, 1),
            "real_tokens_per_s": round(meter.tokens / max(meter.step_s, 1e-9)), "best_checkpoint": result.best_checkpoint,
            "test_ndcg@10": result.test.get("test/ndcg@10"), "test_users": result.test.get("test/count")}


def _stage_evaluate(cfg, out: Path, args) -> dict:
    from elastic_pl.cli import main

    train = json.loads((out / "train.json").read_text())
    checkpoint = train["best_checkpoint"] or str(out / "run" / "checkpoints" / "last.ckpt")
    metrics_file = out / "evaluate-metrics.json"
    t0 = time.perf_counter()
    assert main(["evaluate", "--split", "valid", "--checkpoint", checkpoint, "--out", str(metrics_file), *args.cli,
                 f"trainer.limit_val_batches={args.eval_batches}", "wandb.enabled=false",
                 f"run.dir={out / 'evaluate'}"]) == 0, "evaluate failed"
    wall = time.perf_counter() - t0
    metrics = json.loads(metrics_file.read_text())
    return {"users": int(metrics["val/count"]), "ndcg@10": metrics["val/ndcg@10"],
            "users_per_s_in_command": round(metrics["val/count"] / wall, 1)}


STAGE_FNS = {"generate": _stage_generate, "prepare": _stage_prepare, "train": _stage_train,
             "evaluate": _stage_evaluate}


def stage_overrides(args, config_files: list[str]) -> list[str]:
    """The command line every stage gets: the config layers, the data and run under --out, the
    scaled number of users, the wall time."""
    from data_pipeline.synthetic import lengths
    from elastic_pl.config import load_config

    out = Path(args.out).resolve()
    extra = [f"data.source.path={out}/data/events.parquet", f"data.prepare.output_dir={out}/data/shards",
             f"run.dir={out}/run", f"trainer.max_time_minutes={args.minutes}",
             f"trainer.limit_val_batches={args.eval_batches}", f"trainer.limit_test_batches={args.eval_batches}",
             *args.overrides]
    if args.events:
        cfg = load_config(config_files, extra)
        per_user = lengths(cfg.data.synthetic).mean()
        extra.insert(0, f"data.synthetic.num_users={max(1, round(args.events / per_user))}")
    return [arg for f in config_files for arg in ("--config", f)] + extra


def run_stage(name: str, args, cli: list[str]) -> dict:
    out = Path(args.out)
    cmd = [sys.executable, "-m", "bench.scale_run", "--stage", name, "--out", str(out),
           "--eval-batches", str(args.eval_batches), "--", *cli]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    sampler = TreePeakRSS(proc.pid)
    sampler.start()
    rc = proc.wait()
    wall = time.perf_counter() - t0
    peak, peak_rss = sampler.stop()
    if rc != 0:
        raise SystemExit(f"stage {name} failed (exit code {rc})")
    row = json.loads((out / f"{name}.json").read_text())
    return {"stage": name, "wall_s": round(wall, 1), "peak_pss_gb": round(peak, 2), "peak_rss_sum_gb": round(peak_rss, 2),
            "disk_gb": round(disk_bytes(out / "data", out / "run") / 1e9, 3), **row}


def table(rows: list[dict]) -> str:
    lines = ["| stage | wall s | throughput | peak PSS (tree) GB | peak summed RSS (tree) GB | disk GB (data + run) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if r["stage"] in ("generate", "prepare"):
            events = r.get("events", r.get("num_events"))
            rate = f"{events / r['wall_s']:,.0f} events/s ({events:,} events)"
        elif r["stage"] == "train":
            rate = f"{r['real_tokens_per_s']:,} real tokens/s over {r['steps']} steps ({r['step_s']} s of steps)"
        else:
            rate = f"{r['users'] / r['wall_s']:,.1f} users/s ({r['users']:,} users over the catalog)"
        lines.append(f"| {r['stage']} | {r['wall_s']} | {rate} | {r['peak_pss_gb']} | {r['peak_rss_sum_gb']} | {r['disk_gb']} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", default=[], help="config file(s), e.g. configs/scale-1m.yaml")
    ap.add_argument("--out", required=True, help="directory for the data, the run and the results")
    ap.add_argument("--events", type=float, default=None, help="scale the synthetic log to about this many events")
    ap.add_argument("--minutes", type=float, default=60.0, help="training wall time (trainer.max_time_minutes)")
    ap.add_argument("--eval-batches", type=int, default=20, help="validation/test batches scored (limit_*_batches)")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="key=value config overrides (after --)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.stage:  # inside a stage's subprocess: args.overrides is the whole command line
        from elastic_pl.cli import parser
        from elastic_pl.config import load_config

        args.cli = args.overrides
        parsed = parser().parse_intermixed_args(["train", *args.cli])
        result = STAGE_FNS[args.stage](load_config(parsed.config, parsed.overrides), out, args)
        (out / f"{args.stage}.json").write_text(json.dumps(result))
        return [result]
    out.mkdir(parents=True, exist_ok=True)
    cli = stage_overrides(args, args.config)
    rows = [run_stage(name, args, cli) for name in args.stages.split(",")]
    (out / "scale_run.json").write_text(json.dumps({"argv": sys.argv[1:], "cli": cli, "stages": rows}, indent=2))
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
