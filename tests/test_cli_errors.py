"""Input errors through the real command line: one message naming the file / key, exit status 2,
no traceback (unless --debug), nothing written. A bug keeps its traceback (exit status 1)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "elastic_pl", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)


def _one_message(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    err = proc.stderr
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("elastic-pl: ")]
    assert len(lines) == 1, err[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, needle", [("- run\n- data\n", "mapping"), ("\n# nothing\n", "empty")],
                         ids=["list", "empty"])
def test_bad_yaml_file(tmp_path, text, needle):
    path = _yaml(tmp_path, text)
    _one_message(_run("train", "--config", str(path)), str(path), needle)


@pytest.mark.parametrize("override, key", [("optim.lr=abc", "optim.lr"), ("a.b=[", "a.b=[")], ids=["type", "syntax"])
def test_broken_override(tmp_path, override, key):
    _one_message(_run("train", override, f"run.root={tmp_path}/runs"), key)
    assert not (tmp_path / "runs").exists()


def test_missing_checkpoint(tmp_path):
    out = tmp_path / "serving"
    _one_message(_run("export", "--checkpoint", str(tmp_path / "nope.ckpt"), "--out", str(out)),
                 "checkpoint not found", str(tmp_path / "nope.ckpt"))
    assert not out.exists()


@pytest.mark.parametrize("kind", ["text", "tensor"])
def test_a_file_that_is_not_a_checkpoint(tmp_path, kind):
    path, out = tmp_path / "model.ckpt", tmp_path / "serving"
    if kind == "text":
        path.write_text("these are not the weights you are looking for\n")
    else:
        torch.save(torch.zeros(3), path)  # a valid torch file, but no checkpoint
    _one_message(_run("export", "--checkpoint", str(path), "--out", str(out)), str(path), "not ")
    assert not out.exists()


def test_debug_shows_the_traceback_of_an_input_error(tmp_path):
    path = _yaml(tmp_path, "- run\n")
    proc = _run("train", "--config", str(path), "--debug")
    assert proc.returncode == 2 and "Traceback" in proc.stderr and f"elastic-pl: {path}" in proc.stderr, proc.stderr


def test_a_bug_keeps_its_traceback(tmp_path):
    # an internal error (not caused by the input) inside a command: traceback, exit status 1
    code = ("import sys; from elastic_pl import cli; "
            "cli.COMMANDS['export'] = lambda cfg, args: {}['a key the code forgot']; sys.exit(cli.main(sys.argv[1:]))")
    proc = _run("export", "--checkpoint", "x", code=code)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "KeyError" in proc.stderr, proc.stderr[-3000:]
