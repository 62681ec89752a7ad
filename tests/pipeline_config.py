"""A tiny end-to-end configuration (synthetic log, small model) for pipeline tests, and a reader of
the training steps its runs logged."""
from __future__ import annotations

import csv
from pathlib import Path

TINY = [
    "data.synthetic.num_users=120", "data.synthetic.num_items=150", "data.synthetic.num_clusters=6",
    "data.synthetic.mean_length=20", "data.synthetic.max_length=80", "data.synthetic.min_length=4",
    "data.prepare.num_buckets=2", "data.prepare.workers=1", "data.prepare.users_per_block=16",
    "data.prepare.progress=false",
    "data.loader.max_len=32", "data.loader.batch_size=16", "data.loader.eval_batch_size=32",
    "data.loader.num_workers=0", "data.loader.steps_per_epoch=4", "data.loader.shuffle_buffer=64",
    "model.d_model=16", "model.encoder.n_heads=2", "model.n_layers=1", "model.encoder.num_experts=4",
    "model.encoder.chunk_size=8", "model.encoder.memory_subkeys=8", "model.encoder.memory_topk=4",
    "model.encoder.memory_key_dim=8", "model.max_positions=32", "model.loss.num_negatives=32", "model.dropout=0.0",
    "optim.warmup_steps=2", "trainer.accelerator=cpu", "trainer.max_epochs=1", "trainer.log_every_n_steps=1",
    "trainer.progress_bar=false", "run.experiment=e2e",
]


def tiny_overrides(tmp: Path, *extra: str) -> list[str]:
    data = tmp / "data"
    return TINY + [f"data.source.path={data}/events.parquet", f"data.prepare.output_dir={data}/shards",
                   f"run.root={tmp}/runs", *extra]


def logged_train_steps(run: Path) -> list[list[int]]:
    """Per launch of fit (``csv/fit-<time>/metrics.csv``, oldest first), the ``step`` of every
    training row (train/loss is logged every step)."""
    launches = []
    for f in sorted(Path(run).glob("csv/fit-*/metrics.csv")):
        with open(f) as fh:
            launches.append([int(r["step"]) for r in csv.DictReader(fh) if r.get("train/loss")])
    return launches
