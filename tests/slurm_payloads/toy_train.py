"""Stand-in for ``python -m elastic_pl`` in the SLURM launcher tests.

Same command-line contract as the real entry point, as slurm/train_multinode.sh calls it:

    toy_train.py train --config CFG.yaml trainer.num_nodes=N trainer.devices=D
                 [trainer.accelerator=cpu] [trainer.strategy=ddp] run.dir=DIR [key=value ...]

(OmegaConf dotlist overrides, later ones win.) Trains a tiny LightningModule with DDP, using
Lightning's SLURMEnvironment with auto-requeue on SIGUSR1 when it runs under SLURM, and
records what the tests check into run.dir:

  ranks/restart<R>_rank<G>.json  one per process: world size, ranks, SLURM ids, start step
  steps/rank<G>.txt              "restart step" per COMPLETED optimizer step (0-based index)
  save_events.jsonl              rank 0: global_step at every checkpoint save (hpc or other)
  result.json                    rank 0 at the end: final global_step, world size, restarts
  final.ckpt                     with toy.save_final=true, for the evaluate test

and ``evaluate --config CFG ckpt=PATH trainer.* [run.dir=DIR]`` (as slurm/evaluate.sh calls it)
validates the checkpoint on every rank and writes DIR/eval.json (DIR defaults to the
checkpoint's folder): world size, the checkpoint's global_step, samples seen per rank.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf


def parse_args(argv: list[str]):
    if not argv or argv[0] not in ("train", "evaluate"):
        sys.exit(f"usage: {sys.argv[0]} train|evaluate --config CFG [key=value ...] (got {argv})")
    command, argv = argv[0], argv[1:]
    if len(argv) < 2 or argv[0] != "--config":
        sys.exit("toy_train.py: --config CFG required")
    cfg = OmegaConf.load(argv[1])
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(argv[2:]))
    return command, cfg


def _ignore_requeue_signal(worker_id: int) -> None:
    # SLURM signals EVERY process of a task (proctrack), so DataLoader workers get SIGUSR1 too;
    # its default action kills them and the main process then dies with "DataLoader worker ...
    # is killed by signal: User defined signal 1" instead of checkpointing.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def main(argv: list[str]) -> None:
    command, cfg = parse_args(argv)
    import lightning as L
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    torch.set_num_threads(1)
    restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    if command == "evaluate":
        run_dir = Path(cfg.run.dir) if cfg.get("run", {}).get("dir") else Path(cfg.ckpt).parent
    else:
        run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for sub in (("ranks", "steps") if command == "train" else ()):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)

    class Toy(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(8, 1)
            self.val_seen = 0

        def training_step(self, batch, batch_idx):
            # The sleep makes a step long compared with everything else, so an asynchronous
            # signal reaches every rank inside the same step (Lightning's handler does a
            # barrier) and the test can signal "mid-training".
            time.sleep(float(cfg.toy.step_sleep))
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.val_seen += len(x)
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y), sync_dist=True)

        def on_validation_end(self):
            (run_dir / f"eval_rank{self.global_rank}.json").write_text(json.dumps(
                {"global_rank": self.global_rank, "world_size": self.trainer.world_size,
                 "samples": self.val_seen}))

        def val_dataloader(self):
            x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)),
                                               batch_size=4)

        def on_train_batch_end(self, outputs, batch, batch_idx):
            # a COMPLETED optimizer step: its index is global_step - 1 (already incremented)
            with open(run_dir / "steps" / f"rank{self.global_rank}.txt", "a") as f:
                f.write(f"{restart} {self.global_step - 1}\n")

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

        def train_dataloader(self):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(256, 8, generator=g)
            ds = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
            workers = int(cfg.toy.get("num_workers", 0))
            return torch.utils.data.DataLoader(
                ds, batch_size=4, num_workers=workers, persistent_workers=workers > 0,
                worker_init_fn=_ignore_requeue_signal if cfg.toy.get("workers_ignore_usr1", True) else None,
            )

        def on_train_start(self):
            env = self.trainer._accelerator_connector.cluster_environment
            info = {
                "restart": restart,
                "world_size": self.trainer.world_size,
                "global_rank": self.global_rank,
                "local_rank": self.local_rank,
                "node_rank": self.trainer.node_rank,
                "num_nodes": self.trainer.num_nodes,
                "devices": len(self.trainer.device_ids),
                "start_step": self.global_step,
                "cluster_environment": type(env).__name__,
                "pid": os.getpid(),
                **{k: os.environ.get(k) for k in (
                    "SLURM_JOB_ID", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURMD_NODENAME",
                    "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "MASTER_ADDR", "MASTER_PORT",
                )},
            }
            (run_dir / "ranks" / f"restart{restart}_rank{self.global_rank}.json").write_text(json.dumps(info))

        def on_save_checkpoint(self, checkpoint):
            if self.global_rank == 0:
                # NOT "ckpt_..." in default_root_dir: Lightning's hpc_save_path() parses every file
                # name there containing "ckpt_" as hpc_ckpt_<int> and crashes (int('')) on others
                with open(run_dir / "save_events.jsonl", "a") as f:
                    f.write(json.dumps({"restart": restart, "global_step": self.global_step,
                                        "time": time.time()}) + "\n")

    plugins = []
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR1))
    t = cfg.trainer
    trainer = L.Trainer(
        accelerator=t.get("accelerator", "cpu"),
        devices=int(t.devices),
        num_nodes=int(t.num_nodes),
        strategy=t.get("strategy", "ddp"),
        max_steps=int(t.max_steps),
        default_root_dir=str(run_dir),
        plugins=plugins,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        # training here is about steps and restarts: no validation inside fit
        limit_val_batches=0 if command == "train" else None,
        num_sanity_val_steps=0,
    )
    if command == "evaluate":
        metrics = trainer.validate(Toy(), ckpt_path=str(cfg.ckpt), verbose=False)
        if trainer.is_global_zero:
            step = torch.load(str(cfg.ckpt), map_location="cpu", weights_only=False)["global_step"]
            (run_dir / "eval.json").write_text(json.dumps({
                "world_size": trainer.world_size, "ckpt": str(cfg.ckpt), "ckpt_global_step": step,
                "metrics": metrics, "job_id": os.environ.get("SLURM_JOB_ID"),
            }))
        return
    trainer.fit(Toy())  # ckpt_path=None: Lightning resumes from run_dir/hpc_ckpt_*.ckpt under SLURM
    if cfg.toy.get("save_final", False):
        trainer.save_checkpoint(str(run_dir / "final.ckpt"))  # collective: every rank calls it
    if trainer.is_global_zero:
        (run_dir / "result.json").write_text(json.dumps({
            "global_step": trainer.global_step, "world_size": trainer.world_size,
            "restart": restart, "job_id": os.environ.get("SLURM_JOB_ID"),
        }))


if __name__ == "__main__":
    main(sys.argv[1:])
