"""Batch fill of frozen configs: real items / padded positions of the batches the loader builds.

For each config (its prepared shards must exist: ``elastic-pl prepare --config ...``) one
training epoch and the whole validation split are drawn from the loader, without a model,
twice: as the config says, and with fixed-size batches (``data.loader.max_tokens=null``).
Reported: fill, batches, real tokens per batch, and the loader's own wall time.

    python -m bench.fill --config configs/amazon-beauty.yaml --config configs/ml-1m.yaml
    python -m bench.fill --config configs/synthetic-long.yaml --max-batches 200
"""
from __future__ import annotations

import argparse
import itertools
import time

from data_pipeline.datamodule import ElasticDataModule
from elastic_pl.config import load_config


def measure(config: str, overrides: list[str], max_batches: int | None) -> dict:
    cfg = load_config(config, ["data.loader.num_workers=0", *overrides])
    dm = ElasticDataModule(cfg.data.loader)
    dm.setup()
    row = {"config": config, "max_tokens": cfg.data.loader.max_tokens, "batch_size": cfg.data.loader.batch_size}
    for split, loader in (("train", dm.train_dataloader()), ("valid", dm.val_dataloader())):
        t0, real, padded, batches = time.perf_counter(), 0, 0, 0
        for b in itertools.islice(loader, max_batches):
            real += int((b["items"] != 0).sum())
            padded += b["items"].numel()
            batches += 1
        row[split] = {"fill": real / padded, "batches": batches, "real_per_batch": real / batches,
                      "seconds": time.perf_counter() - t0}
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", required=True)
    ap.add_argument("--max-batches", type=int, default=None, help="per split (default: all)")
    args = ap.parse_args(argv)
    print("| config | batches | train fill | train batches | real tokens/batch | valid fill | valid batches |")
    print("|---|---|---|---|---|---|---|")
    for config in args.config:
        for overrides in ([], ["data.loader.max_tokens=null", "data.loader.eval_max_tokens=null"]):
            r = measure(config, overrides, args.max_batches)
            kind = f"max_tokens {r['max_tokens']}" if r["max_tokens"] else f"batch_size {r['batch_size']}"
            t, v = r["train"], r["valid"]
            print(f"| {config} | {kind} | {t['fill']:.3f} | {t['batches']} | {t['real_per_batch']:.0f} | "
                  f"{v['fill']:.3f} | {v['batches']} |", flush=True)


if __name__ == "__main__":
    main()
