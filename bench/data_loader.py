"""Loader throughput: real input items (non-pad ``items``) delivered per second.

Builds synthetic shards (``data_pipeline.shards`` format + manifest) in a temp dir, then times
``ElasticDataModule`` batches:

* per worker: the training/validation dataset iterated in this process (``num_workers=0``),
  i.e. what one DataLoader worker produces;
* through a DataLoader with ``--workers`` worker processes (includes the transfer to the main process);
* the cost of checking shard checksums while reading (``verify_checksums``, on by default): the
  one-worker training and validation rates with and without it from a cold start (nothing
  verified yet), measured alternately, best of ``--verify-rounds``.

    .venv/bin/python -m bench.data_loader                  # both cases: max_len 200 and 4096
    .venv/bin/python -m bench.data_loader --cases 200 --events 2e6 --seconds 5
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import webdataset as wds

from data_pipeline.datamodule import ElasticDataModule, LoaderConfig
from data_pipeline.manifest import FORMAT_VERSION
from data_pipeline.shard_reader import forget_verified
from data_pipeline.shards import UserBlock, encode_block

# (max_len, mean events per user, users per tar sample, batch size)
CASES = {200: (250, 512, 128), 4096: (8000, 32, 16)}


def write_synthetic(data_dir: str, events: int, mean_len: int, block_users: int, num_items: int = 1_000_000,
                    num_shards: int = 8, seed: int = 0) -> dict:
    """Users with lognormal lengths (>= 4, mean ~ mean_len), Zipf-ish items; ``events`` in total."""
    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < events:
        lengths += np.maximum(rng.lognormal(np.log(mean_len) - 0.125, 0.5, 10_000).astype(np.int64), 4).tolist()
    lengths = np.array(lengths)[: np.searchsorted(np.cumsum(lengths), events) + 1]
    bounds = np.linspace(0, len(lengths), num_shards + 1).astype(int)
    shards = []
    for k in range(num_shards):
        name, n_events = f"seq-{k:06d}.tar", 0
        with wds.TarWriter(os.path.join(data_dir, name)) as sink:
            for b, lo in enumerate(range(bounds[k], bounds[k + 1], block_users)):
                ln = lengths[lo : min(lo + block_users, bounds[k + 1])]
                items = np.minimum(rng.zipf(1.2, int(ln.sum())), num_items).astype(np.int32)
                offsets = np.concatenate([[0], np.cumsum(ln)]).astype(np.int64)
                users = np.arange(lo, lo + len(ln), dtype=np.int64)
                sink.write(encode_block(f"b{b:06d}", UserBlock(users, offsets, items)))
                n_events += int(ln.sum())
        with open(os.path.join(data_dir, name), "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        shards.append({"name": name, "users": int(bounds[k + 1] - bounds[k]), "events": n_events, "sha256": sha})
    ids = np.arange(1, num_items + 1, dtype=np.int64)  # identity item map (the loader checks its rows)
    pq.write_table(pa.table({"item": ids, "original": ids}), os.path.join(data_dir, "item_map.parquet"))
    manifest = {"format_version": FORMAT_VERSION, "num_items": num_items, "num_users": int(len(lengths)),
                "num_events": int(lengths.sum()), "shards": shards, "item_map": "item_map.parquet",
                "timestamps": False, "source": {"bench": "synthetic"}}
    with open(os.path.join(data_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return manifest


def _time(batches, seconds: float) -> tuple[float, float, int]:
    """Real input items per wall second and per CPU second of this process over ``seconds``
    (after one warm-up batch). On a shared machine the CPU-second rate is the steadier one."""
    it = iter(batches)
    next(it)
    n_items = n_batches = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for b in it:
        n_items += int((b["items"] > 0).sum())
        n_batches += 1
        if time.perf_counter() - t0 >= seconds:
            break
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    return n_items / dt, n_items / max(dc, 1e-9), n_batches


def _cold_cpu_rate(batches, seconds: float) -> float:
    """Real input items per CPU second from the very first batch (no warm-up: the first visit of
    each shard, the one that hashes it, is inside the timed window)."""
    n_items, c0, t0 = 0, time.process_time(), time.perf_counter()
    for b in batches:
        n_items += int((b["items"] > 0).sum())
        if time.perf_counter() - t0 >= seconds:
            break
    return n_items / max(time.process_time() - c0, 1e-9)


def checksum_cost(cfg: dict, seconds: float, rounds: int) -> dict:
    """One-worker training rate with and without streaming checksums, as a fresh process starts
    (nothing verified yet), measured alternately: best of ``rounds`` each, so a neighbour's load
    hits both alike."""
    best = {(split, verify): 0.0 for split in ("train", "valid") for verify in (True, False)}
    for _ in range(rounds):
        for verify in (True, False):
            for split in ("train", "valid"):  # a validation pass in fresh workers hashes every shard
                forget_verified()
                module = ElasticDataModule(LoaderConfig(num_workers=0, verify_checksums=verify, **cfg))
                data = module.train_dataset() if split == "train" else module.eval_dataset("valid")
                best[split, verify] = max(best[split, verify], _cold_cpu_rate(data, seconds))
    out = {}
    for split in ("train", "valid"):
        out |= {f"{split}_events_per_cpu_s_verified": round(best[split, True]),
                f"{split}_events_per_cpu_s_unverified": round(best[split, False]),
                f"{split}_verified_over_unverified": round(best[split, True] / best[split, False], 3)}
    return out


def run_case(max_len: int, events: float, seconds: float, workers: int, tmp: str, verify_rounds: int) -> dict:
    mean_len, block_users, batch = CASES[max_len]
    data_dir = os.path.join(tmp, f"len{max_len}")
    os.makedirs(data_dir)
    t0 = time.perf_counter()
    m = write_synthetic(data_dir, int(events), mean_len, block_users)
    write_s = time.perf_counter() - t0
    cfg = dict(data_dir=data_dir, max_len=max_len, batch_size=batch, eval_batch_size=batch, shuffle_buffer=2048,
               steps_per_epoch=10**6)
    dm0 = ElasticDataModule(LoaderConfig(num_workers=0, **cfg))
    dm0.setup()
    train1, train1_cpu, nb = _time(dm0.train_dataset(), seconds)
    valid1, valid1_cpu, _ = _time(dm0.eval_dataset("valid"), seconds)
    dmw = ElasticDataModule(LoaderConfig(num_workers=workers, **cfg))
    dmw.setup()
    trainw, _, _ = _time(dmw.train_dataloader(), seconds)
    return {"max_len": max_len, "loadavg_1m": round(os.getloadavg()[0], 1), "users": m["num_users"], "events": m["num_events"],
            "mean_events_per_user": round(m["num_events"] / m["num_users"]), "users_per_sample": block_users,
            "batch_size": batch, "write_s": round(write_s, 1),
            "train_events_per_s_one_worker": round(train1), "train_events_per_cpu_s_one_worker": round(train1_cpu),
            "train_batches_timed": nb,
            "valid_events_per_s_one_worker": round(valid1), "valid_events_per_cpu_s_one_worker": round(valid1_cpu),
            f"train_events_per_s_dataloader_{workers}_workers": round(trainw),
            **(checksum_cost(cfg, seconds, verify_rounds) if verify_rounds else {})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--events", type=float, default=None, help="events per case (default 4e6 / 2e7)")
    p.add_argument("--seconds", type=float, default=8.0, help="timed seconds per measurement")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tmp", default=None, help="where to build shards (default: a temp dir)")
    p.add_argument("--repeats", type=int, default=1, help="measure each case this many times")
    p.add_argument("--verify-rounds", type=int, default=3, help="alternate rounds of the checksum cost (0: skip)")
    args = p.parse_args()
    torch.set_num_threads(1)
    info = {"date": time.strftime("%Y-%m-%d %H:%M"), "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "webdataset": "1.0.2", "cpus": os.cpu_count()}
    print(json.dumps(info))
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for r in range(args.repeats):
            for max_len in args.cases:
                events = args.events or (4e6 if max_len == 200 else 2e7)
                case_dir = os.path.join(tmp, f"r{r}")
                os.makedirs(case_dir, exist_ok=True)
                print(json.dumps(run_case(max_len, events, args.seconds, args.workers, case_dir, args.verify_rounds)), flush=True)


if __name__ == "__main__":
    main()
