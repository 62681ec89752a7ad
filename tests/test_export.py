"""Serving export: TorchScript / ONNX artefacts of encode_last and step checked against eager."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from elastic_pl.export import check_export, export_serving, init_state, load_serving
from elastic_pl.model import ModelConfig, SequentialRecommender
from elastic_pl.model.dispatch import EMPTY

SHAPES = dict(num_items=60, max_positions=20, d_model=16, n_heads=2, n_layers=2, num_experts=3,
              chunk_size=4, use_memory=True, memory_subkeys=4, memory_topk=2, memory_key_dim=8,
              dropout=0.1, l2_normalize=True)
CFG = ModelConfig.from_flat(SHAPES)


def make_model(encoder: str = "elastic") -> SequentialRecommender:
    torch.manual_seed(0)  # each encoder takes the keys of SHAPES it declares
    return SequentialRecommender(ModelConfig.from_flat({**SHAPES, "encoder": encoder}, strict=False))  # train mode


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_elastic_torchscript_export_matches_eager(tmp_path):
    model = make_model()
    meta = export_serving(model, tmp_path, "torchscript", example_len=12)
    assert model.training  # the caller's model is untouched (export works on an eval copy)
    assert {p.name for p in tmp_path.iterdir()} == {"encode_last.pt", "step.pt", "items.pt", "serving.json"}
    assert json.loads((tmp_path / "serving.json").read_text()) == meta
    assert meta["config"] == dataclasses.asdict(model.cfg) and meta["encode_last"]["window"] == CFG.max_positions
    errors = check_export(model, tmp_path)  # other batch size and lengths, left padding, holes
    assert errors["encode_last"]["rel"] < 1e-4 and errors["step"]["rel"] < 1e-4

    # The server's view: no Python model code, no pickle (jit.load, weights_only tensor, JSON).
    meta, encode_last, step, items = load_serving(tmp_path)
    eager = SequentialRecommender(model.cfg)
    eager.load_state_dict(model.state_dict())
    eager.eval()
    assert torch.equal(items, torch.load(tmp_path / "items.pt", weights_only=True))
    assert torch.allclose(items, eager.item_matrix(), atol=0, rtol=0)
    names = [s["name"] for s in meta["step"]["state"]]
    assert names == list(eager.init_state(1))
    state = init_state(meta, 3)
    for t, ref in zip(state, eager.init_state(3).values()):
        assert t.dtype == ref.dtype and torch.equal(t, ref)
    assert float(state[names.index("0.disp_m")].max()) == pytest.approx(EMPTY)

    # step streams 2C + 3 items (crossing two chunk boundaries) and matches forward everywhere.
    g = torch.Generator().manual_seed(1)
    T = 2 * CFG.encoder.chunk_size + 3
    seq = torch.randint(1, CFG.num_items + 1, (3, T), generator=g)
    with torch.no_grad():
        ref = eager(seq)
        for t in range(T):
            hidden, state = step(state, seq[:, t])
            assert rel_err(hidden, ref[:, t]) < 1e-4, t
        # encode_last on a new batch size and length with left-padded rows
        x = torch.randint(1, CFG.num_items + 1, (7, 9), generator=g)
        x[1:, :4] = 0
        assert rel_err(encode_last(x), eager.encode_last(x)) < 1e-4


def test_sasrec_torchscript_export_has_no_step(tmp_path):
    model = make_model("sasrec")
    meta = export_serving(model, tmp_path, "torchscript", example_len=10)
    assert meta["step"] is None and meta["encode_last"]["window"] is None  # fully dynamic length
    assert not (tmp_path / "step.pt").exists()
    errors = check_export(model, tmp_path)
    assert set(errors) == {"items", "encode_last"} and errors["encode_last"]["rel"] < 1e-4


def test_check_export_detects_a_stale_artefact(tmp_path):
    model = make_model("sasrec")
    export_serving(model, tmp_path, "torchscript", example_len=8)
    with torch.no_grad():
        model.encoder.norm.weight.mul_(1.5)
    with pytest.raises(RuntimeError, match="differ from eager"):
        check_export(model, tmp_path)


def test_unknown_format_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="format"):
        export_serving(make_model("sasrec"), tmp_path, "tflite")


def test_sasrec_onnx_export_matches_eager(tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    model = make_model("sasrec")
    export_serving(model, tmp_path, "onnx", example_len=10)
    onnx.checker.check_model(onnx.load(str(tmp_path / "encode_last.onnx")))
    assert check_export(model, tmp_path)["encode_last"]["rel"] < 1e-4


@pytest.mark.slow
def test_elastic_onnx_export_matches_eager(tmp_path):
    """encode_last goes through torch.export + onnxscript (~30-80 s on a small shared CPU)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    model = make_model()
    export_serving(model, tmp_path, "onnx", example_len=12)
    for name in ("encode_last.onnx", "step.onnx"):
        onnx.checker.check_model(onnx.load(str(tmp_path / name)))
    errors = check_export(model, tmp_path, batch=4)
    assert errors["encode_last"]["rel"] < 1e-4 and errors["step"]["rel"] < 1e-4


def test_newest_positions_export_encode_last_only(tmp_path):
    torch.manual_seed(0)
    model = SequentialRecommender(ModelConfig.from_flat({**SHAPES, "positions": "newest"}))
    meta = export_serving(model, tmp_path, "torchscript", example_len=12)
    assert meta["step"] is None and not (tmp_path / "step.pt").exists()  # positions move: no streaming
    errors = check_export(model, tmp_path)  # left padding and holes: positions count back from the newest
    assert set(errors) == {"items", "encode_last"} and errors["encode_last"]["rel"] < 1e-4
