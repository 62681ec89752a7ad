"""The run directory: where a run lives, and what happens when a launch's config differs from it.

``runs/<experiment>/<run_id>`` (or ``run.dir``) holds the resolved ``config.yaml`` of the run.
A launch whose config differs from it is handled by ``run.on_config_change``:

* ``error`` (default): an error listing every changed key, raised before anything is written;
* ``new_run``: the first sibling ``<dir>-2``, ``<dir>-3``, ... that is free or holds this very
  config (so a requeued job with the changed config resumes the same new run);
* ``allow``: resume here with the changes that a resume applies (trainer, schedule, evaluation,
  logging, data loading); changes a checkpoint overrides (the model, the optimizer's
  hyper-parameters, restored with its state) are refused when there is a checkpoint to resume.

Keys that say where the run lives (``run.root|experiment|run_id|dir``, the config file names,
this policy) are not part of the comparison.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

from lightning.pytorch.utilities import rank_zero_info
from omegaconf import OmegaConf

from .config import Config, ConfigError, load_config, to_dict, to_yaml
from .errors import RunConfigChangedError
from .run_marker import check_key

CONFIG_NAME = "config.yaml"
POLICIES = ("error", "new_run", "allow")
LOCATION_KEYS = ("run.root", "run.experiment", "run.run_id", "run.dir", "run.on_config_change", "run.config_files")
# changes a resumed checkpoint overrides: key prefix -> why
NOT_APPLIED_ON_RESUME = {
    "model.": "the model's architecture and shapes are those of its checkpoint",
    "optim.lr": "restored with the optimizer state",
    "optim.weight_decay": "restored with the optimizer state",
    "optim.beta1": "restored with the optimizer state",
    "optim.beta2": "restored with the optimizer state",
    "optim.memory_lr_mult": "restored with the optimizer state",
    "optim.item_table": "the optimizer's kind and state come from the checkpoint",
    "optim.item_table_lr": "restored with the optimizer state",
}


def resolve(cfg: Config) -> Path:
    """The run's directory. Without ``run.run_id``/``run.dir`` a new id is made once per launch
    (SLURM: the job id, stable across requeues and the same for every task) and passed to the
    processes Lightning starts through the environment."""
    if cfg.run.dir:
        return Path(cfg.run.dir)
    run_id = cfg.run.run_id or os.environ.get("SLURM_JOB_ID") or os.environ.get("ELASTIC_PL_RUN_ID")
    if not run_id:
        run_id = time.strftime("%Y%m%d-%H%M%S")
        os.environ["ELASTIC_PL_RUN_ID"] = run_id
    return Path(cfg.run.root) / cfg.run.experiment / run_id


def flatten(tree: dict, prefix: str = "") -> Dict[str, object]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (lists stay values)."""
    out: Dict[str, object] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def diff(old: dict, new: dict, ignore: Tuple[str, ...] = ()) -> Dict[str, Tuple[object, object]]:
    """Flattened keys whose values differ: key -> (old, new); a key missing on one side is '<absent>'."""
    a, b = flatten(old), flatten(new)
    absent = "<absent>"
    return {k: (a.get(k, absent), b.get(k, absent)) for k in sorted(set(a) | set(b))
            if k not in ignore and a.get(k, absent) != b.get(k, absent)}


def describe(changes: Dict[str, Tuple[object, object]], old: str = "saved", new: str = "now") -> str:
    return "; ".join(f"{k}: {old} {a!r}, {new} {b!r}" for k, (a, b) in changes.items())


