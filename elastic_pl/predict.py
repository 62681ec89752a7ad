"""``predict``: top-k recommendations per user, written to Parquet with the original ids."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from data_pipeline.errors import DataError
from data_pipeline.manifest import MANIFEST_NAME

from .checkpoint import find_run_dir
from .config import Config
from .tracking import finish_wandb
from .train import build_datamodule, build_trainer, load_for_data, run_dir


def _id_map(data_dir: str, key: str) -> Optional[np.ndarray]:
    """Dense id -> original id as an array indexed by the dense id (None if the manifest names no
    ``<key>_map``); a map the manifest names but that is missing is an error, never dense ids."""
    manifest = Path(data_dir) / MANIFEST_NAME
    name = json.loads(manifest.read_text()).get(f"{key}_map")
    if name is None:
        return None
    path = Path(data_dir) / name
    if not path.is_file():
        raise DataError(f"{manifest}: its {key} map {path} is missing (copy it with the shards, or re-run "
                        "prepare): without it the predictions could not name the original ids")
    t = pq.read_table(path)
    dense = t.column(key).to_numpy()
    original = t.column("original").to_numpy(zero_copy_only=False)
    out = np.empty(int(dense.max()) + 1, dtype=original.dtype)
    out[dense] = original
    return out


def predict(cfg: Config, checkpoint: str, out: Optional[str] = None, trust: bool = False,
            allow_data_mismatch: bool = False) -> dict:
    """Rows (user, rank, item, score), at most ``eval.top_k`` per user (fewer when fewer items are
    left after filtering the history); ``user``/``item`` are the original ids when the manifest
    names id maps, else the dense ids. Written to ``out``, by default ``predictions.parquet`` in
    the checkpoint's run directory. Each rank writes its own part under DDP."""
    module = load_for_data(cfg, checkpoint, trust, allow_data_mismatch)
    dm = build_datamodule(cfg)
    user_map, item_map = _id_map(cfg.data.loader.data_dir, "user"), _id_map(cfg.data.loader.data_dir, "item")
    directory = run_dir(cfg)
    trainer = build_trainer(cfg, directory, stage="predict")
    try:
        batches = trainer.predict(module, datamodule=dm)
    finally:
        finish_wandb(trainer.loggers)
    users = torch.cat([b["user"] for b in batches]).numpy()
    items = torch.cat([b["items"] for b in batches]).numpy()
    scores = torch.cat([b["scores"] for b in batches]).numpy()
    k = items.shape[1]
    # -inf: no item left (top_k exceeds the items outside the user's filtered history); each row's
    # -inf entries are its last ones, so the ranks that stay are 1..n
    found = np.isfinite(scores).reshape(-1)
    table = pa.table({
        "user": np.repeat(user_map[users] if user_map is not None else users, k)[found],
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(users))[found],
        "item": (item_map[items] if item_map is not None else items).reshape(-1)[found],
        "score": scores.reshape(-1).astype(np.float32)[found],
    })
    path = Path(out) if out else (find_run_dir(Path(checkpoint)) or directory) / "predictions.parquet"
    if trainer.world_size > 1:
        path = path.with_name(f"{path.stem}-rank{trainer.global_rank}{path.suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return {"path": str(path), "users": int(len(users))}
