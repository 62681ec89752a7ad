"""The SLURM launchers (slurm/*.sh) with the real entry point ``python -m elastic_pl`` on a real
two-node SLURM cluster on this host (tests/slurm_cluster.py), with the tiny end-to-end config
(tests/pipeline_config.py) written to a YAML file: what a user submits, only smaller.

CPU + gloo through ACCELERATOR=cpu; MASTER_ADDR=127.0.0.1 because both emulated nodes are this
host (Lightning would otherwise resolve the node name "n1"). W&B offline (WANDB_MODE).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.pipeline_config import logged_train_steps, tiny_overrides

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "slurm" / "train_multinode.sh"
EVALUATE = REPO / "slurm" / "evaluate.sh"
PREPARE = REPO / "slurm" / "prepare_array.sh"
JOB_TIMEOUT = 180  # s; the jobs' own --time is 4 min, so a hang is caught here first
STEPS_PER_EPOCH = 4
MAX_STEPS = 8  # two epochs: a validation (best checkpoint) in each


def _log(path: Path, n: int = 60) -> str:
    if path.is_dir():  # every job log in it (array tasks)
        return "\n".join(f"--- {f.name}\n{_log(f, n)}" for f in sorted(path.glob("slurm-*.out")))
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"<no log at {path}>"


def _dump_and_cancel(cluster, job: str) -> None:
    """Python stacks of every process of a hung job into its log (faulthandler on SIGABRT), then cancel."""
    cluster.signal(job, "ABRT")
    time.sleep(3)
    cluster.scancel(job)


def _wait(cluster, job: str, log: Path, timeout: float = JOB_TIMEOUT) -> dict:
    try:
        return cluster.wait(job, timeout)
    except Exception as e:
        _dump_and_cancel(cluster, job)
        pytest.fail(f"{e}\n--- job log {log} ---\n{_log(log, 200)}")


def _job_env(extra=None) -> dict:
    # PYTHONFAULTHANDLER: a hung job is sent SIGABRT (_dump_and_cancel): every process prints its stacks
    return {"PYTHON": sys.executable, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1", "WANDB_MODE": "offline",
            "OMP_NUM_THREADS": "1",
            "WANDB_SILENT": "true", **(extra or {})}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny config as a YAML file (what CONFIG points at) and its shards, prepared locally
    with ``elastic-pl prepare`` (the reference for the SLURM prepare chain)."""
    from elastic_pl.cli import main

    tmp = tmp_path_factory.mktemp("tiny")
    config = tmp / "tiny.yaml"
    config.write_text(OmegaConf.to_yaml(OmegaConf.from_dotlist(tiny_overrides(tmp))))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    assert main(["prepare", "--config", str(config)]) == 0
    shards = tmp / "data" / "shards"
    manifest = json.loads((shards / "manifest.json").read_text())
    return {"tmp": tmp, "config": config, "shards": shards, "manifest": manifest}


def _submit(cluster, script: Path, log: Path, sbatch_args=(), env=None, script_args=()) -> str:
    log.parent.mkdir(parents=True, exist_ok=True)
    args = [
        f"--chdir={REPO}",
        f"--output={log}",
        "--cpus-per-task=1",
        "--time=4",
        # the emulation needs MASTER_ADDR (both "nodes" are 127.0.0.1); a free MASTER_PORT keeps
        # two clusters on one host (job ids 1, 2, ... each) from colliding
        f"--export=ALL,MASTER_ADDR=127.0.0.1,MASTER_PORT={cluster.free_port()},ACCELERATOR=cpu",
        *sbatch_args,
    ]
    return cluster.sbatch(script, args, env=_job_env(env), script_args=list(script_args), cwd=REPO)


def _submit_train(cluster, tiny, run_dir: Path, nodes: int, tasks_per_node: int, overrides=(), env=None):
    log = run_dir.parent / f"{run_dir.name}-slurm.out"
    job = _submit(cluster, TRAIN, log, [f"--nodes={nodes}", f"--ntasks-per-node={tasks_per_node}"],
                  {"CONFIG": str(tiny["config"]), "RUN_DIR": str(run_dir), **(env or {})}, overrides)
    return job, log


