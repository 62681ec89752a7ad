"""Hostile inputs: each bad file, setting, checkpoint or environment gets one clear error (the
library's error type, or exit status 2 and one ``elastic-pl:`` line from the CLI) naming what is
wrong, before anything is written; an odd but valid input reads exactly like the plain one."""
from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

from data_pipeline.config import PrepareConfig, SourceConfig
from data_pipeline.errors import DataError
from data_pipeline.manifest import ManifestError, load_manifest, resolve_urls
from data_pipeline.prepare import finalize, plan, prepare
from data_pipeline.readers import read_events
from elastic_pl.checkpoint import check_model_config, load_checkpoint
from elastic_pl.cli import main
from elastic_pl.config import ConfigError, load_config
from elastic_pl.errors import CheckpointError, UserInputError
from elastic_pl.run_dir import open_run
from elastic_pl.tracking import resolve_mode
from tests.pipeline_config import tiny_overrides
from tests.shard_fixtures import random_sequences, write_shards

BOM = b"\xef\xbb\xbf"


def _files(root) -> dict:
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            st = os.stat(os.path.join(d, n))
            out[os.path.join(d, n)] = (st.st_size, st.st_mtime_ns)
    return out


def _one_message(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("elastic-pl: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --- readers: a byte order mark is no part of the first line, on the fast path or the line check ----
def _rows(n: int = 40) -> list[tuple[int, int, int]]:
    return [(u % 7 + 1, (u * 5) % 11 + 1, 1000 + u) for u in range(n)]


# name, one row as a line, source keys, a line the fast path leaves to the per-line reference (so the
# whole block, line 1 included, is checked line by line), and how many bad lines the file has
TEXT_FORMATS = {
    "csv": ("e.csv", lambda r: f"{r[0]},{r[1]},{r[2]}", {"header": False, "user_col": "0", "item_col": "1",
                                                        "ts_col": "2"}, "{0} ,{1},{2}", 1),
    "dat": ("ratings.dat", lambda r: f"{r[0]}::{r[1]}::5::{r[2]}", {}, "{0}::{1}:: 5::{2}", 0),
    "jsonl": ("e.jsonl", lambda r: f'{{"user": {r[0]}, "item": {r[1]}, "ts": {r[2]}}}', {}, None, 0),
    "sasrec_lines": ("e.txt", None, {"format": "sasrec_lines"}, None, 0),
}


@pytest.mark.parametrize("fmt", sorted(TEXT_FORMATS))
def test_a_byte_order_mark_reads_like_the_plain_file(tmp_path, fmt):
    name, line, keys, odd, bad_lines = TEXT_FORMATS[fmt]
    rows = _rows()
    if line is None:  # one user's history per line
        lines = [" ".join(str(x) for x in [u, *range(1, 5 + u)]) for u in range(1, 6)]
    else:
        lines = [line(r) for r in rows]
        if odd is not None:
            lines[20] = odd.format(*rows[20])
    text = ("\n".join(lines) + "\n").encode()
    tables = {}
    for bom in (False, True):
        path = tmp_path / f"{bom}-{name}"
        path.write_bytes((BOM if bom else b"") + text)
        src = SourceConfig(path=str(path), on_bad_line="skip", **keys)
        table, stats = read_events(src)
        tables[bom] = (table.column("user").to_pylist(), table.column("item").to_pylist(), stats.bad_lines)
    assert tables[True] == tables[False] and tables[True][2] == bad_lines


def test_a_header_that_cannot_be_split_names_file_and_line(tmp_path):
    path = tmp_path / "e.tsv"
    path.write_text('"user","item","ts"\n1,2,3\n')  # comma-separated, read as tab-separated
    with pytest.raises(DataError, match=rf"{path}:1: cannot split the header line.*source.format"):
        read_events(SourceConfig(path=str(path)))


# --- prepare --------------------------------------------------------------------------------
def _events(tmp_path) -> str:
    path = tmp_path / "e.csv"
    path.write_text("user,item,ts\n" + "".join(f"{u},{i},{t}\n" for u, i, t in _rows()))
    return str(path)


def test_an_output_dir_that_is_a_file_is_refused(tmp_path):
    out = tmp_path / "shards"
    out.write_text("mine")
    cfg = PrepareConfig(output_dir=str(out), num_buckets=2, workers=1, progress=False)
    with pytest.raises(DataError, match=rf"prepare.output_dir: {out} exists and is not a directory"):
        prepare(SourceConfig(path=_events(tmp_path)), cfg)
    assert out.read_text() == "mine"


def test_finalize_before_the_buckets_names_the_stage_to_run(tmp_path):
    src = SourceConfig(path=_events(tmp_path))
    cfg = PrepareConfig(output_dir=str(tmp_path / "shards"), num_buckets=2, workers=1, progress=False)
    plan(src, cfg)
    with pytest.raises(DataError, match=r"buckets not done: \[0, 1\].*prepare --bucket N"):
        finalize(cfg, src)


def test_an_unwritable_output_path_is_one_message(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    args = ["prepare", f"data.source.path={_events(tmp_path)}", f"data.prepare.output_dir={blocker}/shards",
            "data.prepare.workers=1", "data.prepare.progress=false"]
    assert main(args) == 2
    _one_message(capsys, str(blocker))


# --- shards: an empty or cut shard is found before anything is written -----------------------
@pytest.mark.parametrize("size", [0, 1000], ids=["empty", "truncated"])
def test_a_shard_that_is_not_a_whole_tar_is_refused_up_front(tmp_path, size):
    write_shards(str(tmp_path), random_sequences(20, 30, seed=1), num_shards=2)
    shard = tmp_path / "seq-000001.tar"
    shard.write_bytes(shard.read_bytes()[:size])
    with pytest.raises(ManifestError, match=rf"seq-000001.tar: {size} bytes, not a whole tar file"):
        resolve_urls(load_manifest(str(tmp_path)))


# --- config values: wrong before any work ------------------------------------------------------
@pytest.mark.parametrize("override, needle", [
    ("optim.lr=-1", "optim.lr"), ("optim.lr=0", "optim.lr"), ("optim.beta1=1.5", "optim.beta1"),
    ("optim.weight_decay=-1", "optim.weight_decay"), ("optim.warmup_steps=-1", "optim.warmup_steps"),
    ("optim.min_lr_ratio=2", "optim.min_lr_ratio"), ("optim.memory_lr_mult=-1", "optim.memory_lr_mult"),
    ("trainer.devices=0", "trainer.devices"), ("trainer.num_nodes=0", "trainer.num_nodes"),
    ("trainer.max_steps=-5", "trainer.max_steps"), ("trainer.check_val_every_n_epoch=0", "check_val_every_n_epoch"),
    ("trainer.log_every_n_steps=0", "log_every_n_steps"), ("trainer.gradient_clip_val=-1", "gradient_clip_val"),
    ("trainer.checkpoint_every_n_steps=-1", "checkpoint_every_n_steps"),
    ("trainer.dist_timeout_minutes=0", "dist_timeout_minutes"), ("trainer.max_time_minutes=0", "max_time_minutes"),
    ("trainer.limit_val_batches=-1", "limit_val_batches"), ("trainer.limit_val_batches=1.5", "limit_val_batches"),
    ("trainer.precision=garbage", "trainer.precision"), ("eval.top_k=0", "eval.top_k"),
    ("eval.chunk_size=0", "eval.chunk_size"), ("wandb.tags=[1,{a: 2}]", "wandb.tags[1]"),
    ("data.loader.urls=[[a]]", "data.loader.urls[0]"), ("run.experiment=${foo.bar}", "run.experiment"),
])
def test_a_bad_value_names_its_key(override, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)) as e:
        load_config(None, [override])
    assert "\n" not in str(e.value)  # the CLI prints it as one line


@pytest.mark.parametrize("override", ["trainer.limit_val_batches=20", "trainer.limit_val_batches=0.25",
                                      "trainer.max_epochs=0", "optim.warmup_steps=0", "trainer.precision=bf16-mixed",
                                      "trainer.gradient_clip_val=0", "optim.memory_lr_mult=0"])
def test_valid_edge_values_are_kept(override):
    load_config(None, [override])


# --- checkpoints: a damaged layout is a CheckpointError, never a KeyError ------------------------
@pytest.mark.parametrize("ckpt, part", [
    ({"hyper_parameters": [1], "state_dict": {}}, "'hyper_parameters' is of type list"),
    ({"hyper_parameters": {"foo": 1}, "state_dict": {}}, "'hyper_parameters.model' is missing"),
    ({"hyper_parameters": {"model": {}}, "state_dict": [1]}, "'state_dict' is of type list"),
    ({"hyper_parameters": {"model": {}}, "state_dict": {}, "elastic_pl": "x"}, "'elastic_pl' is of type str"),
    ({"hyper_parameters": {"model": {}}, "state_dict": {}, "elastic_pl": {"data": 3}}, "'elastic_pl.data' is of type int"),
], ids=["hparams-list", "no-model", "state-list", "provenance-str", "provenance-data-int"])
def test_a_damaged_checkpoint_is_one_error(tmp_path, ckpt, part):
    path = tmp_path / "x.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=rf"{path}: not an elastic-pl checkpoint: its {part}"):
        load_checkpoint(path)


def test_a_model_config_this_version_cannot_read_is_a_checkpoint_error(tmp_path):
    ckpt = {"hyper_parameters": {"model": {"encoder": {"name": "no_such_encoder"}, "loss": {"name": "bce"}}}}
    with pytest.raises(CheckpointError, match="x.ckpt: its model config cannot be read"):
        check_model_config(ckpt, "x.ckpt", {})


# --- CLI: --out, empty results, the environment -------------------------------------------------
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_out_onto_a_directory_is_refused_before_any_work(tmp_path, capsys, command):
    out = tmp_path / "out"
    out.mkdir()
    assert main([command, "--checkpoint", str(tmp_path / "nope.ckpt"), "--out", str(out)]) == 2
    _one_message(capsys, f"--out {out} is a directory")
    assert list(out.iterdir()) == []


def test_export_out_onto_a_file_is_refused(tmp_path, capsys):
    ckpt, out = tmp_path / "x.ckpt", tmp_path / "serving"
    ckpt.write_text("")
    out.write_text("mine")
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 2
    _one_message(capsys, f"--out {out} is a file")
    assert out.read_text() == "mine"


def test_an_evaluation_that_scores_nobody_is_an_error(tmp_path, capsys):
    data = tmp_path / "shards"
    write_shards(str(data), [np.array([i + 1], np.int32) for i in range(12)], num_shards=1, num_items=12)
    args = ["evaluate", "--baseline", "popularity", f"data.loader.data_dir={data}", "data.loader.num_workers=0",
            "trainer.progress_bar=false"]
    assert main(args) == 2
    _one_message(capsys, str(data), "no user has enough events", "test split")


class _WandbCommError(Exception):
    __module__ = "wandb.errors.errors"  # what wandb raises when it cannot reach its server


@pytest.mark.parametrize("error, needle", [
    (_WandbCommError("Failed to get resume status: context deadline exceeded"), "WANDB_MODE=offline"),
    (MisconfigurationException("No supported gpu backend found!"), "No supported gpu backend found"),
], ids=["wandb-unreachable", "no-gpu"])
def test_environment_errors_are_one_message(monkeypatch, capsys, error, needle):
    from elastic_pl import cli

    def fail(cfg, args):
        raise error

    monkeypatch.setitem(cli.COMMANDS, "export", fail)
    assert main(["export", "--checkpoint", "x"]) == 2
    _one_message(capsys, needle)


def test_a_bad_wandb_mode_in_the_environment_is_named(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "garbage")
    with pytest.raises(ConfigError, match="WANDB_MODE='garbage'"):
        resolve_mode("auto")


def _key_dir(tmp_path):
    os.makedirs(tmp_path / "key")


def _key_garbage(tmp_path):
    (tmp_path / "key").write_text("not hex\n")


def _key_parent_file(tmp_path):
    (tmp_path / "blocker").write_text("")


@pytest.mark.parametrize("make, key", [(_key_dir, "key"), (_key_garbage, "key"), (_key_parent_file, "blocker/key")],
                         ids=["directory", "not-a-key", "parent-is-a-file"])
def test_a_bad_run_key_is_refused_before_the_run_directory_is_made(tmp_path, monkeypatch, make, key):
    make(tmp_path)
    monkeypatch.setenv("ELASTIC_PL_RUN_KEY", str(tmp_path / key))
    cfg = load_config(None, [f"run.dir={tmp_path}/run"])
    with pytest.raises(UserInputError, match=rf"{tmp_path / key}: .*run-directory key"):
        open_run(cfg, lambda d: False)
    assert not (tmp_path / "run").exists()


def test_a_run_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "run").write_text("mine")
    with pytest.raises(ConfigError, match=rf"run directory {tmp_path / 'run'} .*is not a directory"):
        open_run(load_config(None, [f"run.dir={tmp_path}/run"]), lambda d: False)


# --- predict: never a made-up row ---------------------------------------------------------------
@pytest.fixture(scope="module")
def one_step(tiny_data):
    overrides = tiny_overrides(tiny_data, "run.run_id=hostile", "wandb.enabled=false")
    assert main(["train", *overrides, "trainer.max_steps=1"]) == 0
    return overrides, str(tiny_data / "runs" / "e2e" / "hostile" / "checkpoints" / "last.ckpt")


def test_top_k_beyond_the_unseen_items_writes_only_real_recommendations(one_step, tmp_path):
    overrides, ckpt = one_step
    out = tmp_path / "p.parquet"
    assert main(["predict", "--checkpoint", ckpt, "--out", str(out), *overrides, "eval.top_k=100000"]) == 0
    got = pq.read_table(out).to_pydict()
    data_dir = load_config(None, overrides).data.loader.data_dir
    catalog = set(pq.read_table(f"{data_dir}/item_map.parquet").column("original").to_pylist())
    assert set(got["item"]) <= catalog and np.isfinite(got["score"]).all()
    by_user: dict = {}
    for user, rank, item in zip(got["user"], got["rank"], got["item"]):
        by_user.setdefault(user, []).append((rank, item))
    for rows in by_user.values():
        ranks, items = zip(*sorted(rows))
        assert list(ranks) == list(range(1, len(ranks) + 1)) and len(set(items)) == len(items)
        assert len(items) < len(catalog)  # the history is filtered out, not padded back in


def test_a_missing_user_map_is_an_error_not_dense_ids(one_step, tmp_path, capsys):
    overrides, ckpt = one_step
    data = tmp_path / "shards"
    shutil.copytree(load_config(None, overrides).data.loader.data_dir, data)
    (data / "user_map.parquet").unlink()
    out = tmp_path / "p.parquet"
    before = _files(tmp_path)
    assert main(["predict", "--checkpoint", ckpt, "--out", str(out), *overrides,
                 f"data.loader.data_dir={data}"]) == 2
    _one_message(capsys, "user map", "user_map.parquet is missing")
    assert _files(tmp_path) == before


@pytest.mark.parametrize("setting", ["trainer.max_epochs=0", "trainer.max_steps=0", "trainer.accelerator=gpu"])
def test_untrainable_settings_are_refused_before_the_run_directory_exists(tiny_data, tmp_path, setting, capsys):
    if setting.endswith("gpu") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    run = tmp_path / "run"
    assert main(["train", *tiny_overrides(tiny_data), f"run.dir={run}", setting]) == 2
    assert setting.split("=")[0] in capsys.readouterr().err
    assert not run.exists()


def test_a_directory_with_one_log_in_two_formats_is_refused(tmp_path):
    """events.csv beside events.parquet (the same log saved twice) was read twice: double events."""
    from data_pipeline.readers import check_inputs

    (tmp_path / "events.csv").write_text("user,item,ts\n1,2,3\n1,3,4\n")
    pq.write_table(pa.table({"user": [1, 1], "item": [2, 3], "ts": [3, 4]}), tmp_path / "events.parquet")
    with pytest.raises(DataError, match=r"holds files of 2 formats \(csv: events.csv; parquet: events.parquet\)"):
        check_inputs(SourceConfig(path=str(tmp_path)))
    assert check_inputs(SourceConfig(path=str(tmp_path / "*.parquet"))) == [str(tmp_path / "events.parquet")]


@pytest.mark.parametrize("case", ["budget below the longest user", "no user long enough"])
def test_data_the_budget_cannot_train_is_refused_before_the_run_directory_exists(tmp_path, case, capsys):
    short = case == "no user long enough"
    write_shards(str(tmp_path / "shards"), random_sequences(20, 30, min_len=3 if short else 10,
                                                            max_len=3 if short else 30, seed=2),
                 num_shards=1, num_items=30)
    run = tmp_path / "run"
    args = ["train", f"data.loader.data_dir={tmp_path}/shards", f"run.dir={run}", "data.loader.num_workers=0",
            "wandb.enabled=false", "trainer.accelerator=cpu", "data.loader.max_len=32", "model.max_positions=32",
            f"data.loader.max_tokens={64 if short else 8}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert ("no user has enough events" if short else "exceeds data.loader.max_tokens=8") in err
    assert not run.exists()


def test_prepare_refuses_a_log_where_no_user_has_four_events(tmp_path, capsys):
    log = tmp_path / "short.csv"
    log.write_text("".join(f"{u},{i},{1000 + u * 10 + i}\n" for u in range(1, 30) for i in range(1, 4)))
    out = tmp_path / "shards"
    args = ["prepare", "--config", "configs/default.yaml", "data.synthetic=null", f"data.source.path={log}",
            "data.source.format=csv", "data.source.header=false", "data.source.user_col=0",
            "data.source.item_col=1", "data.source.ts_col=2", f"data.prepare.output_dir={out}",
            "data.prepare.progress=false"]
    assert main(args) == 2
    _one_message(capsys, str(log), "no user has 4 or more events", "longest history has 3")
    assert not out.exists()


@pytest.mark.parametrize("batches", [["data.loader.max_tokens=null"], ["data.loader.max_tokens=64"]])
def test_train_on_a_damaged_shard_stops_before_the_run_directory_is_written(tmp_path, capsys, monkeypatch, batches):
    from tests.test_corruption import flip_an_item

    monkeypatch.setenv("ELASTIC_PL_RUN_KEY", str(tmp_path / "run-key"))
    overrides = tiny_overrides(tmp_path, "wandb.enabled=false", "run.run_id=r", *batches)
    assert main(["prepare", *overrides]) == 0
    flip_an_item(str(sorted((tmp_path / "data" / "shards").glob("seq-*.tar"))[-1]))
    capsys.readouterr()
    assert main(["train", *overrides]) == 2
    _one_message(capsys, "checksum")
    assert not (tmp_path / "runs").exists()
