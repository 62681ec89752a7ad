"""Build the Trainer for a run directory and run fit / evaluate / predict.

A run lives in ``runs/<experiment>/<run_id>`` (or ``run.dir``): ``config.yaml`` (the resolved
config), ``checkpoints/`` (best on val/ndcg@10, last after every epoch, every N steps), ``hpc_ckpt_*.ckpt``
(written by Lightning on SLURM preemption), ``csv/<stage>-<time>/metrics.csv`` (one per launch:
Lightning's CSV writer would overwrite an existing file), ``wandb/`` and
``wandb_run_id.txt`` and ``run_marker.json`` (run_marker: this user's elastic-pl made it). Starting
a run in a directory that holds checkpoints resumes from the newest one (step counter, optimizer,
schedule and W&B run continue); a config that differs from its ``config.yaml`` is handled by
``run.on_config_change`` (run_dir). Checkpoints are read by ``checkpoint`` (weights_only, the data
fingerprint and model config they record).
"""
from __future__ import annotations

import dataclasses
from datetime import datetime
import json
import pickle
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_warn

from data_pipeline.datamodule import ElasticDataModule

from .checkpoint import (RecordProvenance, check_data, check_model_config, is_sharded_checkpoint,  # noqa: F401
                         load_checkpoint, load_module, module_from_checkpoint)
from .config import Config, ConfigError, to_dict
from .errors import CheckpointError
from .lightning_module import ElasticLightningModule
from .run_dir import open_run, resolve as run_dir, write_run_files
from .run_marker import is_marked
from .strategies import build_strategy, check_slurm_layout, requeue_callbacks, slurm_plugins
from .tracking import build_wandb_logger, finish_wandb
from .artifacts import log_fit_artifacts

BEST_METRIC = "val/ndcg@10"


def _checkpoint_mtime(path: Path) -> float:
    # a directory's own mtime does not change when its files are overwritten in place
    if path.is_dir():
        return max([path.stat().st_mtime, *(f.stat().st_mtime for f in path.iterdir())])
    return path.stat().st_mtime


def latest_checkpoint(directory: Path) -> Optional[Path]:
    """The newest of ``hpc_ckpt_*.ckpt`` (preemption) and ``checkpoints/last*.ckpt``, if any;
    files or (sharded strategies) checkpoint directories."""
    candidates = [p for p in [*directory.glob("hpc_ckpt_*.ckpt"), *(directory / "checkpoints").glob("last*.ckpt")]
                  if p.is_file() or is_sharded_checkpoint(p)]
    return max(candidates, key=_checkpoint_mtime) if candidates else None


class LogStepFromGlobalStep(L.Callback):
    """Logs of a resumed fit continue at the step it resumed from. Lightning (2.6) keeps a separate
    logging step (``_batches_that_stepped``) that, restored from a checkpoint saved at an epoch's
    end (``last.ckpt`` after that epoch's validation) with ``trainer.max_steps`` set, comes back
    one ahead: the resumed launch logged steps k+1..N instead of k..N-1 (test_pipeline.py::
    test_resume_from_epoch_end_checkpoint_logs_every_step_once). With one optimizer and no gradient
    accumulation (all this package trains) the logging step is the global step at every batch
    start, so it is set to it there."""

    def on_train_batch_start(self, trainer, *args) -> None:
        trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step


def build_datamodule(cfg: Config) -> ElasticDataModule:
    return ElasticDataModule(cfg.data.loader)  # its loaders' workers ignore SIGUSR1 (SLURM)


def build_module(cfg: Config, num_items: int) -> ElasticLightningModule:
    """The module for this data: ``model.num_items`` comes from the manifest, not the config."""
    model_cfg = dataclasses.replace(cfg.model, num_items=num_items)
    resolved = dataclasses.replace(cfg, model=model_cfg)
    return ElasticLightningModule.from_configs(model_cfg, cfg.optim, cfg.eval, to_dict(resolved))


