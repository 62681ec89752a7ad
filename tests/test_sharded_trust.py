"""Sharded (fsdp2, 2 CPU ranks) checkpoints: read where elastic-pl made them, refused elsewhere unless
--trust-checkpoint, never through general pickle; ``consolidate`` makes one weights_only file.

Torch's own reader unpickles ``DIR/.metadata`` (and Lightning's consolidation loads ``meta.pt``
without weights_only): a planted payload there must never run, whatever the flags."""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from elastic_pl.checkpoint import consolidate
from elastic_pl.cli import main
from elastic_pl.errors import CheckpointError
from elastic_pl.sharded_checkpoint import _WeightsOnlyPlanner
from tests.checkpoint_fixtures import Payload, plant
from tests.pipeline_config import tiny_overrides

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A 4-step fsdp2 run on 2 gloo ranks: its run directory and sharded ``last.ckpt``."""
    tmp = tmp_path_factory.mktemp("sharded")
    key = os.environ.get("ELASTIC_PL_RUN_KEY")
    os.environ["ELASTIC_PL_RUN_KEY"] = str(tmp / "run-key")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    overrides = tiny_overrides(tmp, "wandb.enabled=false")
    assert main(["prepare", *overrides]) == 0
    run = tmp / "run"
    cmd = [sys.executable, "-m", "elastic_pl", "train", *overrides, f"run.dir={run}", "trainer.strategy=fsdp2",
           "trainer.devices=2", "trainer.accelerator=cpu", "trainer.max_steps=4"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_dir() and (last / ".metadata").is_file()
    yield {"tmp": tmp, "run": run, "last": last, "overrides": overrides}
    if key is None:
        os.environ.pop("ELASTIC_PL_RUN_KEY")
    else:
        os.environ["ELASTIC_PL_RUN_KEY"] = key


def _evaluate(sharded, checkpoint: Path, out: Path, *flags: str) -> int:
    return main(["evaluate", "--checkpoint", str(checkpoint), "--out", str(out), *flags, *sharded["overrides"],
                 f"run.dir={out.parent / 'eval'}"])


def test_own_run_is_read_a_copy_elsewhere_only_with_trust(sharded, tmp_path, capsys):
    own = tmp_path / "own.json"
    assert _evaluate(sharded, sharded["last"], own) == 0  # in the run directory fit created: trusted
    foreign = tmp_path / "downloaded" / "last.ckpt"
    shutil.copytree(sharded["last"], foreign)
    assert _evaluate(sharded, foreign, tmp_path / "refused.json") == 2
    err = capsys.readouterr().err
    assert "elastic-pl consolidate --checkpoint" in err and "--trust-checkpoint" in err, err
    assert not (tmp_path / "refused.json").exists()
    assert _evaluate(sharded, foreign, tmp_path / "trusted.json", "--trust-checkpoint") == 0
    assert json.loads((tmp_path / "trusted.json").read_text()) == json.loads(own.read_text())


def test_a_run_directory_marked_under_another_key_is_not_trusted(sharded, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "run"
    shutil.copytree(sharded["run"], copy)  # config.yaml and run_marker.json come along
    assert _evaluate(sharded, copy / "checkpoints" / "last.ckpt", tmp_path / "a.json") == 0
    monkeypatch.setenv("ELASTIC_PL_RUN_KEY", str(tmp_path / "someone-elses-key"))
    assert _evaluate(sharded, copy / "checkpoints" / "last.ckpt", tmp_path / "b.json") == 2
    assert "elastic-pl consolidate" in capsys.readouterr().err


def test_consolidate_round_trip(sharded, tmp_path):
    from lightning.fabric.utilities.load import _load_distributed_checkpoint

    src = tmp_path / "downloaded" / "last.ckpt"  # anywhere: consolidation needs no trust
    shutil.copytree(sharded["last"], src)
    assert main(["consolidate", "--checkpoint", str(src)]) == 0
    single = src.parent / "consolidated" / "last.ckpt"
    ckpt = torch.load(single, map_location="cpu", weights_only=True)
    reference = _load_distributed_checkpoint(sharded["last"])  # Lightning's own reader (our file: safe)
    assert ckpt["state_dict"].keys() == reference["state_dict"].keys()
    for k, v in reference["state_dict"].items():
        assert torch.equal(ckpt["state_dict"][k], v), k
    assert ckpt["global_step"] == reference["global_step"] == 4
    assert ckpt["elastic_pl"] == reference["elastic_pl"]  # the data fingerprint and model config survive
    with pytest.raises(CheckpointError, match="exists"):
        consolidate(src)  # never overwrites
    # the single file evaluates like the sharded original, without any trust flag
    assert _evaluate(sharded, single, tmp_path / "single.json") == 0
    assert _evaluate(sharded, sharded["last"], tmp_path / "sharded.json") == 0
    assert json.loads((tmp_path / "single.json").read_text()) == json.loads((tmp_path / "sharded.json").read_text())


def test_planted_index_never_runs(sharded, tmp_path, capsys):
    marker = tmp_path / "pwned"
    planted = tmp_path / "downloaded" / "last.ckpt"
    shutil.copytree(sharded["last"], planted)
    plant(planted / ".metadata", marker)
    # the plant is live: torch's own reader runs it (in a child process, so the proof stays there)
    code = ("import sys; from torch.distributed.checkpoint import FileSystemReader; "
            "FileSystemReader(sys.argv[1]).read_metadata()")
    subprocess.run([sys.executable, "-c", code, str(planted)], capture_output=True, timeout=120)
    assert marker.exists(), "the planted .metadata does not run under torch's reader: the test proves nothing"
    marker.unlink()

    assert _evaluate(sharded, planted, tmp_path / "a.json") == 2  # not trusted: refused before reading
    assert _evaluate(sharded, planted, tmp_path / "b.json", "--trust-checkpoint") == 2  # read, restricted
    assert main(["consolidate", "--checkpoint", str(planted)]) == 2
    err = capsys.readouterr().err
    assert "refusing to unpickle pathlib.Path.touch" in err, err
    assert not marker.exists()
    assert not (planted.parent / "consolidated").exists()  # nothing written


def test_planted_meta_never_runs_even_when_the_environment_allows_pickle(sharded, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # a user's setting for old checkpoints
    marker = tmp_path / "pwned"
    planted = tmp_path / "downloaded" / "last.ckpt"
    shutil.copytree(sharded["last"], planted)
    torch.save({"global_step": 4, "hyper_parameters": Payload(marker)}, planted / "meta.pt")
    assert main(["consolidate", "--checkpoint", str(planted)]) == 2
    assert _evaluate(sharded, planted, tmp_path / "a.json", "--trust-checkpoint") == 2
    assert not marker.exists()


def test_non_tensor_entries_are_loaded_weights_only(tmp_path):
    # the shards' non-tensor entries (optimizer hyper-parameters): torch's planner loads them with
    # weights_only=False; ours refuses a payload there too
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save(Payload(marker), buf)
    buf.seek(0)
    with pytest.raises(pickle.UnpicklingError):
        _WeightsOnlyPlanner().load_bytes(None, buf)
    assert not marker.exists()
