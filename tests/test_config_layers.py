"""Config layers: several files merged in order, ``defaults:`` lists, and the errors that name the
file; the data order follows ``run.seed``; no demo data unless a config asks for it."""
from __future__ import annotations

from pathlib import Path

import pytest

from elastic_pl.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_later_layers_win_and_are_recorded(tmp_path):
    a = _write(tmp_path / "a.yaml", "optim:\n  lr: 0.5\n  warmup_steps: 7\n")
    b = _write(tmp_path / "b.yaml", "optim:\n  lr: 0.25\n")
    cfg = load_config([a, b], ["optim.warmup_steps=9"])
    assert (cfg.optim.lr, cfg.optim.warmup_steps) == (0.25, 9)
    assert cfg.run.config_files == [a, b]
    assert load_config([b, a]).optim.lr == 0.5


def test_defaults_are_merged_depth_first_before_the_files_own_keys(tmp_path):
    _write(tmp_path / "data" / "d.yaml", "defaults: [../base]\ndata:\n  loader:\n    max_len: 33\n")
    _write(tmp_path / "base.yaml", "data:\n  loader:\n    max_len: 11\n    batch_size: 5\n")
    _write(tmp_path / "model" / "m.yaml", "model:\n  d_model: 32\n  encoder: {n_heads: 2}\n")
    top = _write(tmp_path / "exp.yaml", "defaults: [data/d, model/m.yaml]\ndata:\n  loader:\n    batch_size: 6\n")
    cfg = load_config(top)
    assert (cfg.data.loader.max_len, cfg.data.loader.batch_size, cfg.model.d_model) == (33, 6, 32)
    assert cfg.run.config_files == [str(tmp_path / "data" / "../base.yaml"), str(tmp_path / "data" / "d.yaml"),
                                    str(tmp_path / "model" / "m.yaml"), top]


def test_a_bad_key_is_reported_with_the_layer_that_holds_it(tmp_path):
    good = _write(tmp_path / "good.yaml", "optim:\n  lr: 0.1\n")
    bad = _write(tmp_path / "sub" / "bad.yaml", "optim:\n  learning_rate: 0.1\n")
    top = _write(tmp_path / "top.yaml", "defaults: [good, sub/bad]\n")
    with pytest.raises(ConfigError, match=r"sub/bad\.yaml.*optim\.learning_rate"):
        load_config(top)
    wrong_type = _write(tmp_path / "wt.yaml", "trainer:\n  max_epochs: many\n")
    with pytest.raises(ConfigError, match=r"wt\.yaml.*trainer\.max_epochs"):
        load_config([good, wrong_type])


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("# only a comment\n", "is empty"),
    ("- run\n- data\n", "top level must be a mapping"),
    ("run: [\n", "not valid YAML"),
    ("defaults: data/x\n", "must be a list"),
    ("defaults: [missing-layer]\n", r"not found: .*missing-layer\.yaml"),
])
def test_files_that_cannot_be_layers(tmp_path, text, message):
    path = _write(tmp_path / "c.yaml", text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_cycles_are_refused(tmp_path):
    _write(tmp_path / "a.yaml", "defaults: [b]\noptim:\n  lr: 0.1\n")
    _write(tmp_path / "b.yaml", "defaults: [a]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(tmp_path / "a.yaml"))


@pytest.mark.parametrize("item", ["optim.lr=abc", "trainer.max_epochs=[", "optim.lr", "=3", "no_such.key=1"])
def test_bad_overrides_name_the_override(item):
    with pytest.raises(ConfigError, match="command line"):
        load_config(None, [item])


def test_the_data_order_follows_the_run_seed_unless_set():
    assert load_config(None, ["run.seed=3"]).data.loader.seed == 3
    assert load_config(None, ["run.seed=3", "data.loader.seed=11"]).data.loader.seed == 11


def test_no_input_unless_a_config_names_one():
    cfg = load_config(None)
    assert cfg.data.synthetic is None and cfg.data.source.path == "" and cfg.data.loader.data_dir == ""
    demo = load_config(str(REPO / "configs" / "default.yaml"))
    assert demo.data.synthetic is not None and demo.data.source.path == "data/demo/events.parquet"


LAYERS = REPO / "configs"


@pytest.mark.parametrize("data", sorted((LAYERS / "data").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_data_layer_composes_with_every_model_and_recipe(data):
    for model in sorted((LAYERS / "model").glob("*.yaml")):
        for recipe in sorted((LAYERS / "recipe").glob("*.yaml")):
            cfg = load_config([str(data), str(model), str(recipe)])
            assert cfg.model.max_positions == cfg.data.loader.max_len
            assert cfg.run.config_files == [str(data), str(model), str(recipe)]


def test_every_layer_is_used_by_a_frozen_experiment():
    used = set()
    for exp in LAYERS.glob("*.yaml"):
        used.update(load_config(str(exp)).run.config_files)
    layers = {str(p) for sub in ("data", "model", "recipe") for p in (LAYERS / sub).glob("*.yaml")}
    assert layers and {str(Path(p).resolve()) for p in layers} <= {str(Path(p).resolve()) for p in used}