def build_trainer(cfg: Config, directory: Path, *, stage: str, callbacks: Sequence = ()) -> L.Trainer:
    """``stage``: fit | evaluate | predict (fit adds checkpointing and early stopping)."""
    t, for_fit = cfg.trainer, stage == "fit"
    check_slurm_layout(t)  # before anything is written to the run directory
    csv_logger = CSVLogger(str(directory), name="csv", version=f"{stage}-{datetime.now():%Y%m%d-%H%M%S-%f}")
    loggers, callbacks = [csv_logger], list(callbacks)
    wandb_logger = build_wandb_logger(cfg, directory)
    if wandb_logger is not None:
        loggers.append(wandb_logger)
    if for_fit:
        ckpt_dir = str(directory / "checkpoints")
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, monitor=BEST_METRIC, mode="max", save_top_k=1,
                                         filename="best-epoch{epoch}-step{step}", auto_insert_metric_name=False))
        # last.ckpt after every epoch, its own callback: Lightning (2.6) writes a monitored callback's
        # save_last file only when the monitored metric improved, so a resume would redo (and a
        # crash lose) every epoch since the best one
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1,
                                         enable_version_counter=False))
        if t.checkpoint_every_n_steps > 0:
            callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=t.checkpoint_every_n_steps,
                                             save_top_k=-1, save_last=True, filename="step{step}",
                                             auto_insert_metric_name=False))
        if t.early_stopping_patience > 0:
            # checked when a validation ends: a run resumed inside an epoch whose validation already
            # ran (a wall-time stop) ends that epoch without one, so no metric is there
            callbacks.append(EarlyStopping(monitor=BEST_METRIC, mode="max", patience=t.early_stopping_patience,
                                           check_on_train_epoch_end=False))
        callbacks.append(LogStepFromGlobalStep())
        callbacks.extend(requeue_callbacks())  # SLURM: SIGUSR1 -> hpc checkpoint + requeue
    if t.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, t.log_every_n_steps // 5)))
    return L.Trainer(
        accelerator="gpu" if t.accelerator == "cuda" else t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=build_strategy(t),
        plugins=slurm_plugins() or None,
        precision=t.precision,
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        max_time={"minutes": t.max_time_minutes} if t.max_time_minutes else None,
        gradient_clip_val=t.gradient_clip_val or None,
        check_val_every_n_epoch=t.check_val_every_n_epoch,
        limit_val_batches=t.limit_val_batches,
        limit_test_batches=t.limit_test_batches if for_fit else None,  # evaluate always scores every user
        log_every_n_steps=t.log_every_n_steps,
        default_root_dir=str(directory),
        logger=loggers,
        callbacks=callbacks,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=for_fit,
        use_distributed_sampler=False,  # the DataModule splits data across ranks itself
    )


def _metrics_of(trainer: L.Trainer, prefix: str) -> dict:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}


@dataclasses.dataclass
class FitResult:
    run_dir: str
    best_checkpoint: str  # "" when no validation ran
    test: dict  # test/<metric> -> value, of tested_checkpoint
    trainer: L.Trainer
    wandb_summary: dict  # what W&B recorded (rank 0), read back before the run was finished
    tested_checkpoint: str = ""  # the best checkpoint, or the last one when no validation ran


def _resume_checkpoint(directory: Path, trust: bool) -> Optional[Path]:
    """The checkpoint to resume from. A sharded one is read by Lightning with torch's own reader
    (which unpickles), so it must lie in a run directory this user's elastic-pl created (or ``trust``)."""
    resume = latest_checkpoint(directory)
    if resume is not None and resume.is_dir() and not (trust or is_marked(directory)):
        raise CheckpointError(f"{resume}: resuming a sharded checkpoint in a run directory elastic-pl did not "
                              f"create for this user (no valid run_marker.json in {directory}); pass "
                              "--trust-checkpoint if you wrote it yourself")
    return resume


def check_trainable(t) -> None:
    """Settings under which no step could run, refused before the run directory is written."""
    if t.max_epochs == 0 or t.max_steps == 0:
        raise ConfigError(f"trainer.max_epochs={t.max_epochs}, trainer.max_steps={t.max_steps}: no training step "
                          "would run (use -1 for no limit)")
    if t.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={t.accelerator}: this machine has no CUDA GPU "
                          "(trainer.accelerator=cpu or auto)")


def _last_weights(trainer: L.Trainer, directory: Path) -> str:
    """Training stopped before its first validation (``max_steps`` or the wall time inside the first
    epoch): there is no best checkpoint, so the last weights are tested, and said to be."""
    last = directory / "checkpoints" / "last.ckpt"
    rank_zero_warn(f"no validation ran before training stopped (step {trainer.global_step}): there is no best "
                   f"checkpoint; testing the last weights{f' ({last})' if last.is_file() else ''}")
    return str(last) if last.is_file() else ""