@pytest.fixture(scope="module")
def trained_2x2(slurm_cluster, tiny, tmp_path_factory):
    """One 2-node x 2-task training job with slurm/train_multinode.sh (shared by two tests)."""
    run_dir = tmp_path_factory.mktemp("train2x2") / "run"
    t0 = time.monotonic()
    job, log = _submit_train(slurm_cluster, tiny, run_dir, 2, 2,
                             [f"trainer.max_steps={MAX_STEPS}", f"data.loader.steps_per_epoch={STEPS_PER_EPOCH}",
                              "trainer.max_epochs=10"])
    info = _wait(slurm_cluster, job, log)
    return {"job": job, "info": info, "run_dir": run_dir, "log": log, "seconds": time.monotonic() - t0}


def test_two_nodes_two_tasks_world_size_4(trained_2x2, tiny):
    info, run_dir, log = trained_2x2["info"], trained_2x2["run_dir"], trained_2x2["log"]
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", _log(log)
    assert info["NodeList"] == "n[1-2]", info
    summary = json.loads((run_dir / "test_metrics.json").read_text())
    assert summary["world_size"] == 4 and summary["num_nodes"] == 2, summary
    assert summary["cluster_environment"] == "SLURMEnvironment" and summary["strategy"] == "DDPStrategy", summary
    assert summary["global_step"] == MAX_STEPS
    # every test user counted exactly once over the 4 ranks, metrics of the best checkpoint
    assert summary["test"]["test/count"] == tiny["manifest"]["num_users"], summary
    assert 0.0 <= summary["test"]["test/ndcg@10"] <= 1.0
    assert Path(summary["best_checkpoint"]).is_file()
    assert logged_train_steps(run_dir) == [list(range(MAX_STEPS))]  # one launch, every step once
    text = log.read_text()
    assert "Initializing distributed: GLOBAL_RANK: 3, MEMBER: 4/4" in text, text[-3000:]
    print(f"2x2 job {trained_2x2['job']}: {trained_2x2['seconds']:.1f}s from sbatch to COMPLETED")


def test_evaluate_checkpoint(slurm_cluster, tiny, trained_2x2, tmp_path):
    """slurm/evaluate.sh on 2 tasks reproduces fit's test metrics of the same (best) checkpoint."""
    summary = json.loads((trained_2x2["run_dir"] / "test_metrics.json").read_text())
    out, log = tmp_path / "eval.json", tmp_path / "eval-slurm.out"
    job = _submit(slurm_cluster, EVALUATE, log, ["--nodes=1", "--ntasks-per-node=2"],
                  {"CONFIG": str(tiny["config"]), "CKPT": summary["best_checkpoint"],
                   "RUN_DIR": str(tmp_path / "eval")},
                  ["--out", str(out)])
    info = _wait(slurm_cluster, job, log)
    assert info["JobState"] == "COMPLETED", _log(log)
    metrics = json.loads(out.read_text())
    assert metrics.keys() == summary["test"].keys()
    for k, v in summary["test"].items():
        assert metrics[k] == pytest.approx(v, abs=1e-6), k


def test_mismatched_devices_fail_fast(slurm_cluster, tiny, tmp_path):
    # --ntasks-per-node=2 but trainer.devices=1 (strategy auto): Lightning would pick a single-device
    # strategy and let both tasks train the whole run on their own; check_slurm_layout refuses it
    run_dir = tmp_path / "run"
    t0 = time.monotonic()
    job, log = _submit_train(slurm_cluster, tiny, run_dir, 1, 2, [f"trainer.max_steps={MAX_STEPS}"],
                             {"DEVICES": "1"})
    info = _wait(slurm_cluster, job, log, timeout=120)
    elapsed = time.monotonic() - t0
    text = log.read_text()
    assert info["JobState"] == "FAILED" and info["ExitCode"] != "0:0", text[-3000:]
    assert "ValueError" in text and "does not match" in text, text[-3000:]
    assert "HINT: set trainer.devices=2 trainer.num_nodes=1" in text, text[-3000:]
    assert elapsed < 120, f"took {elapsed:.0f}s: not fast (time limit is 4 min)"
    print(f"mismatch: FAILED after {elapsed:.1f}s")
    assert not run_dir.exists() or not any(run_dir.iterdir()), sorted(run_dir.iterdir())


