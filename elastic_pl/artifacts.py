"""The end of a fit on W&B: the best checkpoint and the resolved config as artifacts, the test
metrics in the run's summary (global rank 0, which alone has a W&B run).

Artifacts (``wandb.log_artifacts``):

* ``model-<wandb run id>`` (type ``model``, aliases ``best`` and ``step<global step>``): the
  best checkpoint on ``val/ndcg@10`` (a file, or the directory of a sharded fsdp/fsdp2
  checkpoint); its metadata names the monitored score, the step and the test metrics;
* ``config-<wandb run id>`` (type ``config``): the run's resolved ``config.yaml``.

Their files are staged under the W&B run's own directory (``wandb/<offline-run-...>/artifacts/``)
and referenced from there, so an offline run carries everything ``wandb sync`` uploads later, even
after a resumed fit replaced its best checkpoint: the checkpoint is hard-linked (no second copy on
disk; copied where links are impossible), the small config copied.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

from lightning.pytorch.loggers import WandbLogger

from .run_dir import CONFIG_NAME

MODEL_TYPE, CONFIG_TYPE = "model", "config"


def _wandb_run(loggers):
    for lg in loggers:
        if isinstance(lg, WandbLogger) and getattr(lg, "_experiment", None) is not None:
            return lg.experiment
    return None


def _stage(source: Path, dest: Path, link: bool) -> None:
    """``source`` (file or directory) -> ``dest``: hard links (``link``) or copies."""
    if source.is_dir():
        for f in sorted(p for p in source.rglob("*") if p.is_file()):
            _stage(f, dest / f.relative_to(source), link)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        dest.unlink()
    try:
        if not link:
            raise OSError("copy requested")
        os.link(source, dest)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, dest)


def log_fit_artifacts(trainer, run_dir: Path, best_checkpoint: str, test_metrics: dict, *,
                      enabled: bool = True) -> Optional[dict]:
    """Log the artifacts above and put ``test_metrics`` in the W&B summary. Returns the names and
    staged paths, or None on ranks without a W&B run (and when W&B is off)."""
    import wandb

    run = _wandb_run(trainer.loggers)
    if run is None:
        return None
    run.summary.update({**test_metrics, "global_step": trainer.global_step})
    if not enabled:
        return None
    staging = Path(run.dir).parent / "artifacts"  # run.dir is <offline-run-...>/files
    logged = {}
    config = run_dir / CONFIG_NAME
    if config.is_file():
        name = f"config-{run.id}"
        _stage(config, staging / name / CONFIG_NAME, link=False)
        art = wandb.Artifact(name, type=CONFIG_TYPE, description="the resolved config of the run")
        art.add_file(str(staging / name / CONFIG_NAME), name=CONFIG_NAME, policy="immutable")
        run.log_artifact(art)
        logged[CONFIG_TYPE] = {"name": name, "path": str(staging / name / CONFIG_NAME)}
    if best_checkpoint and Path(best_checkpoint).exists():
        best, name = Path(best_checkpoint), f"model-{run.id}"
        callback = trainer.checkpoint_callback
        score = getattr(callback, "best_model_score", None)
        art = wandb.Artifact(name, type=MODEL_TYPE, description="the best checkpoint on val/ndcg@10",
                             metadata={"monitor": getattr(callback, "monitor", None),
                                       "score": None if score is None else float(score),
                                       "global_step": trainer.global_step, "checkpoint": best.name,
                                       "test": test_metrics})
        staged = staging / name / best.name
        _stage(best, staged, link=True)
        if staged.is_dir():
            art.add_dir(str(staged), name=best.name, policy="immutable")
        else:
            art.add_file(str(staged), name=best.name, policy="immutable")
        run.log_artifact(art, aliases=["best", f"step{trainer.global_step}"])
        logged[MODEL_TYPE] = {"name": name, "path": str(staged)}
    return logged
