"""Encoder and loss registries: per-component config keys, the name-change rule, dotted paths,
and the capabilities the rest of the package asks for (streaming, FSDP units, export)."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from elastic_pl.config import ConfigError, load_config, to_yaml
from elastic_pl.model import ENCODERS, LOSSES, ModelConfig, SequentialRecommender
from elastic_pl.model.registry import Registry, UnknownComponent
from elastic_pl.strategies import EncoderWrapPolicy

REPO = Path(__file__).resolve().parents[1]
CUSTOM = "tests.custom_encoder:CausalMeanEncoder"
ALL_ENCODERS = [*ENCODERS.names(), CUSTOM]


def small(encoder: str, **model) -> ModelConfig:
    """A tiny model of ``encoder`` with its default keys (time bias off: no timestamps here)."""
    enc = ENCODERS.default_config(encoder)
    if "time_bias" in {f.name for f in dataclasses.fields(enc)}:
        enc = dataclasses.replace(enc, time_bias=False)
    base = dict(num_items=30, d_model=8, n_layers=2, dropout=0.0, max_positions=16)
    return ModelConfig(**{**base, **model}, encoder=enc)


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# -- config keys: each component keeps its own --------------------------------------------------
def test_each_encoder_declares_only_its_own_keys():
    keys = {e: {f.name for f in dataclasses.fields(ENCODERS.config_class(e))} for e in ENCODERS.names()}
    assert "num_experts" in keys["elastic"] and "use_memory" in keys["elastic"]
    assert keys["sasrec"] == {"name", "n_heads", "ffn_mult"}
    assert keys["gru4rec"] == {"name"}
    assert "time_bias" in keys["hstu"] and "num_experts" not in keys["hstu"]
    assert {f.name for f in dataclasses.fields(LOSSES.config_class("full_softmax"))} == {
        "name", "temperature", "chunked", "chunk_rows"}


def test_short_form_on_the_command_line_and_in_yaml(tmp_path):
    assert load_config(None, ["model.encoder=sasrec"]).model.encoder == ENCODERS.default_config("sasrec")
    f = _write(tmp_path / "m.yaml", "model:\n  encoder: gru4rec\n  loss: full_softmax\n")
    cfg = load_config(f)
    assert cfg.model.encoder.name == "gru4rec" and cfg.model.loss == LOSSES.default_config("full_softmax")


def test_a_name_change_starts_from_the_new_components_defaults(tmp_path):
    # ELASTIC's defaults (the schema), then a file selecting sasrec: nothing of ELASTIC's leaks
    f = _write(tmp_path / "s.yaml", "model:\n  encoder:\n    name: sasrec\n    n_heads: 4\n")
    cfg = load_config(f)
    assert cfg.model.encoder == dataclasses.replace(ENCODERS.default_config("sasrec"), n_heads=4)
    # a file's ELASTIC keys, then sasrec, then elastic again: back to ELASTIC's defaults
    e = _write(tmp_path / "e.yaml", "model:\n  encoder:\n    num_experts: 8\n    n_heads: 4\n")
    cfg = load_config(e, ["model.encoder=sasrec", "model.encoder=elastic"])
    assert cfg.model.encoder == ENCODERS.default_config("elastic")
    # naming the encoder in effect changes nothing; a layer's own keys apply after its name
    cfg = load_config(e, ["model.encoder.name=elastic", "model.encoder.chunk_size=5"])
    assert (cfg.model.encoder.num_experts, cfg.model.encoder.chunk_size) == (8, 5)
    cfg = load_config(e, ["model.encoder={name: hstu, n_heads: 1}", "data.loader.timestamps=true"])
    assert cfg.model.encoder == dataclasses.replace(ENCODERS.default_config("hstu"), n_heads=1)
    # the same for losses
    cfg = load_config(None, ["model.loss.num_negatives=7", "model.loss=full_softmax", "model.loss=sampled_softmax"])
    assert cfg.model.loss == LOSSES.default_config("sampled_softmax")


@pytest.mark.parametrize("text,message", [
    ("model:\n  encoder:\n    name: sasrec\n    num_experts: 4\n",
     r"bad.yaml: model.encoder.num_experts is not a key of encoder 'sasrec'"),
    ("model:\n  encoder:\n    num_expertz: 4\n", r"bad.yaml: model.encoder.num_expertz is not a key of encoder 'elastic'"),
    ("model:\n  encoder:\n    chunk_size: many\n", r"bad.yaml: bad config key or value 'model.encoder.chunk_size'"),
    ("model:\n  encoder:\n    chunk_size: 0\n", r"bad.yaml: model.encoder.chunk_size: must be >= 1"),
    ("model:\n  encoder: lstm\n", r"bad.yaml: model.encoder.name: unknown encoder 'lstm'"),
    ("model:\n  loss:\n    name: bce\n    num_negatives: 3\n", r"bad.yaml: model.loss.num_negatives is not a key of loss 'bce'"),
    ("model:\n  loss:\n    negatives: some\n", r"bad.yaml: model.loss.negatives: must be one of"),
    ("model:\n  num_experts: 4\n", r"bad.yaml: bad config key or value 'model.num_experts'"),
    ("model:\n  encoder: [1, 2]\n", r"bad.yaml: model.encoder must be"),
])
def test_a_bad_component_key_names_the_key_and_the_file(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path / "bad.yaml", text))


def test_a_bad_override_names_the_override():
    with pytest.raises(ConfigError, match=r"command line 'model.encoder.use_memory=false'.*not a key of encoder 'hstu'"):
        load_config(None, ["model.encoder=hstu", "model.encoder.use_memory=false"])


def test_an_encoder_that_reads_timestamps_needs_the_loader_to_deliver_them():
    with pytest.raises(ConfigError, match=r"reads timestamps but data.loader.timestamps is false"):
        load_config(None, ["model.encoder=hstu"])  # HSTU's time bias is on by default
    assert load_config(None, ["model.encoder=hstu", "model.encoder.time_bias=false"]).model.encoder.name == "hstu"


def test_saved_config_reloads_to_the_same_tree(tmp_path):
    cfg = load_config(None, ["model.encoder=hstu", "model.encoder.time_bias=false", "model.loss=bce"])
    again = load_config(_write(tmp_path / "saved.yaml", to_yaml(cfg)))
    assert again.model == cfg.model


# -- dotted paths ---------------------------------------------------------------------------------
def test_a_dotted_path_selects_a_users_encoder_with_its_own_keys():
    cfg = load_config(None, [f"model.encoder.name={CUSTOM}", "model.encoder.hidden_mult=3"])
    assert type(cfg.model.encoder).__name__ == "CausalMeanConfig" and cfg.model.encoder.hidden_mult == 3
    with pytest.raises(ConfigError, match="model.encoder.num_experts is not a key"):
        load_config(None, [f"model.encoder={CUSTOM}", "model.encoder.num_experts=3"])


@pytest.mark.parametrize("name,message", [
    ("tests.no_such_module:X", "cannot import module 'tests.no_such_module'"),
    ("tests.custom_encoder:Nope", "has no 'Nope'"),
    ("tests.custom_encoder:CausalMeanConfig", "is not a subclass of"),
    ("elastic_pl.model.encoder:SequenceEncoder", "must declare its own Config"),
])
def test_a_bad_dotted_path_is_one_clear_error(name, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"model.encoder={name}"])


def test_a_registry_lists_its_table_and_resolves_dotted_paths_to_the_same_class():
    reg = Registry("encoder", "elastic_pl.model.encoder:SequenceEncoder", {"x": CUSTOM})
    assert reg.names() == ["x"] and reg.get("x") is reg.get(CUSTOM) is ENCODERS.get(CUSTOM)
    with pytest.raises(UnknownComponent, match="registered: x"):
        reg.get("y")


# -- dicts (checkpoints) --------------------------------------------------------------------------
@pytest.mark.parametrize("encoder", ALL_ENCODERS)
def test_model_config_round_trips_through_a_dict(encoder):
    cfg = small(encoder)
    assert ModelConfig.from_dict(dataclasses.asdict(cfg)) == cfg


def test_a_checkpoint_dict_in_the_earlier_flat_layout_is_read():
    old = dict(num_items=30, max_positions=16, d_model=8, n_heads=2, n_layers=2, ffn_mult=4, dropout=0.1,
               encoder="sasrec", num_experts=16, chunk_size=64, use_memory=True, memory_subkeys=64, memory_topk=8,
               memory_key_dim=32, loss="full_softmax", negatives="uniform", num_negatives=256, temperature=0.5,
               l2_normalize=True)
    cfg = ModelConfig.from_dict(old)
    assert cfg.encoder == ENCODERS.default_config("sasrec") and cfg.l2_normalize
    assert cfg.loss == dataclasses.replace(LOSSES.default_config("full_softmax"), temperature=0.5)


# -- capabilities ---------------------------------------------------------------------------------
@pytest.mark.parametrize("encoder", [e for e in ALL_ENCODERS if ENCODERS.get(e).streams])
def test_every_streaming_encoder_steps_like_forward_at_every_position(encoder):
    torch.manual_seed(0)
    model = SequentialRecommender(small(encoder)).eval()
    n = max(model.encoder.stream_check_length(), 20)
    items = torch.randint(1, 31, (3, n))
    with torch.no_grad():
        full, state = model(items), model.init_state(3)
        for t in range(n):
            hidden, state = model.step(state, items[:, t])
            assert float((hidden - full[:, t]).abs().max() / full[:, t].abs().max()) < 1e-5, (encoder, t)


@pytest.mark.parametrize("encoder", ALL_ENCODERS)
def test_streaming_is_what_the_encoder_declares(encoder):
    model = SequentialRecommender(small(encoder))
    assert model.streams == ENCODERS.get(encoder).streams
    if not model.streams:
        with pytest.raises(ValueError, match="does not stream"):
            model.init_state(1)


class _Unit(torch.nn.Module):
    def __init__(self, module):
        super().__init__()
        self.inner = module


@pytest.mark.parametrize("encoder", ALL_ENCODERS)
def test_fsdp_auto_wrap_policy_wraps_exactly_the_declared_units(encoder):
    from torch.distributed.fsdp.wrap import _recursive_wrap

    model = SequentialRecommender(small(encoder))
    declared = {id(m) for m in model.wrap_units()}
    wrapped = []

    def wrapper(module, **kwargs):
        wrapped.append(id(module))
        return _Unit(module)
    _recursive_wrap(model, auto_wrap_policy=EncoderWrapPolicy(), wrapper_cls=wrapper, ignored_modules=set(),
                    ignored_params=set(), only_wrap_children=True)
    assert set(wrapped) == declared and len(wrapped) == len(declared)


def test_no_module_dispatches_on_an_encoder_or_loss_name():
    """Capabilities are asked of the registry, never read off a name."""
    pattern = re.compile(r"""[=!]=\s*["'](elastic|sasrec|naive|hstu|gru4rec|full_softmax|bce|sampled_softmax)["']""")
    offenders = [f"{p.relative_to(REPO)}:{i}" for d in ("elastic_pl", "bench", "data_pipeline")
                 for p in sorted((REPO / d).rglob("*.py")) for i, line in enumerate(p.read_text().splitlines(), 1)
                 if pattern.search(line)]
    assert not offenders, offenders