def fit(cfg: Config, callbacks: Sequence = (), trust_checkpoint: bool = False) -> FitResult:
    """Train (resuming if the run directory has a checkpoint), then test the best checkpoint.
    Under SLURM, raises ``strategies.Requeued`` after a SIGUSR1 (checkpoint saved, job requeued)."""
    L.seed_everything(cfg.run.seed, workers=True)
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm.num_items)
    resolved = dataclasses.replace(cfg, model=module.model_cfg)
    check_slurm_layout(cfg.trainer)  # before anything is written to the run directory
    check_trainable(cfg.trainer)
    # the users' lengths now (cached): a user over the token budget, or no user to train on, is refused
    # before the run directory is written, with token budgets or fixed batches
    dm.training_tokens()
    run = open_run(resolved, lambda d: latest_checkpoint(d) is not None)  # run.on_config_change; writes nothing
    directory = run.path
    resume = _resume_checkpoint(directory, trust_checkpoint)
    if cfg.trainer.compile:
        module.model.compile(backend=cfg.trainer.compile_backend)  # in place: state_dict keys stay the plain model's
    provenance = RecordProvenance(cfg.data.loader.data_dir, dataclasses.asdict(module.model_cfg))
    trainer = build_trainer(cfg, directory, stage="fit", callbacks=[*callbacks, provenance])
    if trainer.is_global_zero:
        write_run_files(run, resolved)
    try:
        try:  # weights_only whatever the environment says (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD): no pickle runs
            trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None, weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"{resume}: cannot be loaded with weights_only=True: it holds pickled objects "
                                  f"other than tensors and plain values, which are never run "
                                  f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
        if trainer.global_step == 0:  # an untrained model's test metrics are no result
            t = cfg.trainer
            raise ConfigError(f"no training step ran (trainer.max_epochs={t.max_epochs}, trainer.max_steps="
                              f"{t.max_steps}, trainer.max_time_minutes={t.max_time_minutes}): nothing to test")
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        tested = best or _last_weights(trainer, directory)
        trainer.test(module, datamodule=dm, ckpt_path=tested or None, verbose=False, weights_only=True)
        log_fit_artifacts(trainer, directory, best, _metrics_of(trainer, "test/"), enabled=cfg.wandb.log_artifacts)
    finally:
        summary = finish_wandb(trainer.loggers)
    result = FitResult(str(directory), best, _metrics_of(trainer, "test/"), trainer, summary, tested)
    if trainer.is_global_zero:
        summary = {"run_dir": result.run_dir, "best_checkpoint": best, "tested_checkpoint": tested, "test": result.test,
                   "global_step": trainer.global_step, "world_size": trainer.world_size,
                   "num_nodes": trainer.num_nodes, "limit_test_batches": cfg.trainer.limit_test_batches, "strategy": type(trainer.strategy).__name__,
                   "cluster_environment": type(getattr(trainer.strategy, "cluster_environment", None)).__name__}
        (directory / "test_metrics.json").write_text(json.dumps(summary, indent=2))
    return result


def load_for_data(cfg: Config, checkpoint: str, trust: bool = False,
                  allow_data_mismatch: bool = False) -> ElasticLightningModule:
    """The module of ``checkpoint`` for evaluating / predicting on ``cfg``'s data: refuses a
    checkpoint trained on other data (unless ``allow_data_mismatch``) or whose model config is not
    ``cfg.model``."""
    ckpt = load_checkpoint(checkpoint, trust)
    check_model_config(ckpt, checkpoint, dataclasses.asdict(cfg.model))
    check_data(ckpt, checkpoint, cfg.data.loader.data_dir, allow_data_mismatch)
    module = module_from_checkpoint(ckpt, checkpoint)
    module.eval_cfg = cfg.eval
    return module


def evaluate(cfg: Config, checkpoint: str, split: str = "test", trust: bool = False,
             allow_data_mismatch: bool = False) -> dict:
    directory = run_dir(cfg)
    dm = build_datamodule(cfg)
    module = load_for_data(cfg, checkpoint, trust, allow_data_mismatch)
    trainer = build_trainer(cfg, directory, stage="evaluate")
    try:
        if split == "valid":
            trainer.validate(module, datamodule=dm, verbose=False)
        else:
            trainer.test(module, datamodule=dm, verbose=False)
    finally:
        finish_wandb(trainer.loggers)
    return _metrics_of(trainer, "val/" if split == "valid" else "test/")
