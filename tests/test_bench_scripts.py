"""The shell drivers of bench/ build the commands they promise (DRY_RUN prints them)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from elastic_pl.config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("data", ["lastfm", "wikipedia", "ml-latest-small"])
def test_frontier_runs_names_each_experiments_run_directories(data):
    env = {**os.environ, "DRY_RUN": "1", "BIN": str(Path(sys.executable).parent)}
    out = subprocess.run(["bash", "bench/frontier_runs.sh", data, "200 1000"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 5 and all("data.loader.max_len=" in line for line in lines[:4])
    experiments = [load_config(str(REPO / f"configs/{data}{s}.yaml")).run.experiment for s in ("", "-sasrec")]
    expected = [f"runs/{e}/len{n}" for n in (200, 1000) for e in experiments]
    assert lines[-1] == "runs: " + " ".join(expected)


def test_frontier_runs_tag_prefixes_the_run_ids():
    env = {**os.environ, "DRY_RUN": "1", "TAG": "steps828-", "BIN": str(Path(sys.executable).parent)}
    out = subprocess.run(["bash", "bench/frontier_runs.sh", "lastfm", "200"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert all("run.run_id=steps828-len200" in line for line in lines[:2])
    assert lines[-1] == "runs: runs/lastfm-elastic/steps828-len200 runs/lastfm-sasrec/steps828-len200"


def dry_run_memory_ablation(**env_vars):
    env = {**os.environ, "DRY_RUN": "1", "BIN": str(Path(sys.executable).parent), **env_vars}
    return subprocess.run(["bash", "bench/memory_ablation.sh"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_memory_ablation_trains_every_arm_and_seed_of_any_config_then_pairs_them():
    out = dry_run_memory_ablation(CONFIG="configs/lastfm.yaml", ARMS="mem nomem", SEEDS="0 1 2")
    assert out.returncode == 0, out.stderr
    trains = [line.split() for line in out.stdout.splitlines() if " train " in line]
    assert len(trains) == 6
    for words in trains:  # each command is a valid config of the arm it names
        overrides = words[words.index("--config") + 2:]
        cfg = load_config(str(REPO / "configs/lastfm.yaml"), overrides)
        assert cfg.model.encoder.use_memory == cfg.run.run_id.startswith("mem-")
        assert cfg.run.seed == int(cfg.run.run_id[-1])
    paired = [line for line in out.stdout.splitlines() if "bench.paired" in line]
    assert len(paired) == 1
    assert ("--a runs/lastfm-elastic/mem-s0 runs/lastfm-elastic/mem-s1 runs/lastfm-elastic/mem-s2 "
            "--b runs/lastfm-elastic/nomem-s0 runs/lastfm-elastic/nomem-s1 runs/lastfm-elastic/nomem-s2") in paired[0]


def test_memory_ablation_refuses_an_unknown_arm():
    out = dry_run_memory_ablation(ARMS="mem bogus", SEEDS="0")
    assert out.returncode == 2 and "unknown arm 'bogus'" in out.stderr


def test_lda_layer_pair_bench_runs(capsys):
    from bench import lda_layer_pair
    lda_layer_pair.main(["--length", "40", "--batch", "2", "--chunk", "8", "--iters", "1"])
    assert "LDA/SDPA" in capsys.readouterr().out
