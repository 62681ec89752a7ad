"""Full-ranking evaluation at catalog scale: U users scored over V items (``target_ranks``).

Random fp32 item embeddings [V+1, D] and user queries, a target and ``--seen`` history ids per
user (filtered, as ``eval.filter_seen``), users in batches of ``--batch``, items in chunks of
``--chunk-size`` (``eval.chunk_size``). This is the scoring the evaluation loop runs per batch
(``ElasticLightningModule.ranks`` after the encoder); the encoder's cost does not depend on V.

Reported: wall time, users/s, and memory: RSS after the catalog is allocated, and the peak RSS
(``ru_maxrss``) above it, i.e. the scoring's working memory, O(batch x chunk).

    python -m bench.eval_scale --users 10000 --items 10000000 --threads 2
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from datetime import datetime, timezone

import torch

from elastic_pl import metrics
from elastic_pl.metrics import FullRankingMetrics, target_ranks


def _rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--items", type=float, default=1e7)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1024, help="users per evaluation batch")
    ap.add_argument("--seen", type=int, default=200, help="history ids per user (filtered)")
    ap.add_argument("--chunk-size", type=int, default=65536)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--path", choices=["auto", "plain"], default="auto",
                    help="plain: one [batch, chunk] score matrix at a time (the accelerator path) on CPU too")
    args = ap.parse_args(argv)
    if args.path == "plain":  # the CPU dispatch picks the tiled path; compare with the plain one
        metrics._count_tiled = metrics._count_chunked
    torch.set_num_threads(args.threads)
    num_items = int(args.items)
    g = torch.Generator().manual_seed(0)
    items = torch.randn(num_items + 1, args.d_model, generator=g)
    base = _rss_gb()
    metric = FullRankingMetrics()
    t0 = time.perf_counter()
    for lo in range(0, args.users, args.batch):
        b = min(args.batch, args.users - lo)
        query = torch.randn(b, args.d_model, generator=g)
        target = torch.randint(1, num_items + 1, (b,), generator=g)
        seen = torch.randint(1, num_items + 1, (b, args.seen), generator=g)
        metric.update(target_ranks(query, items, target, seen, args.chunk_size), torch.ones(b, dtype=torch.bool))
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    out = {"users": args.users, "items": num_items, "d_model": args.d_model, "batch": args.batch,
           "seen": args.seen, "chunk_size": args.chunk_size, "threads": args.threads, "path": args.path, "wall_s": round(wall, 1),
           "users_per_s": round(args.users / wall, 1), "rss_after_catalog_gb": round(base, 2),
           "peak_above_catalog_gb": round(peak - base, 3), "count": int(metric.compute()["count"]),
           "torch": torch.__version__, "python": platform.python_version(),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
