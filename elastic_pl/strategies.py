"""Distributed strategies selected by ``trainer.strategy``.

``ddp`` (default on several devices), ``fsdp`` (Lightning's FSDPStrategy: full shard, the units
the encoder declares wrapped (ELASTIC: blocks and interest memories), sharded checkpoints; GPU
only) and ``fsdp2`` (FSDP2 ``fully_shard`` of the same units through Lightning's
ModelParallelStrategy, applied in ``ElasticLightningModule.configure_model``; runs on CPU/gloo too).

Under SLURM (one task per device, started by ``srun``) :func:`check_slurm_layout` refuses a
``trainer.devices``/``trainer.num_nodes`` that does not match the tasks SLURM started.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from datetime import timedelta
from pathlib import Path

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from .config import TrainerConfig


def check_slurm_layout(t: TrainerConfig) -> None:
    """Fail fast when the processes SLURM started are not ``trainer.devices x trainer.num_nodes``.

    Lightning checks ``devices`` against ``--ntasks-per-node`` only for distributed strategies:
    with ``devices=1``, ``num_nodes=1`` and ``strategy=auto`` it picks a single-device strategy and
    every SLURM task would train (or evaluate) the whole run on its own, all writing the same run
    directory. Outside SLURM, or in an interactive allocation (Lightning's
    ``SLURMEnvironment.detect()``), nothing is checked."""
    if not SLURMEnvironment.detect():
        return
    ntasks = int(os.environ["SLURM_NTASKS"])
    nnodes = int(os.environ.get("SLURM_NNODES") or os.environ.get("SLURM_JOB_NUM_NODES") or 1)
    per_node = os.environ.get("SLURM_NTASKS_PER_NODE")
    devices = t.devices if isinstance(t.devices, int) else None
    problems = []
    if devices is not None and devices * t.num_nodes != ntasks:
        problems.append(f"trainer.devices={devices} x trainer.num_nodes={t.num_nodes} = {devices * t.num_nodes} "
                        f"processes, SLURM started {ntasks} tasks")
    if per_node is not None and per_node.isdigit() and devices is not None and devices != int(per_node):
        problems.append(f"trainer.devices={devices}, --ntasks-per-node={per_node}")
    if t.num_nodes != nnodes:
        problems.append(f"trainer.num_nodes={t.num_nodes}, --nodes={nnodes}")
    if problems:
        hint = f"trainer.devices={per_node or max(1, ntasks // nnodes)} trainer.num_nodes={nnodes}"
        raise ValueError("the process layout does not match the SLURM job (" + "; ".join(problems) + "). "
                         f"One task per device: HINT: set {hint} (slurm/train_multinode.sh and "
                         "slurm/evaluate.sh pass them from SLURM_NTASKS_PER_NODE and SLURM_NNODES)")


def build_strategy(t: TrainerConfig):
    """The strategy for ``trainer.strategy``; every multi-process one gets the process-group timeout
    ``trainer.dist_timeout_minutes``: a collective that waits longer (a rank hung, stopped or dead
    without the launcher noticing) fails the run instead of holding the job until its time limit."""
    timeout = timedelta(minutes=t.dist_timeout_minutes)
    if t.strategy == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        return FSDPStrategy(auto_wrap_policy=EncoderWrapPolicy(), sharding_strategy="FULL_SHARD",
                            state_dict_type="sharded", timeout=timeout)
    if t.strategy == "fsdp2":
        from lightning.pytorch.strategies import ModelParallelStrategy

        return ModelParallelStrategy(data_parallel_size=t.devices * t.num_nodes, tensor_parallel_size=1,
                                     timeout=timeout)
    multi = t.devices != 1 or t.num_nodes > 1  # what Lightning's "auto" runs as DDP
    if t.strategy in ("ddp", "ddp_spawn") or (t.strategy == "auto" and multi):
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(start_method="spawn" if t.strategy == "ddp_spawn" else "popen", timeout=timeout)
    return t.strategy


class EncoderWrapPolicy:
    """FSDP auto-wrap policy: a module is its own FSDP unit iff the recommender holding it lists
    it in ``wrap_units()`` (the encoder's declaration). FSDP asks whether to descend into a module
    before it asks about any of its descendants, so the recommender's units are known in time."""

    def __init__(self):
        self.units: set[int] = set()

    def __call__(self, module, recurse: bool, nonwrapped_numel: int, **kwargs) -> bool:
        if recurse:
            wrap_units = getattr(module, "wrap_units", None)
            if callable(wrap_units):
                self.units.update(id(m) for m in wrap_units())
            return True
        return id(module) in self.units


# -- preemption under SLURM ---------------------------------------------------------------------
class Requeued(Exception):
    """Raised out of ``trainer.fit`` once the preemption checkpoint is saved and the job requeued."""


def slurm_plugins() -> list:
    """Under SLURM: Lightning's SLURMEnvironment WITHOUT its own requeue handler (auto_requeue=False).

    Lightning's handler saves the checkpoint inside the SIGUSR1 handler, i.e. wherever each rank
    happens to be: the save's collectives (path broadcast, barrier) then pair with another rank's
    gradient all-reduce and the job hangs (seen on the local cluster with short steps: no rank ever
    finished the save). :class:`RequeueOnSignal` does the same work at a step boundary instead."""
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def requeue_callbacks() -> list:
    """``[RequeueOnSignal()]`` under SLURM (Lightning's ``SLURMEnvironment.detect()``), else ``[]``."""
    return [RequeueOnSignal()] if SLURMEnvironment.detect() else []


def next_hpc_checkpoint(directory) -> str:
    """``<directory>/hpc_ckpt_<n+1>.ckpt`` (Lightning's naming; a file, or a directory when sharded)."""
    numbers = [int(m.group(1)) for p in Path(directory).glob("hpc_ckpt_*.ckpt")
               if (m := re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name))]
    return str(Path(directory) / f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt")


class RequeueOnSignal(L.Callback):
    """Preemption-safe requeue. SIGUSR1 (``#SBATCH --signal=SIGUSR1@90``, ``scancel --signal=USR1``)
    only sets a flag. After each training step (every ``check_every_n_steps`` optimizer steps) all
    ranks OR their flags (one tiny all-reduce); if any rank was signalled, every rank saves
    ``run.dir/hpc_ckpt_<n>.ckpt`` at that same step; before the next step global rank 0 runs
    ``scontrol requeue`` and fit ends with :class:`Requeued` (no step runs after the checkpoint).
    The requeued job resumes from it (train.latest_checkpoint). A signal that arrives during
    validation is acted on after the next training step."""

    def __init__(self, signum: int = signal.SIGUSR1, check_every_n_steps: int = 1):
        self.signum, self.every = signum, max(1, check_every_n_steps)
        self.signalled, self._previous, self._saved = False, None, None

    def _handler(self, signum, frame) -> None:
        self.signalled = True  # nothing else here: the save needs every rank at the same point

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and threading.current_thread() is threading.main_thread():
            self.signalled, self._saved = False, None
            self._previous = signal.signal(self.signum, self._handler)

    def _restore(self) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(self.signum, self._previous)
            self._previous = None

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()

    def on_train_batch_end(self, trainer, *args) -> None:
        # save here, where Lightning's own checkpoints are taken: its restore logic assumes this point
        # (a checkpoint from on_train_batch_start resumes with the logging step off by one)
        if self._saved is not None or trainer.global_step % self.every:
            return
        if not trainer.strategy.reduce_boolean_decision(self.signalled, all=False):
            return
        # rank 0 names it (the other ranks may already see the file rank 0 is writing)
        path = trainer.strategy.broadcast(next_hpc_checkpoint(trainer.default_root_dir) if trainer.is_global_zero
                                          else None)
        rank_zero_info(f"requeue signal received: saving {path} at global step {trainer.global_step}")
        trainer.save_checkpoint(path)  # every rank, here: its collectives line up
        self._saved = (path, trainer.global_step)

    def on_train_batch_start(self, trainer, *args) -> None:
        # requeue and stop before the next step, once the last step's metrics have been logged
        if self._saved is None:
            return
        path, step = self._saved
        job = os.environ.get("SLURM_JOB_ID", "")
        if os.environ.get("SLURM_ARRAY_JOB_ID"):
            job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        if trainer.is_global_zero:
            # close the W&B run first: SLURM kills this job as soon as it is requeued, and a W&B
            # process left holding the run id makes the restarted job fail with "run ID is in use"
            from .tracking import finish_wandb

            finish_wandb(trainer.loggers)
            # said before the call: SLURM may kill this launch before scontrol even returns
            rank_zero_info(f"requeueing SLURM job {job}; it resumes from {path}")
            rc = subprocess.call(["scontrol", "requeue", job])
            if rc != 0:
                rank_zero_warn(f"`scontrol requeue {job}` failed (exit code {rc}): resubmit the job; it "
                               f"resumes from {path}")
        raise Requeued(f"saved {path} at global step {step}; SLURM job {job} requeued")
