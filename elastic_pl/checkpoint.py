"""Loading checkpoints safely, what they record about their data and model, and consolidation.

* A checkpoint file is read with ``torch.load(weights_only=True)`` (explicit, so
  ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn pickle on).
* A sharded checkpoint directory (fsdp / fsdp2) is read only when it lies in a run directory
  that this user's elastic-pl created (``run_marker``) or with ``trust=True``
  (``--trust-checkpoint``); either way through the restricted reader of ``sharded_checkpoint``.
  ``consolidate`` turns one into a single ``weights_only`` file to hand to others.
* Every checkpoint written by ``train`` records (``PROVENANCE_KEY``) the fingerprint of its data
  (sha256 of the item map, num_items, num_users) and its model config; evaluate and predict
  compare them with the configured data and ``model`` section.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Optional

import lightning as L
import torch

from data_pipeline.manifest import load_manifest

from .errors import CheckpointError, DataMismatchError, ModelConfigMismatchError
from .lightning_module import ElasticLightningModule
from .model import ModelConfig
from .run_dir import CONFIG_NAME, describe, diff
from .run_marker import is_marked
from .sharded_checkpoint import META_FILE, read_sharded

PROVENANCE_KEY = "elastic_pl"
COMPILE_PREFIX = "_orig_mod."  # torch.compile's wrapper (OptimizedModule) inserts it into state_dict keys


# -- where a checkpoint belongs ----------------------------------------------------------------
def is_sharded_checkpoint(path: Path) -> bool:
    """A complete distributed checkpoint (fsdp / fsdp2 save a directory named like the file;
    rank 0 writes its ``meta.pt`` last, so a directory without it is an unfinished save)."""
    return Path(path).is_dir() and (Path(path) / META_FILE).is_file()


def find_run_dir(checkpoint: Path) -> Optional[Path]:
    """The run directory a checkpoint lies in: the nearest parent (3 levels at most:
    ``hpc_ckpt_*.ckpt``, ``checkpoints/*.ckpt``, ``checkpoints/consolidated/*.ckpt``) holding a
    ``config.yaml``."""
    for parent in list(Path(checkpoint).resolve().parents)[:3]:
        if (parent / CONFIG_NAME).is_file():
            return parent
    return None


def is_trusted(checkpoint: Path) -> bool:
    run = find_run_dir(checkpoint)
    return run is not None and is_marked(run)


# -- reading -----------------------------------------------------------------------------------
def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def load_checkpoint(path, trust: bool = False) -> dict:
    """The checkpoint dict of a file or of a sharded directory (module docstring for the rules)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if p.is_dir():
        if not is_sharded_checkpoint(p):
            raise CheckpointError(f"{path} is a directory but not a complete sharded (fsdp/fsdp2) checkpoint: "
                                  f"no {META_FILE} (an unfinished save, or not a checkpoint)")
        if not (trust or is_trusted(p)):
            raise CheckpointError(
                f"{path}: a sharded checkpoint outside any run directory elastic-pl created for this user "
                f"(no valid run_marker.json next to a config.yaml). Convert it into a single weights-only "
                f"file with `elastic-pl consolidate --checkpoint {path}` and use that, or pass "
                "--trust-checkpoint if you wrote it yourself")
        ckpt = read_sharded(p)
    else:
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"{path}: cannot be loaded with weights_only=True: it holds pickled objects "
                                  f"other than tensors and plain values, which are never run "
                                  f"({_first_line(e)})") from None
        except Exception as e:  # torch.load's error for bytes that are no torch file varies (IndexError, ...)
            raise CheckpointError(f"{path}: not a checkpoint file ({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(ckpt, dict) or "hyper_parameters" not in ckpt or not (
            "state_dict" in ckpt or "model" in ckpt):
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not an elastic-pl checkpoint (no weights or hyper-parameters; has {keys})")
    _check_layout(ckpt, path)
    return ckpt


def _check_layout(ckpt: dict, path) -> None:
    """The parts every reader indexes are mappings, so a damaged file is one message, not a KeyError."""
    hp, provenance = ckpt["hyper_parameters"], ckpt.get(PROVENANCE_KEY, {})
    parts = {"hyper_parameters": hp, "hyper_parameters.model": hp.get("model") if isinstance(hp, dict) else hp,
             "state_dict": ckpt.get("state_dict", ckpt.get("model")), PROVENANCE_KEY: provenance}
    if isinstance(provenance, dict):
        parts.update({f"{PROVENANCE_KEY}.{k}": provenance[k] for k in ("data", "model") if k in provenance})
    for name, value in parts.items():
        if not isinstance(value, dict):
            what = "missing" if value is None else f"of type {type(value).__name__}, not a mapping"
            raise CheckpointError(f"{path}: not an elastic-pl checkpoint: its {name!r} is {what} (a damaged or "
                                  "foreign file)")


def without_compile_prefix(state: dict) -> dict:
    """State-dict keys as the plain model has them (a ``torch.compile``'d model saves
    ``model._orig_mod.x``)."""
    return {k.replace("." + COMPILE_PREFIX, ".").removeprefix(COMPILE_PREFIX): v for k, v in state.items()}


def module_from_checkpoint(ckpt: dict, path) -> ElasticLightningModule:
    """The trained module (CPU, eval mode) from a checkpoint dict of :func:`load_checkpoint`."""
    state = ckpt.get("state_dict", ckpt.get("model"))  # Lightning's file / FSDPStrategy layout
    try:
        module = ElasticLightningModule(**ckpt["hyper_parameters"])
        module.load_state_dict(without_compile_prefix(state))
    except (TypeError, ValueError, KeyError, RuntimeError) as e:  # config checks raise ValueError
        raise CheckpointError(f"{path}: its weights or hyper-parameters do not fit this version's model "
                              f"({_first_line(e)})") from None
    return module.eval()


def load_module(checkpoint, trust: bool = False) -> ElasticLightningModule:
    return module_from_checkpoint(load_checkpoint(checkpoint, trust), checkpoint)


# -- what a checkpoint records -----------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def data_fingerprint(data_dir) -> dict:
    """sha256 of the manifest's item map (the dense id <-> original id table), num_items, num_users."""
    manifest = load_manifest(str(data_dir))  # checks the item map is there and has num_items rows
    raw = json.loads((Path(data_dir) / "manifest.json").read_text())
    return {"item_map_sha256": _sha256(Path(data_dir) / raw["item_map"]), "num_items": manifest.num_items,
            "num_users": manifest.num_users}


class RecordProvenance(L.Callback):
    """Adds the data fingerprint and the model config to every checkpoint the trainer saves."""

    def __init__(self, data_dir, model_config: dict):
        self.provenance = {"format_version": 1, "data": data_fingerprint(data_dir), "model": model_config}

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[PROVENANCE_KEY] = self.provenance


def check_data(ckpt: dict, path, data_dir, allow_mismatch: bool = False) -> None:
    """The checkpoint was trained on the configured data, else :class:`DataMismatchError` saying
    what differs (``allow_mismatch`` waives it when the catalog size still matches)."""
    recorded = (ckpt.get(PROVENANCE_KEY) or {}).get("data")
    current = data_fingerprint(data_dir)
    hint = "pass --allow-data-mismatch to use it anyway"
    if recorded is None:
        changes = {"data fingerprint": ("not recorded (an older checkpoint)", "...")}
    else:
        changes = diff(recorded, current)
    if not changes:
        return
    num_items = ckpt["hyper_parameters"]["model"]["num_items"]
    if num_items != current["num_items"]:
        raise DataMismatchError(f"{path}: its item table has {num_items} items, the data in {data_dir} has "
                                f"{current['num_items']}: it cannot rank this catalog ({describe(changes, 'checkpoint', 'data')})")
    if not allow_mismatch:
        raise DataMismatchError(f"{path} was trained on other data than {data_dir}: "
                                f"{describe(changes, 'checkpoint', 'data')}; {hint}")


def check_model_config(ckpt: dict, path, model_cfg: dict) -> None:
    """The config's ``model`` section (``num_items`` aside: it is the data's) equals the
    checkpoint's, else :class:`ModelConfigMismatchError` listing the differing keys."""
    try:
        saved = dataclasses.asdict(ModelConfig.from_dict(ckpt["hyper_parameters"]["model"]))  # any layout
    except (TypeError, ValueError, KeyError) as e:  # UnknownComponent is a KeyError or ValueError too
        raise CheckpointError(f"{path}: its model config cannot be read by this version ({_first_line(e)})") from None
    wanted = {**model_cfg, "num_items": saved["num_items"]}
    changes = diff({"model": saved}, {"model": wanted})
    if changes:
        raise ModelConfigMismatchError(
            f"{path}: the config's model section differs from the checkpoint's: "
            f"{describe(changes, 'checkpoint', 'config')}. Use the config it was trained with (its run "
            f"directory's {CONFIG_NAME})")


# -- consolidation -----------------------------------------------------------------------------
def default_consolidated_path(checkpoint: Path) -> Path:
    # a subfolder: never a resume candidate (checkpoints/last*.ckpt) nor a ckpt_ name in the run dir
    return Path(checkpoint).parent / "consolidated" / Path(checkpoint).name


def consolidate(checkpoint, out=None) -> Path:
    """Write a sharded checkpoint as one file that ``torch.load(weights_only=True)`` reads (and
    that evaluate / predict / export / resume accept anywhere). Reads with the restricted reader,
    so it needs no trust; refuses to overwrite an existing file."""
    src = Path(checkpoint)
    if not is_sharded_checkpoint(src):
        raise CheckpointError(f"consolidate: {checkpoint} is not a complete sharded (fsdp/fsdp2) checkpoint "
                              f"directory (no {META_FILE})")
    dest = Path(out) if out else default_consolidated_path(src)
    if dest.exists():
        raise CheckpointError(f"consolidate: {dest} exists; remove it or pass another --out")
    ckpt = read_sharded(src)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    torch.save(ckpt, tmp)
    try:
        torch.load(tmp, map_location="cpu", weights_only=True)  # what every reader of it will do
    except pickle.UnpicklingError as e:
        tmp.unlink()
        raise CheckpointError(f"consolidate: {checkpoint} holds objects weights_only cannot load "
                              f"({_first_line(e)})") from None
    os.replace(tmp, dest)
    return dest