def test_sigusr1_checkpoints_requeues_and_resumes(slurm_cluster, tiny, tmp_path):
    """Preemption: SIGUSR1 to the tasks -> at the next step boundary every rank saves hpc_ckpt_1.ckpt
    in the stable run dir and rank 0 runs `scontrol requeue` (strategies.RequeueOnSignal); the same
    job id restarts (SLURM_RESTART_COUNT=1) and fit resumes there: the global step continues, no
    step runs twice, same W&B run."""
    steps_per_epoch, max_steps = STEPS_PER_EPOCH, 16
    run_dir = tmp_path / "run"
    job, log = _submit_train(slurm_cluster, tiny, run_dir, 2, 2,
                             [f"trainer.max_steps={max_steps}", f"data.loader.steps_per_epoch={steps_per_epoch}",
                              "trainer.max_epochs=100",
                              "data.loader.num_workers=1"])  # workers ignore SIGUSR1 (datamodule)
    # signal mid-training: once the first epoch's validation wrote checkpoints/last.ckpt (step 4);
    # the hpc checkpoint, saved before the next step, is then the newest one
    deadline = time.monotonic() + JOB_TIMEOUT
    while not (run_dir / "checkpoints" / "last.ckpt").is_file():
        if time.monotonic() > deadline or slurm_cluster.job_info(job).get("JobState") not in ("PENDING", "RUNNING"):
            slurm_cluster.scancel(job)
            pytest.fail(f"training did not reach the end of epoch 0\n{_log(log)}")
        time.sleep(0.1)
    time.sleep(0.3)
    # default scancel --signal: every process of every step (the srun'd python processes and their
    # DataLoader workers), not the batch shell -- the same target as `#SBATCH --signal=SIGUSR1@90`
    slurm_cluster.signal(job, "USR1")
    # requeued: back to PENDING with Restarts=1. Requeued jobs get BeginTime = now + ~2 min in
    # slurm 22.05; make it eligible now so the test does not wait for it.
    try:
        slurm_cluster.wait_for(job, lambda i: int(i.get("Restarts", 0)) >= 1 and i["JobState"] == "PENDING",
                               timeout=90)
    except Exception as e:
        _dump_and_cancel(slurm_cluster, job)
        pytest.fail(f"job was not requeued: {e}\n{_log(log, 300)}")
    slurm_cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now", check=False)
    info = _wait(slurm_cluster, job, log)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", text[-3000:]
    assert f"job={job} restart=0" in text and f"job={job} restart=1" in text  # --open-mode=append
    # no process died of SIGUSR1 (DataLoader workers ignore it: train.py's worker_init_fn). The first
    # launch's tail does show SIGTERM noise: SLURM terminates the requeued job while it exits
    assert "User defined signal 1" not in text and "killed by signal: User" not in text, text[-3000:]

    # the checkpoint the signal handler wrote, in the stable run dir; the requeued run restored it
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    assert hpc.is_file(), sorted(p.name for p in run_dir.iterdir())
    k = torch.load(hpc, map_location="cpu", weights_only=True)["global_step"]
    assert steps_per_epoch <= k < max_steps, k
    assert f"requeue signal received: saving {hpc} at global step {k}" in text, text[-3000:]
    assert f"requeueing SLURM job {job}; it resumes from {hpc}" in text  # logged before scontrol's kill
    # the requeued run restored the hpc checkpoint -- or, when step k ended an epoch, the last.ckpt that
    # the epoch's validation wrote after it, at the same step
    restored = re.search(r"Restoring states from the checkpoint path at (\S+)", text.split(f"restart=1")[1])
    assert restored, text[-3000:]
    restored = Path(restored.group(1))
    assert restored == hpc or (restored == run_dir / "checkpoints" / "last.ckpt" and k % steps_per_epoch == 0), restored
    if restored == hpc:  # (last.ckpt has been overwritten by the second launch's later epochs)
        assert torch.load(restored, map_location="cpu", weights_only=True)["global_step"] == k

    # CSV logs of the two launches: the first ran steps 0..k-1 and stopped at its checkpoint, the
    # second starts at step k and runs to the end: every step exactly once
    first, second = logged_train_steps(run_dir)
    assert first == list(range(k)), first
    assert second == list(range(k, max_steps)), second
    summary = json.loads((run_dir / "test_metrics.json").read_text())
    assert summary["global_step"] == max_steps and summary["world_size"] == 4
    assert summary["test"]["test/count"] == tiny["manifest"]["num_users"]

    # the same W&B run (offline) across the requeue: one stored id, two offline runs with it
    run_id = (run_dir / "wandb_run_id.txt").read_text().strip()
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(p.name.endswith(f"-{run_id}") for p in offline), offline
    print(f"preemption: hpc checkpoint at step {k}")


