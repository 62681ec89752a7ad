"""W&B sweeps (configs/sweeps/*.yaml): the command line a ``wandb agent`` would start, built with
wandb's own macro expansion from each sweep's template and parameter values, is one the
elastic-pl command line takes, and every swept key lands in the loaded config."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from elastic_pl.cli import parser
from elastic_pl.config import load_config
from elastic_pl.tracking import run_id_for
from wandb.sdk.launch.sweeps import utils as sweep_utils

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


def trial_values(spec: dict) -> list:
    """Values a sweep could draw for one parameter: every listed value, or both bounds and the
    (log-)middle of a range."""
    if "values" in spec:
        return list(spec["values"])
    lo, hi = spec["min"], spec["max"]
    mid = math.sqrt(lo * hi) if "log" in spec.get("distribution", "") else (lo + hi) / 2
    return [lo, mid, hi]


def agent_command(sweep: dict, values: dict) -> list[str]:
    """What ``wandb agent`` runs for a trial (wandb_agent.Agent._command_run: its macros filled by
    wandb's sweep utilities, ``${interpreter}`` = python, ``${env}`` = /usr/bin/env)."""
    template = sweep_utils.create_sweep_command(list(sweep["command"]))
    macros = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    macros.update(interpreter=["python"], program=[sweep["program"]], env=["/usr/bin/env"])
    argv = []
    for part in map(str, template):
        if part.startswith("${") and part.endswith("}"):
            argv += macros.get(part[2:-1]) or []
        else:
            argv.append(part)
    return argv


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_agent_command_loads_as_a_config(path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("SLURM_NNODES", "2")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    sweep = yaml.safe_load(path.read_text())
    assert "${args_no_hyphens}" in sweep["command"] and sweep["metric"]["name"] == "val/ndcg@10"
    params = sweep["parameters"]
    width = max(len(trial_values(s)) for s in params.values())
    for i in range(width):  # every value of every parameter appears in some trial
        values = {k: trial_values(s)[i % len(trial_values(s))] for k, s in params.items()}
        argv = agent_command(sweep, values)
        entry = argv.index("elastic_pl")
        assert argv[entry - 1] == "-m" and argv[entry + 1] == "train"
        args = parser().parse_intermixed_args(argv[entry + 1:])
        cfg = OmegaConf.structured(load_config(args.config, args.overrides))
        for key, value in values.items():
            assert OmegaConf.select(cfg, key) == pytest.approx(value), key
        if "${envvar:SLURM_NNODES}" in " ".join(sweep["command"]):
            assert (cfg.trainer.num_nodes, cfg.trainer.devices) == (2, 4)


def test_a_sweep_trial_logs_to_the_agents_run_id(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc")
    monkeypatch.setenv("WANDB_RUN_ID", "trial42")
    assert run_id_for(tmp_path / "run") == "trial42"
    monkeypatch.delenv("WANDB_SWEEP_ID")  # a plain run: the id derived from its directory
    assert run_id_for(tmp_path / "other") != "trial42"
