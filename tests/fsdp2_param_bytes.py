"""``python -m tests.fsdp2_param_bytes OUT_DIR key=value ...``: ``elastic_pl.train.fit`` with a
callback that writes, per rank, the bytes of the parameters that rank holds (the local shards of
FSDP2's DTensors) and their unsharded size. Lightning's launcher starts the other ranks by
running this same command, so every rank records its own."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
from torch.distributed.tensor import DTensor

from elastic_pl.config import load_config
from elastic_pl.train import fit


def _bytes(named) -> dict:
    out = {"local": 0, "full": 0, "table_local": 0, "table_full": 0, "sharded": False}
    for name, p in named:
        shard = p.to_local() if isinstance(p, DTensor) else p
        local, full = shard.numel() * shard.element_size(), p.numel() * p.element_size()
        out["local"] += local
        out["full"] += full
        out["sharded"] |= isinstance(p, DTensor)
        if name == "embedding.items.weight":
            out["table_local"], out["table_full"] = local, full
    return out


class ParamBytes(L.Callback):
    """Bytes of the parameters a rank holds between steps: after the first optimizer step, when
    FSDP2 has resharded every module after backward (forward and backward all-gather them)."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_train_batch_end(self, trainer, module, *args):
        if trainer.global_step != 1:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(
            {"world": trainer.world_size, **_bytes(module.model.named_parameters())}))


if __name__ == "__main__":
    out_dir, overrides = sys.argv[1], sys.argv[2:]
    fit(load_config(None, overrides), callbacks=[ParamBytes(out_dir)])
