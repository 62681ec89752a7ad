"""Weights & Biases through Lightning's WandbLogger: offline unless the user is logged in.

The W&B run id is kept in ``<run_dir>/wandb_run_id.txt`` so a resumed or requeued run logs to
the same W&B run. API keys are never written to configs or logs: wandb reads them from its own
login (``~/.netrc``) or ``WANDB_API_KEY``.
"""
from __future__ import annotations

import hashlib
import netrc
import os
from pathlib import Path
from typing import Optional

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from .config import Config, ConfigError, to_dict

ID_FILE = "wandb_run_id.txt"
WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")  # what wandb accepts in WANDB_MODE


def logged_in() -> bool:
    """True if W&B credentials are available (environment or ~/.netrc), without any network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc().hosts
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any("wandb" in host for host in hosts)


def resolve_mode(mode: str) -> str:
    """``auto`` -> online when logged in, else offline. ``WANDB_MODE`` in the environment wins."""
    env = os.environ.get("WANDB_MODE")
    if env:
        if env not in WANDB_MODES:
            raise ConfigError(f"WANDB_MODE={env!r} in the environment: must be one of {WANDB_MODES} (it wins over "
                              "wandb.mode)")
        return env
    if mode == "auto":
        return "online" if logged_in() else "offline"
    return mode


def sweep_run_id() -> Optional[str]:
    """The run id a W&B sweep agent (``wandb agent``) chose for the process it started, else None.
    The agent sets ``WANDB_SWEEP_ID`` and ``WANDB_RUN_ID``; a run under another id would not be
    counted as the sweep's trial. Hyper-parameters still come from the command line only (the
    agent's ``${args_no_hyphens}``), on every rank: never from ``wandb.config``."""
    return os.environ.get("WANDB_RUN_ID") if os.environ.get("WANDB_SWEEP_ID") else None


def run_id_for(directory: Path) -> str:
    """The run's W&B id: read from the run directory, else the sweep agent's id, else derived from
    its path (the same on every rank, so no rank has to wait for another to write it); saved by
    rank 0."""
    path = directory / ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = sweep_run_id() or hashlib.sha1(str(directory.resolve()).encode()).hexdigest()[:12]
    if rank_zero_only.rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id + "\n")
    return run_id


def build_wandb_logger(cfg: Config, directory: Path) -> Optional[WandbLogger]:
    if not cfg.wandb.enabled or resolve_mode(cfg.wandb.mode) == "disabled":
        return None
    directory.mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=cfg.wandb.project,
        entity=cfg.wandb.entity,
        name=f"{cfg.run.experiment}/{directory.name}",
        id=run_id_for(directory),
        resume="allow",
        save_dir=str(directory),
        mode=resolve_mode(cfg.wandb.mode),
        tags=list(cfg.wandb.tags),
        config=to_dict(cfg),
        log_model=False,  # offline mode refuses log_model; upload checkpoints after `wandb sync`
    )


def finish_wandb(loggers) -> dict:
    """Finish this process's W&B run (so a later run in the same process starts its own) and
    return its summary as a plain dict ({} without W&B or on ranks other than 0)."""
    for lg in loggers:
        if isinstance(lg, WandbLogger) and getattr(lg, "_experiment", None) is not None:
            run = lg.experiment
            summary = {k: run.summary[k] for k in run.summary.keys() if not k.startswith("_")}
            run.finish()
            lg._experiment = None
            return summary
    return {}
