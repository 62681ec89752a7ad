"""No hang: with ``trainer.dist_timeout_minutes`` a rank that stops answering (here SIGSTOP, as a
hung GPU or a frozen node would) makes the others fail within that timeout instead of waiting
in a collective until the job's time limit (torch's default process-group timeout is 30 min)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from elastic_pl.cli import main
from tests.pipeline_config import tiny_overrides

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 20  # also bounds the start-up rendezvous: rank 1 must import and build its data first


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # field 4 of /proc/<pid>/stat: the parent
            out.append(int(stat.parent.name))
    return out


def _wait_for(predicate, seconds: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what} (exit code {proc.poll()})\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
def test_a_stopped_rank_fails_the_run_within_the_timeout(tmp_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    overrides = tiny_overrides(tmp_path, "wandb.enabled=false")
    assert main(["prepare", *overrides]) == 0
    log = tmp_path / "train.log"
    cmd = [sys.executable, "-m", "elastic_pl", "train", *overrides, f"run.dir={tmp_path}/run",
           "trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "trainer.max_epochs=100000",
           f"trainer.dist_timeout_minutes={TIMEOUT_S / 60}"]
    env = {**os.environ, "WANDB_MODE": "offline", "ELASTIC_PL_RUN_KEY": str(tmp_path / "run-key")}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    stopped = []
    try:
        # training has started on both ranks once rank 0 prints the model summary
        _wait_for(lambda: "Trainable params" in log.read_text(), 120, "training did not start", proc, log)
        time.sleep(2)
        stopped = _children(proc.pid)  # rank 1 (Lightning's launcher starts it as a child of rank 0)
        assert stopped, "no second rank found"
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            rc = proc.wait(timeout=TIMEOUT_S + 40)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rank 0 still waiting {TIMEOUT_S + 40}s after rank 1 stopped\n{log.read_text()[-3000:]}")
        elapsed = time.monotonic() - t0
        text = log.read_text()
        assert rc != 0, text[-3000:]
        assert "timed out" in text.lower() or "timeout" in text.lower(), text[-3000:]
        print(f"rank 0 exited {elapsed:.1f}s after rank 1 stopped (timeout {TIMEOUT_S}s)")
    finally:
        for pid in stopped:  # the processes this test started and stopped
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
