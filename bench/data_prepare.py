"""Prepare throughput and peak memory on a synthetic log.

    .venv/bin/python -m bench.data_prepare --events 1e7 [--buckets 16 --workers 2 --dir /tmp/elastic_bench]

Generates (once, cached) a synthetic Parquet log of ~N events, then times the three prepare stages.
Peak RSS: the sum over this process and its children, sampled every 50 ms from /proc, plus the
kernel's per-process maxima (getrusage). Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import threading
import time

from data_pipeline import prepare as P
from data_pipeline._pool import run_tasks
from data_pipeline.config import PrepareConfig, SourceConfig, SyntheticConfig
from data_pipeline.synthetic import generate


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kb(pid: int) -> int:
    """Proportional set size: a page shared by k processes counts 1/k in each, so the sum over a
    process tree (forked loader workers share the parent's pages) is the memory it really holds,
    where summed RSS counts every shared page once per process."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


class PeakRSS(threading.Thread):
    """Samples the summed RSS of this process tree until stopped."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_kb, self._halt = 0, threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak_kb = max(self.peak_kb, sum(_rss_kb(p) for p in _tree(os.getpid())))
            self._halt.wait(0.05)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak_kb


def _cpu_s() -> float:
    """User + system CPU seconds of this process and its finished children (the pool workers)."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=float, default=1e7)
    ap.add_argument("--mean-length", type=float, default=100.0)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--buckets", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--stage-workers", type=int, default=1)
    ap.add_argument("--memory-limit", default="4GB")
    ap.add_argument("--dir", default="/tmp/elastic_bench")
    ap.add_argument("--keep", action="store_true", help="keep the shards")
    a = ap.parse_args()
    users = max(1, int(a.events / a.mean_length))
    syn = SyntheticConfig(num_users=users, num_items=a.items, num_clusters=1000, mean_length=a.mean_length, seed=0)
    log = os.path.join(a.dir, f"synthetic-u{users}-l{int(a.mean_length)}-i{a.items}.parquet")
    gen_s = None
    if not os.path.exists(log):
        t = time.perf_counter()
        generate(syn, log, progress=True)
        gen_s = time.perf_counter() - t
    out = os.path.join(a.dir, f"out-{users}")
    shutil.rmtree(out, ignore_errors=True)
    src = SourceConfig(path=log)
    cfg = PrepareConfig(output_dir=out, num_buckets=a.buckets, workers=a.workers, stage_workers=a.stage_workers,
                        memory_limit=a.memory_limit)
    sampler = PeakRSS()
    sampler.start()
    load0, cpu0 = os.getloadavg()[0], _cpu_s()
    t0 = time.perf_counter()
    P.plan(src, cfg)
    t1 = time.perf_counter()
    run_tasks(P.prepare_bucket, [(src, cfg, b) for b in P.bucket_ids(cfg)], cfg.workers, "buckets", cfg.progress)
    t2 = time.perf_counter()
    m = P.finalize(cfg, src)
    t3 = time.perf_counter()
    peak = sampler.stop()
    cpu = _cpu_s() - cpu0
    n = m["num_events"]
    shard_bytes = sum(os.path.getsize(os.path.join(out, s["name"])) for s in m["shards"])
    res = {
        "events": n, "users": m["num_users"], "items": m["num_items"], "buckets": a.buckets, "workers": a.workers,
        "stage_workers": a.stage_workers,
        "generate_s": gen_s, "plan_s": round(t1 - t0, 2), "buckets_s": round(t2 - t1, 2),
        "finalize_s": round(t3 - t2, 2), "total_s": round(t3 - t0, 2), "events_per_s": round(n / (t3 - t0)),
        "cpu_s": round(cpu, 1), "events_per_cpu_s": round(n / cpu),
        "load_avg_1m": [round(load0, 1), round(os.getloadavg()[0], 1)],
        "peak_rss_tree_gb": round(peak / 2**20, 2),
        "max_rss_self_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "max_rss_child_gb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2),
        "shard_bytes_per_event": round(shard_bytes / n, 2), "shards": len(m["shards"]),
        "input_bytes": os.path.getsize(log), "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    print(json.dumps(res))
    if not a.keep:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