def saved_config(directory: Path) -> Optional[dict]:
    """The run directory's config as a plain dict (the schema's defaults for keys it predates),
    or None when there is none."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        return to_dict(load_config(str(path)))  # read as any config file: defaults <- the file
    except ConfigError:  # a key this version no longer has: compare as written
        try:
            return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        except Exception as e:  # not even YAML
            raise RunConfigChangedError(f"{path}: cannot be read ({e}); restore it or use another run.dir") from None


@dataclasses.dataclass(frozen=True)
class RunDirectory:
    path: Path
    created: bool  # nothing was there: this launch starts the run (and marks the directory)


def _is_new(path: Path) -> bool:
    return not path.exists() or not any(path.iterdir())


def open_run(cfg: Config, has_checkpoint) -> RunDirectory:
    """The directory this launch trains in, after the ``run.on_config_change`` check (module
    docstring); writes nothing. ``cfg`` is resolved (``model.num_items`` from the data);
    ``has_checkpoint(path)`` tells whether a directory holds a checkpoint to resume."""
    policy = cfg.run.on_config_change
    if policy not in POLICIES:
        raise ConfigError(f"run.on_config_change: must be one of {POLICIES} (got {policy!r})")
    path, now = resolve(cfg), to_dict(cfg)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run directory {path} (run.dir, or run.root/run.experiment/run.run_id) exists and is "
                          "not a directory")
    check_key()  # a run marks or verifies its directory with it: refuse a bad key before anything is written
    saved = saved_config(path)
    changes = diff(saved, now, LOCATION_KEYS) if saved is not None else {}
    if not changes:
        return RunDirectory(path, _is_new(path))
    if policy == "new_run":
        for n in range(2, 10_000):
            sibling = path.with_name(f"{path.name}-{n}")
            other = saved_config(sibling)
            if other is None and _is_new(sibling) or other is not None and not diff(other, now, LOCATION_KEYS):
                rank_zero_info(f"run.on_config_change=new_run: the config differs from {path / CONFIG_NAME} "
                               f"({', '.join(changes)}): this run lives in {sibling}")
                return RunDirectory(sibling, _is_new(sibling))
        raise RunConfigChangedError(f"run.on_config_change=new_run: no free directory next to {path}")
    if policy == "allow":
        refused = {k: why for k in changes for prefix, why in NOT_APPLIED_ON_RESUME.items()
                   if k == prefix or prefix.endswith(".") and k.startswith(prefix)}
        if refused and has_checkpoint(path):
            raise RunConfigChangedError(
                f"{path / CONFIG_NAME}: run.on_config_change=allow cannot apply these changes when resuming "
                f"from a checkpoint: " + "; ".join(f"{k} ({why})" for k, why in refused.items())
                + f" [{describe({k: changes[k] for k in refused})}]. Start a new run "
                "(run.on_config_change=new_run, or another run.run_id / run.dir) or undo them")
        rank_zero_info(f"run.on_config_change=allow: applying to the run in {path}: {describe(changes)}")
        return RunDirectory(path, False)
    raise RunConfigChangedError(
        f"{path / CONFIG_NAME}: this run was started with another config; changed keys: {describe(changes)}. "
        "Undo the changes to resume it, or set run.on_config_change=new_run (a fresh run directory) or "
        "run.on_config_change=allow (resume with the changes a resume can apply)")


def write_run_files(run: RunDirectory, cfg: Config) -> None:
    """``config.yaml`` (atomically: other ranks may read it meanwhile) and, for a new run, the
    directory's mark (run_marker). Global rank 0 only."""
    from .run_marker import write_marker

    run.path.mkdir(parents=True, exist_ok=True)
    tmp = run.path / f".{CONFIG_NAME}.tmp-{os.getpid()}"
    tmp.write_text(to_yaml(cfg))
    os.replace(tmp, run.path / CONFIG_NAME)
    if run.created:
        write_marker(run.path)


@contextlib.contextmanager
def discarded_on_failure(directory: Path) -> Iterator[None]:
    """What a command adds to ``directory`` (its logs: ``csv/<version>``, ``wandb/...``, the W&B
    id file) is removed again if the command fails, so a failed evaluate or predict leaves the run
    directory as it found it, or absent. Global rank 0."""
    from lightning.pytorch.utilities import rank_zero_only

    def entries() -> set:  # the directory and its log folders, one level each (never a deep walk)
        return {p for d in (directory, directory / "csv", directory / "wandb") if d.is_dir() for p in d.iterdir()}

    existed, before = directory.is_dir(), entries()
    try:
        yield
    except BaseException:
        if rank_zero_only.rank == 0 and directory.is_dir():
            if not existed:
                shutil.rmtree(directory, ignore_errors=True)
            else:
                for path in sorted(entries() - before):
                    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        raise
