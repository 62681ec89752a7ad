"""One training step against the catalog size: dense AdamW vs row-sparse item-table updates.

For each catalog size V and each update (``optim.item_table``: dense, rowwise_adagrad,
lazy_adam), at the SAME batch (random items, every position real) and the same sampled softmax
(uniform negatives): forward + loss + backward + gradient clipping (norm 1.0) + optimizer step +
zero_grad, the work of ``ElasticLightningModule.training_step`` and Lightning's optimizer step,
built from the same pieces (``optim_groups.param_groups``, ``item_table.build_optimizer``,
``item_table.training_reads``). Every configuration runs in a fresh subprocess under an
address-space cap (``--mem-cap-gb``): one that does not fit is recorded as ``OOM``. Peak RSS is
the subprocess's ``ru_maxrss`` (the model, its state and the step).

    python -m bench.sparse_step --items 1e4,1e6,1e7 --updates dense,rowwise_adagrad,lazy_adam

Prints a markdown row per configuration and appends JSON lines to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from types import SimpleNamespace

import torch


def one(args) -> dict:
    from elastic_pl import item_table
    from elastic_pl.model import ModelConfig, SequentialRecommender
    from elastic_pl.optim_groups import param_groups

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig.from_flat({"num_items": args.num_items, "d_model": args.d_model, "n_layers": args.layers,
                                 "max_positions": args.length, "dropout": 0.0, "num_negatives": args.negatives})
    model = SequentialRecommender(cfg).train()
    item_table.prepare_model(model, args.update)
    optim = SimpleNamespace(lr=1e-3, beta1=0.9, beta2=0.98, item_table=args.update, item_table_lr=0.05)
    opt = item_table.build_optimizer(model, param_groups(model, 1e-3, 0.01), optim)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(1, args.num_items + 1, (args.batch, args.length + 1), generator=g) for _ in range(3)]
    times = []
    for i in range(args.warmup + args.iters):
        seq = batches[i % len(batches)]
        t0 = time.perf_counter()
        with item_table.training_reads(model, args.update):
            loss = model.loss(model(seq[:, :-1]), seq[:, 1:])
        loss.backward()
        if hasattr(opt, "clip_grad_norm_"):
            opt.clip_grad_norm_(1.0)
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
            "loss": float(loss)}


def run_isolated(args, num_items: int, update: str) -> dict:
    cmd = [sys.executable, "-m", "bench.sparse_step", "--child", "--num-items", str(num_items), "--update", update,
           "--batch", str(args.batch), "--length", str(args.length), "--d-model", str(args.d_model),
           "--layers", str(args.layers), "--negatives", str(args.negatives), "--threads", str(args.threads),
           "--warmup", str(args.warmup), "--iters", str(args.iters), "--mem-cap-gb", str(args.mem_cap_gb)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    row = {"items": num_items, "update": update, "batch": args.batch, "length": args.length,
           "d_model": args.d_model, "negatives": args.negatives, "threads": args.threads}
    if p.returncode != 0:
        oom = "MemoryError" in p.stderr or "DefaultCPUAllocator" in p.stderr or p.returncode in (-9, 137)
        return {**row, "status": "OOM" if oom else f"error: {p.stderr.strip().splitlines()[-1:]}"}
    return {**row, "status": "ok", **json.loads(p.stdout.strip().splitlines()[-1])}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", default="1e4,1e6,1e7", help="catalog sizes V")
    ap.add_argument("--updates", default="dense,rowwise_adagrad,lazy_adam")
    ap.add_argument("--batch", type=int, default=8, help="users per batch")
    ap.add_argument("--length", type=int, default=512, help="positions per user (all real)")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--negatives", type=int, default=1024, help="shared uniform negatives of the sampled softmax")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--mem-cap-gb", type=float, default=10.0, help="RLIMIT_AS of each configuration's process")
    ap.add_argument("--out", default="bench/out/sparse_step.jsonl")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--num-items", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--update", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        cap = int(args.mem_cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        print(json.dumps(one(args)))
        return
    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
           "python": platform.python_version(), "machine": platform.machine(), "argv": sys.argv[1:]}
    print("| V | update | status | median ms/step | min ms | peak RSS GB |\n|---|---|---|---|---|---|")
    import os

    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    for num_items in (int(float(v)) for v in args.items.split(",")):
        for update in args.updates.split(","):
            row = run_isolated(args, num_items, update)
            with open(args.out, "a") as f:
                f.write(json.dumps({**env, **row}) + "\n")
            ms = f"{row['median_ms']:.1f}" if row["status"] == "ok" else "-"
            low = f"{row['min_ms']:.1f}" if row["status"] == "ok" else "-"
            rss = f"{row['peak_rss_gb']:.2f}" if row["status"] == "ok" else "-"
            print(f"| {num_items:.0e} | {update} | {row['status']} | {ms} | {low} | {rss} |", flush=True)


if __name__ == "__main__":
    main()
