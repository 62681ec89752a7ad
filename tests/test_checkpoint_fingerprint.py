"""Checkpoints record the fingerprint of their data and their model config; evaluate / predict refuse
other data (unless --allow-data-mismatch) and a config whose model section differs; export lands in
the checkpoint's own run directory, the preemption checkpoint's included."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from elastic_pl.checkpoint import PROVENANCE_KEY, without_compile_prefix
from elastic_pl.cli import main
from tests.checkpoint_fixtures import trained_tiny_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fingerprint")
    for overrides, result in trained_tiny_run(tmp):
        yield {"tmp": tmp, "overrides": overrides, "best": result.best_checkpoint, "run": Path(result.run_dir)}


def _data_dir(trained) -> Path:
    return trained["tmp"] / "data" / "shards"


def test_checkpoint_records_data_fingerprint_and_model_config(trained):
    ckpt = torch.load(trained["best"], map_location="cpu", weights_only=True)
    data = _data_dir(trained)
    manifest = json.loads((data / "manifest.json").read_text())
    recorded = ckpt[PROVENANCE_KEY]
    assert recorded["data"] == {"item_map_sha256": hashlib.sha256((data / manifest["item_map"]).read_bytes()).hexdigest(),
                                "num_items": manifest["num_items"], "num_users": manifest["num_users"]}
    assert recorded["model"] == ckpt["hyper_parameters"]["model"]
    assert recorded["model"]["d_model"] == 16 and recorded["model"]["num_items"] == manifest["num_items"]


def _other_data(trained, tmp_path: Path) -> Path:
    """The same shards with another item map (the same items, other original ids)."""
    other = tmp_path / "other"
    shutil.copytree(_data_dir(trained), other)
    table = pq.read_table(other / "item_map.parquet")
    original = table.column("original").to_pylist()
    renamed = [f"x{v}" for v in original] if isinstance(original[0], str) else [v + 10**6 for v in original]
    pq.write_table(table.set_column(table.schema.get_field_index("original"), "original", pa.array(renamed)),
                   other / "item_map.parquet")
    return other


def test_other_data_is_refused_unless_allowed(trained, tmp_path, capsys):
    other = _other_data(trained, tmp_path)
    args = ["--checkpoint", trained["best"], *trained["overrides"], f"data.loader.data_dir={other}",
            f"run.dir={tmp_path}/eval"]
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert f"was trained on other data than {other}" in err and "item_map_sha256" in err, err
    assert "num_items" not in err.split("item_map_sha256")[1]  # only what differs is named
    assert "--allow-data-mismatch" in err and not out.exists()
    assert main(["predict", "--out", str(tmp_path / "p.parquet"), *args]) == 2
    assert not (tmp_path / "p.parquet").exists()
    assert main(["evaluate", "--out", str(out), "--allow-data-mismatch", *args]) == 0
    assert json.loads(out.read_text())["test/count"] == 120


def test_a_config_with_another_model_section_is_an_error_listing_the_keys(trained, tmp_path, capsys):
    args = ["--checkpoint", trained["best"], *trained["overrides"], f"run.dir={tmp_path}/eval"]
    assert main(["evaluate", *args, "model.d_model=32", "model.dropout=0.2"]) == 2
    err = capsys.readouterr().err
    assert "model.d_model: checkpoint 16, config 32" in err and "model.dropout: checkpoint 0.0, config 0.2" in err, err
    assert "model.n_layers" not in err
    assert main(["export", *args, "model.d_model=32", "--out", str(tmp_path / "serving")]) == 2
    assert not (tmp_path / "serving").exists()


def test_export_lands_in_the_checkpoints_run_directory(trained):
    run = trained["run"]
    # the preemption checkpoint (strategies.RequeueOnSignal) lies in the run directory itself, next to
    # config.yaml; the others under checkpoints/
    hpc = run / "hpc_ckpt_1.ckpt"
    shutil.copyfile(run / "checkpoints" / "last.ckpt", hpc)
    try:
        for ckpt, name in ((hpc, "hpc_ckpt_1"), (Path(trained["best"]), Path(trained["best"]).stem)):
            assert main(["export", "--checkpoint", str(ckpt), *trained["overrides"]]) == 0
            assert (run / "serving" / name / "serving.json").is_file(), sorted(run.rglob("serving.json"))
        assert not (run.parent / "serving").exists()
    finally:
        hpc.unlink()


def test_compiled_model_state_dict_keys_load():
    # torch.compile's wrapper names the weights model._orig_mod.<name>; the plain model reads them
    from elastic_pl.model import ModelConfig, SequentialRecommender

    model = SequentialRecommender(ModelConfig(num_items=10, d_model=8))
    compiled = {f"model.{k}": v for k, v in torch.compile(model).state_dict().items()}
    assert all("._orig_mod." in k for k in compiled)
    plain = {f"model.{k}": v for k, v in model.state_dict().items()}
    assert without_compile_prefix(compiled).keys() == plain.keys()


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_failed_evaluate_or_predict_leaves_no_run_directory_behind(trained, tmp_path, capsys, command):
    # a shard that fails its checksum is found only while the users are read, after the loggers exist
    from tests.test_corruption import flip_an_item

    damaged = tmp_path / "damaged"
    shutil.copytree(_data_dir(trained), damaged)
    for shard in sorted(damaged.glob("seq-*.tar")):
        flip_an_item(str(shard))
    out = tmp_path / ("metrics.json" if command == "evaluate" else "p.parquet")
    for where in (tmp_path / "new-run", trained["run"]):  # a directory it would create, and one that exists
        before = sorted(p for p in where.rglob("*")) if where.exists() else None
        args = ["--checkpoint", trained["best"], *trained["overrides"], f"data.loader.data_dir={damaged}",
                f"run.dir={where}", "--out", str(out)]
        assert main([command, *args]) == 2
        err = capsys.readouterr().err
        assert "checksum" in err and "Traceback" not in err, err[-2000:]
        assert not out.exists()
        if before is None:
            assert not where.exists(), sorted(where.rglob("*"))
        else:
            assert sorted(where.rglob("*")) == before
