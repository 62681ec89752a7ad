"""The SLURM launchers (slurm/*.sh) on a real two-node SLURM cluster on this host.

The scripts are the ones users submit; only the payload differs: ELASTIC_PL_ENTRY /
PREPARE_ENTRY point at stand-ins in tests/slurm_payloads/ with the same command-line
contract as ``python -m elastic_pl`` / ``python -m data_pipeline.prepare``.
CPU + gloo through ACCELERATOR=cpu; MASTER_ADDR=127.0.0.1 because both emulated nodes are
this host (Lightning would otherwise resolve the node name "n1").
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
PAYLOADS = REPO / "tests" / "slurm_payloads"
TRAIN = REPO / "slurm" / "train_multinode.sh"
EVALUATE = REPO / "slurm" / "evaluate.sh"
PREPARE = REPO / "slurm" / "prepare_array.sh"
TOY_ENTRY = f"{sys.executable} {PAYLOADS / 'toy_train.py'}"
PREP_ENTRY = f"{sys.executable} {PAYLOADS / 'toy_prepare.py'}"
MAX_STEPS = 12
JOB_TIMEOUT = 150  # s; the jobs' own --time is 4 min, so a hang is caught here first


def _log(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"<no log at {path}>"


def _wait(cluster, job: str, log: Path, timeout: float = JOB_TIMEOUT) -> dict:
    try:
        return cluster.wait(job, timeout)
    except Exception as e:
        cluster.scancel(job)
        pytest.fail(f"{e}\n--- job log {log} ---\n{_log(log)}")


def _submit(cluster, script: Path, run_dir: Path, sbatch_args=(), env=None, script_args=()) -> tuple[str, Path]:
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "slurm.out"
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
    full_env = {"PYTHON": sys.executable, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", **(env or {})}
    job = cluster.sbatch(script, args, env=full_env, script_args=list(script_args), cwd=REPO)
    return job, log


def _submit_train(cluster, run_dir: Path, nodes: int, tasks_per_node: int, overrides=(), env=None):
    env = {"CONFIG": str(PAYLOADS / "toy.yaml"), "RUN_DIR": str(run_dir), "ELASTIC_PL_ENTRY": TOY_ENTRY,
           **(env or {})}
    return _submit(cluster, TRAIN, run_dir, [f"--nodes={nodes}", f"--ntasks-per-node={tasks_per_node}"],
                   env, overrides)


def _steps(run_dir: Path, rank: int) -> list[tuple[int, int]]:
    f = run_dir / "steps" / f"rank{rank}.txt"
    if not f.exists():
        return []
    return [tuple(map(int, line.split())) for line in f.read_text().splitlines() if line.strip()]


def _ranks(run_dir: Path, restart: int) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted((run_dir / "ranks").glob(f"restart{restart}_rank*.json"))]


@pytest.fixture(scope="module")
def trained_2x2(slurm_cluster, tmp_path_factory):
    """One 2-node x 2-task training job with the real train_multinode.sh (shared by two tests)."""
    run_dir = tmp_path_factory.mktemp("train2x2") / "run"
    t0 = time.monotonic()
    job, log = _submit_train(slurm_cluster, run_dir, 2, 2,
                             [f"trainer.max_steps={MAX_STEPS}", "toy.step_sleep=0.02", "toy.save_final=true"])
    info = _wait(slurm_cluster, job, log)
    return {"job": job, "info": info, "run_dir": run_dir, "log": log, "seconds": time.monotonic() - t0}


def test_two_nodes_two_tasks_world_size_4(trained_2x2):
    info, run_dir, log = trained_2x2["info"], trained_2x2["run_dir"], trained_2x2["log"]
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", _log(log)
    ranks = _ranks(run_dir, 0)
    assert len(ranks) == 4, _log(log)
    assert sorted(r["global_rank"] for r in ranks) == [0, 1, 2, 3]
    for r in ranks:
        assert r["world_size"] == 4 and r["num_nodes"] == 2 and r["devices"] == 2
        assert r["cluster_environment"] == "SLURMEnvironment"
        assert r["SLURM_JOB_ID"] == trained_2x2["job"]
        assert int(r["SLURM_PROCID"]) == r["global_rank"]
        assert int(r["SLURM_NODEID"]) == r["node_rank"] and int(r["SLURM_LOCALID"]) == r["local_rank"]
    # two tasks on each emulated node, node rank i on node n(i+1)
    by_node = {}
    for r in ranks:
        by_node.setdefault(r["SLURMD_NODENAME"], []).append(r["local_rank"])
    assert {k: sorted(v) for k, v in by_node.items()} == {"n1": [0, 1], "n2": [0, 1]}
    result = json.loads((run_dir / "result.json").read_text())
    assert result == {"global_step": MAX_STEPS, "world_size": 4, "restart": 0, "job_id": trained_2x2["job"]}
    for g in range(4):  # every rank ran every step exactly once
        assert _steps(run_dir, g) == [(0, s) for s in range(MAX_STEPS)]
    print(f"2x2 job {trained_2x2['job']}: {trained_2x2['seconds']:.1f}s from sbatch to COMPLETED")


def test_evaluate_checkpoint(slurm_cluster, trained_2x2, tmp_path):
    ckpt = trained_2x2["run_dir"] / "final.ckpt"
    assert ckpt.exists(), _log(trained_2x2["log"])
    out = tmp_path / "eval"
    job, log = _submit(slurm_cluster, EVALUATE, out, ["--nodes=1", "--ntasks-per-node=2"],
                       {"CONFIG": str(PAYLOADS / "toy.yaml"), "CKPT": str(ckpt), "RUN_DIR": str(out),
                        "ELASTIC_PL_ENTRY": TOY_ENTRY})
    info = _wait(slurm_cluster, job, log)
    assert info["JobState"] == "COMPLETED", _log(log)
    ev = json.loads((out / "eval.json").read_text())
    assert ev["world_size"] == 2 and ev["ckpt_global_step"] == MAX_STEPS and ev["job_id"] == job
    per_rank = [json.loads((out / f"eval_rank{g}.json").read_text()) for g in range(2)]
    assert sum(r["samples"] for r in per_rank) == 64  # the toy validation set, split over 2 ranks


def test_mismatched_devices_fail_fast(slurm_cluster, tmp_path):
    # --ntasks-per-node=2 but trainer.devices=1: Lightning's SLURMEnvironment raises a ValueError
    run_dir = tmp_path / "run"
    t0 = time.monotonic()
    job, log = _submit_train(slurm_cluster, run_dir, 1, 2, [f"trainer.max_steps={MAX_STEPS}"], {"DEVICES": "1"})
    info = _wait(slurm_cluster, job, log, timeout=90)
    elapsed = time.monotonic() - t0
    text = log.read_text()
    assert info["JobState"] == "FAILED" and info["ExitCode"] != "0:0", text[-3000:]
    assert "ValueError" in text and "does not match" in text, text[-3000:]
    assert "HINT: Set `devices=2`" in text
    assert elapsed < 60, f"took {elapsed:.0f}s: not fast (time limit is 4 min)"
    assert not (run_dir / "ranks").exists() or not list((run_dir / "ranks").iterdir())


def test_sigusr1_checkpoints_requeues_and_resumes(slurm_cluster, tmp_path):
    """Preemption: SIGUSR1 to the tasks -> Lightning saves hpc_ckpt_1.ckpt in the stable run dir and
    runs `scontrol requeue`; the same job id restarts (SLURM_RESTART_COUNT=1) and resumes there."""
    max_steps, signal_after = 30, 5
    run_dir = tmp_path / "run"
    job, log = _submit_train(slurm_cluster, run_dir, 2, 2,
                             [f"trainer.max_steps={max_steps}", "toy.step_sleep=0.15"])
    deadline = time.monotonic() + JOB_TIMEOUT
    while len(_steps(run_dir, 0)) < signal_after:
        if time.monotonic() > deadline or slurm_cluster.job_info(job).get("JobState") not in ("PENDING", "RUNNING"):
            slurm_cluster.scancel(job)
            pytest.fail(f"training did not reach step {signal_after}\n{_log(log)}")
        time.sleep(0.1)
    # default scancel --signal: every task of every step (the srun'd python processes), not the
    # batch shell -- the same target as `#SBATCH --signal=SIGUSR1@90`
    slurm_cluster.signal(job, "USR1")
    # requeued: back to PENDING with Restarts=1. Requeued jobs get BeginTime = now + ~2 min in
    # slurm 22.05 (seen here); make it eligible now so the test does not wait for it.
    try:
        slurm_cluster.wait_for(job, lambda i: int(i.get("Restarts", 0)) >= 1 and i["JobState"] == "PENDING",
                               timeout=60)
    except Exception as e:
        slurm_cluster.scancel(job)
        pytest.fail(f"job was not requeued: {e}\n{_log(log)}")
    slurm_cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now", check=False)
    info = _wait(slurm_cluster, job, log)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", text[-3000:]

    # the checkpoint the signal handler wrote, in the stable run dir
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    assert hpc.exists(), sorted(p.name for p in run_dir.iterdir())
    k = torch.load(hpc, map_location="cpu", weights_only=False)["global_step"]
    events = [json.loads(x) for x in (run_dir / "save_events.jsonl").read_text().splitlines()]
    assert events == [{"restart": 0, "global_step": k, "time": events[0]["time"]}]
    assert signal_after <= k < max_steps

    # both runs of the job append to the same log (--open-mode=append)
    assert f"job={job} restart=0" in text and f"job={job} restart=1" in text
    assert f"Restoring states from the checkpoint path at {hpc}" in text

    # the requeued run resumed at step k on every rank; no completed step is redone
    restarted = _ranks(run_dir, 1)
    assert len(restarted) == 4 and {r["start_step"] for r in restarted} == {k}
    assert {r["SLURM_JOB_ID"] for r in restarted} == {job}
    for g in range(4):
        steps = _steps(run_dir, g)
        first = [s for r, s in steps if r == 0]
        second = [s for r, s in steps if r == 1]
        assert first[:k] == list(range(k)), (g, first)
        assert second == list(range(k, max_steps)), (g, second)
        # steps the preempted run completed after its checkpoint are lost work (the kill lands
        # within KillWait); they are never part of the resumed trajectory
        wasted = first[k:]
        assert wasted == list(range(k, k + len(wasted))), (g, first)
    assert json.loads((run_dir / "result.json").read_text())["global_step"] == max_steps


def _submit_prepare(cluster, out: Path, sbatch_args, overrides=(), script_args=()):
    env = {"CONFIG": str(PAYLOADS / "toy_prepare.yaml"), "PREPARE_ENTRY": PREP_ENTRY}
    args = [f"--output={out}/slurm-%A_%a.out", *sbatch_args]
    out.mkdir(parents=True, exist_ok=True)
    return cluster.sbatch(PREPARE, [f"--chdir={REPO}", "--cpus-per-task=1", "--mem=100M", "--time=4", *args],
                          env={"PYTHON": sys.executable, **env},
                          script_args=[*script_args, f"out_dir={out}", *overrides], cwd=REPO)


def test_prepare_array_then_finalize_afterok(slurm_cluster, tmp_path):
    out = tmp_path / "prep"
    array = _submit_prepare(slurm_cluster, out, ["--array=0-3"])
    fin = _submit_prepare(slurm_cluster, out, [f"--dependency=afterok:{array}", "--kill-on-invalid-dep=yes"],
                          script_args=["finalize"])
    info = _wait(slurm_cluster, fin, out / "slurm-x.out", timeout=90)
    logs = "\n".join(_log(p) for p in sorted(out.glob("slurm-*.out")))
    assert info["JobState"] == "COMPLETED", logs
    tasks = slurm_cluster.wait_array(array, timeout=10)
    assert sorted((int(t["ArrayTaskId"]), t["JobState"]) for t in tasks) == [(i, "COMPLETED") for i in range(4)]
    final = json.loads((out / "final.json").read_text())
    assert final["events"] == list(range(100))
    assert sorted(int(b["array_task"]) for b in final["buckets"]) == [0, 1, 2, 3]
    assert all(b["time"] < final["time"] for b in final["buckets"])
    # same result as running the same command locally, bucket by bucket
    local = tmp_path / "local"
    for cmd in [*(["--bucket", str(i)] for i in range(4)), ["--finalize"]]:
        subprocess.run([*PREP_ENTRY.split(), "--config", str(PAYLOADS / "toy_prepare.yaml"), *cmd,
                        f"out_dir={local}", "sleep=0"], check=True, cwd=REPO)
    assert json.loads((local / "final.json").read_text())["events"] == final["events"]


def test_prepare_failed_bucket_cancels_finalize(slurm_cluster, tmp_path):
    out = tmp_path / "prep"
    array = _submit_prepare(slurm_cluster, out, ["--array=0-3"], ["fail_bucket=1", "sleep=0"])
    fin = _submit_prepare(slurm_cluster, out, [f"--dependency=afterok:{array}", "--kill-on-invalid-dep=yes"],
                          script_args=["finalize"])
    tasks = slurm_cluster.wait_array(array, timeout=90)
    assert sorted((int(t["ArrayTaskId"]), t["JobState"]) for t in tasks) == [
        (0, "COMPLETED"), (1, "FAILED"), (2, "COMPLETED"), (3, "COMPLETED")]
    info = _wait(slurm_cluster, fin, out / "slurm-x.out", timeout=30)
    assert info["JobState"] == "CANCELLED", info
    assert "Dependency" in info.get("Reason", ""), info
    assert not (out / "final.json").exists()
    assert sorted(p.name for p in out.glob("bucket-*.json")) == ["bucket-0.json", "bucket-2.json", "bucket-3.json"]
