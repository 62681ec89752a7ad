"""Shared fixtures. `slurm_cluster`: a real two-node SLURM cluster on this host (session-scoped)."""

import importlib.util
import os
import shutil
from pathlib import Path

import pytest


def _load_slurm_cluster_module():
    # by file path: works whether or not tests/ becomes a package
    path = Path(__file__).with_name("slurm_cluster.py")
    spec = importlib.util.spec_from_file_location("elastic_pl_tests_slurm_cluster", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def slurm_cluster():
    """A started LocalSlurmCluster (tests/slurm_cluster.py); stopped at the end of the session."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    if shutil.which("slurmctld", path=path) is None:
        pytest.skip("slurmctld not installed: apt-get install slurm-wlm (.ci/run does it)")
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (slurmd launches the jobs)")
    cluster = _load_slurm_cluster_module().LocalSlurmCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture(autouse=True)
def _run_marker_key(tmp_path_factory, monkeypatch):
    """Run directories are signed with a per-user key (elastic_pl/run_marker.py); tests use their
    own instead of creating one under the user's home."""
    if "ELASTIC_PL_RUN_KEY" not in os.environ:
        monkeypatch.setenv("ELASTIC_PL_RUN_KEY", str(tmp_path_factory.getbasetemp() / "run-key"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """The tiny synthetic log of tests/pipeline_config.py, prepared once for the session. Tests
    read its shards and put their runs under it by a run id or ``run.dir`` of their own."""
    from elastic_pl.cli import main
    from tests.pipeline_config import tiny_overrides

    os.environ["WANDB_MODE"] = "offline"
    tmp = tmp_path_factory.mktemp("tiny-data")
    assert main(["prepare", *tiny_overrides(tmp)]) == 0
    return tmp
