"""GRU4Rec: a recurrent encoder that streams through the same init_state/step as ELASTIC (step ==
forward is checked for every streaming encoder in test_registry.py), causal, padding independent,
exported with its step."""
from __future__ import annotations

import pytest
import torch

from elastic_pl.model import ENCODERS, ModelConfig, SequentialRecommender, state_bytes


def model_of(**kw) -> SequentialRecommender:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**dict(num_items=40, d_model=12, n_layers=2, dropout=0.0, max_positions=16), **kw},
                      encoder=ENCODERS.default_config("gru4rec"))
    return SequentialRecommender(cfg).eval()


def rel_err(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_no_position_table_and_a_state_of_one_hidden_vector_per_layer():
    model = model_of()
    assert model.embedding.positions is None
    assert state_bytes(model.init_state(3)) == 3 * (8 + 2 * 12 * 4)  # the counter and [L, D] fp32 per user
    # past max_positions nothing changes: there are no positions to run out of
    items = torch.randint(1, 41, (2, 40))
    with torch.no_grad():
        full, state = model(items), model.init_state(2)
        for t in range(40):
            hidden, state = model.step(state, items[:, t])
        assert rel_err(hidden, full[:, -1]) < 1e-5


def test_causal_and_padding_independent():
    model = model_of()
    items = torch.randint(1, 41, (3, 15))
    items[1, :4] = 0
    items[2, 1::3] = 0
    with torch.no_grad():
        base = model(items)
        changed = items.clone()
        changed[:, 8:] = torch.where(items[:, 8:] > 0, items[:, 8:] % 40 + 1, 0)
        assert torch.equal(model(changed)[:, :8], base[:, :8])
        compact = items[2][items[2] != 0][None]
        assert rel_err(base[2][items[2] != 0], model(compact)[0]) < 1e-5


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_writes_and_checks_the_step(tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    from elastic_pl.export import check_export, export_serving

    model = model_of()
    meta = export_serving(model, tmp_path, fmt, example_len=9)
    assert [s["name"] for s in meta["step"]["state"]] == ["count", "gru.h"] and meta["encode_last"]["window"] is None
    errors = check_export(model, tmp_path)
    assert errors["step"]["rel"] < 1e-4 and errors["encode_last"]["rel"] < 1e-4
