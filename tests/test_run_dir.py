"""A run directory's config.yaml against the config of a new launch (run.on_config_change), and
the run marker that vouches for the directories elastic-pl created."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from elastic_pl.cli import main
from elastic_pl.config import ConfigError, load_config
from elastic_pl.errors import RunConfigChangedError
from elastic_pl.run_dir import CONFIG_NAME, open_run, write_run_files
from elastic_pl.run_marker import MARKER_NAME, is_marked
from tests.pipeline_config import tiny_overrides


@pytest.fixture(autouse=True)
def run_key(tmp_path, monkeypatch):
    monkeypatch.setenv("ELASTIC_PL_RUN_KEY", str(tmp_path / "key" / "run-key"))


def _cfg(run: Path, *overrides: str):
    return load_config(None, [f"run.dir={run}", *overrides])


def _snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _start(run: Path, *overrides: str):
    cfg = _cfg(run, *overrides)
    write_run_files(open_run(cfg, lambda d: False), cfg)
    return cfg


def test_unchanged_config_resumes_in_place(tmp_path):
    run = tmp_path / "run"
    _start(run, "optim.lr=0.002")
    again = open_run(_cfg(run, "optim.lr=0.002", "run.config_files=[elsewhere.yaml]"), lambda d: True)
    assert again.path == run and not again.created  # where the config came from is no change


def test_changed_config_is_an_error_listing_the_keys_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    _start(run, "optim.lr=0.002", "trainer.max_epochs=3")
    before = _snapshot(run)
    with pytest.raises(RunConfigChangedError) as e:
        open_run(_cfg(run, "optim.lr=0.004", "trainer.max_epochs=3", "model.d_model=32"), lambda d: True)
    msg = str(e.value)
    assert str(run / CONFIG_NAME) in msg
    assert "optim.lr: saved 0.002, now 0.004" in msg and "model.d_model: saved 64, now 32" in msg
    assert "trainer.max_epochs" not in msg  # unchanged keys are not listed
    assert _snapshot(run) == before


def test_new_run_takes_a_fresh_sibling_and_finds_it_again(tmp_path):
    run = tmp_path / "run"
    _start(run, "optim.lr=0.002")
    changed = ("optim.lr=0.004", "run.on_config_change=new_run")
    first = open_run(_cfg(run, *changed), lambda d: False)
    assert first.path == tmp_path / "run-2" and first.created
    write_run_files(first, _cfg(run, *changed))
    # the same changed config again (a requeued job): the same new run, not a third one
    again = open_run(_cfg(run, *changed), lambda d: True)
    assert again.path == tmp_path / "run-2" and not again.created
    # another change: the next free sibling
    other = open_run(_cfg(run, "optim.lr=0.008", "run.on_config_change=new_run"), lambda d: False)
    assert other.path == tmp_path / "run-3"


def test_allow_applies_what_a_resume_applies_and_refuses_the_rest(tmp_path):
    run = tmp_path / "run"
    _start(run, "trainer.max_steps=8")
    applied = open_run(_cfg(run, "trainer.max_steps=16", "optim.warmup_steps=5", "run.on_config_change=allow"),
                       lambda d: True)
    assert applied.path == run
    for change, why in (("optim.lr=0.01", "restored with the optimizer state"),
                        ("model.d_model=32", "architecture and shapes")):
        with pytest.raises(RunConfigChangedError, match=why) as e:
            open_run(_cfg(run, "trainer.max_steps=16", change, "run.on_config_change=allow"), lambda d: True)
        assert change.split("=")[0] in str(e.value)
    # nothing to resume yet: every change applies (training starts from scratch)
    assert open_run(_cfg(run, "model.d_model=32", "run.on_config_change=allow"), lambda d: False).path == run


def test_unknown_policy_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="run.on_config_change"):
        open_run(_cfg(tmp_path / "run", "run.on_config_change=sometimes"), lambda d: False)


def test_marker_is_written_only_when_the_run_is_created_and_verifies_with_this_key_only(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _start(run)
    assert is_marked(run)
    body = json.loads((run / MARKER_NAME).read_text())
    assert set(body) == {"format_version", "created", "nonce", "hmac"}
    assert oct(os.stat(os.environ["ELASTIC_PL_RUN_KEY"]).st_mode & 0o777) == "0o600"
    # a directory that already held files (copied in) is never marked by a later launch
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / CONFIG_NAME).write_text((run / CONFIG_NAME).read_text())
    cfg = _cfg(foreign)
    write_run_files(open_run(cfg, lambda d: False), cfg)
    assert not (foreign / MARKER_NAME).exists() and not is_marked(foreign)
    # a marker copied next to it does not help, nor a forged one, nor the right one under another key
    (foreign / MARKER_NAME).write_text(json.dumps({**body, "hmac": "0" * 64}))
    assert not is_marked(foreign)
    monkeypatch.setenv("ELASTIC_PL_RUN_KEY", str(tmp_path / "other-user-key"))
    assert not is_marked(run)


def test_train_with_a_changed_config_exits_2_before_writing(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = tiny_overrides(tmp_path, "run.run_id=r", "wandb.enabled=false")
    assert main(["prepare", *overrides]) == 0
    assert main(["train", *overrides]) == 0
    run = tmp_path / "runs" / "e2e" / "r"
    before = _snapshot(run)
    assert main(["train", *overrides, "trainer.max_epochs=2"]) == 2
    assert _snapshot(run) == before  # no config.yaml rewrite, no CSV log, no W&B id, no checkpoint
