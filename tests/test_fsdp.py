"""Sharded training through the real entry point: ``trainer.strategy=fsdp2`` (FSDP2 ``fully_shard``
via Lightning's ModelParallelStrategy) on 2 CPU processes (gloo), a sharded (distributed)
checkpoint, resume from it, and evaluation of a sharded checkpoint in one process. The GPU
strategy ``fsdp`` (FSDPStrategy) runs the same scenario when CUDA is there.

``python -m elastic_pl train`` runs as a subprocess so that Lightning's launcher starts the ranks.
"""
from __future__ import annotations

import json
from types import SimpleNamespace
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from elastic_pl.cli import _checkpoint, main
from elastic_pl.config import ConfigError
from elastic_pl.train import latest_checkpoint
from tests.pipeline_config import logged_train_steps, tiny_overrides

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    assert main(["prepare", *tiny_overrides(tmp)]) == 0
    return tmp


def _train(tmp: Path, run: Path, *extra: str) -> str:
    cmd = [sys.executable, "-m", "elastic_pl", "train", *tiny_overrides(tmp), f"run.dir={run}",
           "data.loader.steps_per_epoch=4", "trainer.max_epochs=10", *extra]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _sharded_train_resume_evaluate(data: Path, tmp_path: Path, strategy: str, *extra: str) -> None:
    run = tmp_path / "run"
    args = [f"trainer.strategy={strategy}", "trainer.devices=2", *extra]
    _train(data, run, *args, "trainer.max_steps=3")
    last = run / "checkpoints" / "last.ckpt"
    # a distributed checkpoint: a directory with one shard file per rank and rank 0's metadata
    assert last.is_dir() and (last / "meta.pt").is_file(), sorted(p.name for p in run.rglob("*"))
    assert len(list(last.glob("*.distcp"))) == 2
    assert latest_checkpoint(run) == last
    assert torch.load(last / "meta.pt", map_location="cpu", weights_only=True)["global_step"] == 3

    out = _train(data, run, *args, "trainer.max_steps=6", "run.on_config_change=allow")  # extended: 3 -> 6 steps
    assert f"Restoring states from the checkpoint path at {last}" in out, out[-4000:]
    assert logged_train_steps(run) == [[0, 1, 2], [3, 4, 5]]  # the global step continues, nothing repeated
    summary = json.loads((run / "test_metrics.json").read_text())
    assert summary["global_step"] == 6 and summary["world_size"] == 2, summary
    assert summary["test"]["test/count"] == 120  # every test user once over the 2 ranks
    best = Path(summary["best_checkpoint"])
    assert best.is_dir() and (best / "meta.pt").is_file(), summary

    # evaluate the sharded best checkpoint in ONE process (consolidated in CPU memory): the same
    # metrics fit's test computed with the model sharded over 2 ranks
    metrics_file = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(best), "--out", str(metrics_file), *tiny_overrides(data),
                 "trainer.accelerator=cpu", "wandb.enabled=false", f"run.dir={tmp_path}/eval"]) == 0
    metrics = json.loads(metrics_file.read_text())
    for k, v in summary["test"].items():
        assert metrics[k] == pytest.approx(v, abs=1e-5), k

    # an incomplete sharded checkpoint (no meta.pt: the save did not finish) is refused clearly,
    # and never picked for resuming
    broken = run / "checkpoints" / "last-v1.ckpt"
    broken.mkdir()
    (broken / "__0_0.distcp").write_bytes(b"")
    assert latest_checkpoint(run) == last
    assert main(["evaluate", "--checkpoint", str(broken), *tiny_overrides(data)]) == 2  # a message, exit 2
    with pytest.raises(ConfigError, match="not a complete sharded"):
        _checkpoint(SimpleNamespace(command="evaluate", checkpoint=str(broken)))


def test_fsdp2_cpu_sharded_checkpoint_resume_and_evaluate(data, tmp_path):
    _sharded_train_resume_evaluate(data, tmp_path, "fsdp2", "trainer.accelerator=cpu")


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (FSDPStrategy is GPU only here)")
@pytest.mark.parametrize("strategy", ["fsdp", "fsdp2"])
def test_fsdp_gpu_sharded_checkpoint_resume_and_evaluate(data, tmp_path, strategy):
    _sharded_train_resume_evaluate(data, tmp_path, strategy, "trainer.accelerator=gpu")


FSDP2_UNITS = r"""
import os, sys, torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from tests.test_registry import small
from elastic_pl.model import SequentialRecommender
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1")
dist.init_process_group("gloo")
mesh = init_device_mesh("cpu", (1,))
torch.manual_seed(0)
model = SequentialRecommender(small(sys.argv[1], n_layers=2))
for unit in model.wrap_units():  # as ElasticLightningModule.configure_model does
    fully_shard(unit, mesh=mesh)
fully_shard(model, mesh=mesh, reshard_after_forward=False)
for n in (3, 40):  # ELASTIC: the short-sequence path (no chunk has history) and the chunked one
    items = torch.randint(1, 31, (2, n + 1))
    model.loss(model(items[:, :-1]), items[:, 1:]).backward()
    assert all(p.grad is not None for p in model.parameters()), n
dist.destroy_process_group()
print("OK")
"""


@pytest.mark.parametrize("encoder", ["elastic", "sasrec", "hstu", "gru4rec", "tests.custom_encoder:CausalMeanEncoder"])
def test_fsdp2_shards_each_encoders_declared_units(encoder):
    """FSDP2 on the units an encoder declares, one process: every parameter gets its gradient at
    any length. ELASTIC's interest memories are units of their own, reached even on batches too
    short to read them."""
    import socket

    with socket.socket() as s:  # a free port for the one-process group
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    proc = subprocess.run([sys.executable, "-c", FSDP2_UNITS, encoder, port], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