# -- data preparation: plan -> array of buckets -> finalize ------------------------------------
def _submit_prepare(cluster, tiny, out: Path, sbatch_args, script_args=(), overrides=()) -> str:
    return cluster.sbatch(PREPARE, [f"--chdir={REPO}", "--cpus-per-task=1", "--mem=500M", "--time=4",
                                    f"--output={out}/slurm-%A_%a.out", *sbatch_args],
                          env=_job_env({"CONFIG": str(tiny["config"])}),
                          script_args=[*script_args, f"data.prepare.output_dir={out}/shards", *overrides], cwd=REPO)


def _chain(cluster, tiny, out: Path, array: str, overrides=()):
    out.mkdir(parents=True, exist_ok=True)
    plan = _submit_prepare(cluster, tiny, out, [], ["plan"], overrides)
    after = ["--kill-on-invalid-dep=yes"]
    arr = _submit_prepare(cluster, tiny, out, [f"--array={array}", f"--dependency=afterok:{plan}", *after], (),
                          overrides)
    fin = _submit_prepare(cluster, tiny, out, [f"--dependency=afterok:{arr}", *after], ["finalize"], overrides)
    return plan, arr, fin


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_prepare_chain_matches_local_prepare(slurm_cluster, tiny, tmp_path):
    out = tmp_path / "prep"
    buckets = tiny["manifest"]["prepare_config"]["num_buckets"]
    plan, arr, fin = _chain(slurm_cluster, tiny, out, f"0-{buckets - 1}")
    info = _wait(slurm_cluster, fin, out)
    assert info["JobState"] == "COMPLETED", _log(out)
    assert slurm_cluster.job_info(plan)["JobState"] == "COMPLETED"
    tasks = slurm_cluster.wait_array(arr, timeout=10)
    assert sorted((int(t["ArrayTaskId"]), t["JobState"]) for t in tasks) == [(i, "COMPLETED") for i in range(buckets)]
    shards = out / "shards"
    manifest = json.loads((shards / "manifest.json").read_text())
    local = tiny["manifest"]
    # byte-identical to the local `elastic-pl prepare` of the same config: sha256 per shard in both
    # manifests, and of the files themselves
    assert manifest["shards"] == local["shards"] and len(manifest["shards"]) >= buckets
    for s in manifest["shards"]:
        assert _sha256(shards / s["name"]) == s["sha256"] == _sha256(tiny["shards"] / s["name"])
    for name in ("item_map.parquet", "user_map.parquet"):
        assert _sha256(shards / name) == _sha256(tiny["shards"] / name), name
    for key in ("num_users", "num_items", "num_events", "fingerprint"):
        assert manifest[key] == local[key], key
    assert not (shards / "_work").exists()


def test_prepare_failed_bucket_cancels_finalize(slurm_cluster, tiny, tmp_path):
    """An array range that does not match the config (one id too many): that task fails, so
    finalize is cancelled (afterok + --kill-on-invalid-dep) and no manifest is written."""
    out = tmp_path / "prep"
    buckets = tiny["manifest"]["prepare_config"]["num_buckets"]
    plan, arr, fin = _chain(slurm_cluster, tiny, out, f"0-{buckets}")
    tasks = slurm_cluster.wait_array(arr, timeout=JOB_TIMEOUT)
    states = sorted((int(t["ArrayTaskId"]), t["JobState"]) for t in tasks)
    assert states == [*((i, "COMPLETED") for i in range(buckets)), (buckets, "FAILED")], _log(out)
    info = _wait(slurm_cluster, fin, out, timeout=60)
    assert info["JobState"] == "CANCELLED", info
    assert "Dependency" in info.get("Reason", ""), info
    assert not (out / "shards" / "manifest.json").exists()
    assert re.search(rf"bucket {buckets} not in 0\.\.{buckets - 1}", _log(out)), _log(out)


def test_free_ports_avoid_the_ephemeral_range():
    """The rendezvous and daemon ports are drawn below the kernel's ephemeral range, so an outgoing
    connection of slurmd or srun cannot take one between the draw and the listen (EADDRINUSE)."""
    from tests.conftest import _load_slurm_cluster_module

    mod = _load_slurm_cluster_module()
    ports = mod._free_ports(20)
    assert len(set(ports)) == 20
    assert all(20000 <= p < mod._ephemeral_low() for p in ports)
