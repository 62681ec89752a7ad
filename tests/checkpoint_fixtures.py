"""Shared by the checkpoint tests: a pickle payload that would create a file if it ever ran, and a
tiny trained run (prepare + one epoch) with its own run-directory key."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from elastic_pl.cli import main
from elastic_pl.config import load_config
from elastic_pl.train import FitResult, fit
from tests.pipeline_config import tiny_overrides


class Payload:
    """Unpickling it creates the file ``marker`` (what a planted checkpoint could do instead)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def plant(path: Path, marker: Path, key: str = "state_dict") -> None:
    """A plain pickle at ``path`` whose loading would run :class:`Payload`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({key: Payload(marker)}, f)


def trained_tiny_run(tmp: Path, *extra: str):
    """Yields (overrides, FitResult) of a tiny run trained in ``tmp`` (W&B off, the run key in
    ``tmp``); for module-scoped fixtures (``yield from``)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("ELASTIC_PL_RUN_KEY", str(tmp / "run-key"))
    overrides = tiny_overrides(tmp, "run.run_id=r", "wandb.enabled=false", *extra)
    try:
        assert main(["prepare", *overrides]) == 0
        result: FitResult = fit(load_config(None, overrides))
        yield overrides, result
    finally:
        mp.undo()
