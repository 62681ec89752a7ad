"""Export the serving path (``encode_last``, ``step`` where the encoder streams, the item table)
and check it.

``export_serving`` writes to ``out_dir``:
  * ``encode_last.{pt,onnx}``: items int64 [B, N] (any padding pattern), and timestamps int64
    [B, N] where the encoder reads them (``serving.json["encode_last"]["inputs"]``) -> hidden [B, D];
  * ``step.{pt,onnx}`` (encoders that stream: ELASTIC, GRU4Rec): (state tensors..., items int64 [B]) -> (hidden [B, D],
    new state tensors...), the state in the order of ``serving.json["step"]["state"]``;
  * ``items.pt``: the item matrix [V+1, D], a plain tensor (``torch.load(weights_only=True)``);
  * ``serving.json``: model config, file names, state names/shapes/dtypes/initial values, so a
    server needs no Python model code: ``scores = query(hidden) @ items.T`` where ``query``
    L2-normalises iff ``l2_normalize``; item 0 is padding and never ranked.

Two export details:
  * compaction (``model/padding.py``) sorts a unique key with a plain argsort, since the ONNX
    exporter rejects ``argsort(stable=True)``;
  * LDA's prefix scan runs ceil(log2(#chunks)) steps, a Python loop over a shape that tracing
    (and torch.export guards) freeze at the example's length. For an encoder that declares
    ``fixed_export_window`` (ELASTIC), ``encode_last`` therefore takes the last ``window``
    columns, left-padding shorter inputs, so the graph has one internal length: any N <= window
    is exact (padding never changes real outputs), longer inputs are truncated to their last
    ``window`` columns. The others (SASRec, ...) are fully dynamic.
Loading (``load_serving``) needs no Python model code and no general pickle: ``torch.jit.load``
(TorchScript's own restricted unpickler) or onnxruntime, ``torch.load(weights_only=True)``, JSON.
ELASTIC ``encode_last`` to ONNX goes through torch.export + onnxscript (slow: ~1 min on 2 CPUs).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .model import SequentialRecommender

FORMATS = ("torchscript", "onnx")
SUFFIX = {"torchscript": ".pt", "onnx": ".onnx"}
ONNX_OPSET = 18


class EncodeLast(nn.Module):
    """``model.encode_last`` with an optional fixed window (see the module docstring)."""

    def __init__(self, model: SequentialRecommender, window: int | None):
        super().__init__()
        self.model, self.window = model, window

    def forward(self, items: torch.Tensor, timestamps: torch.Tensor | None = None) -> torch.Tensor:
        if self.window is not None:  # last `window` columns, left-padded: one internal length
            items = F.pad(items, (self.window, 0))[:, -self.window:]
            if timestamps is not None:
                timestamps = F.pad(timestamps, (self.window, 0))[:, -self.window:]
        return self.model(items, last_only=True, timestamps=timestamps)


class Step(nn.Module):
    """``model.step`` on a tuple of state tensors (in ``keys`` order) instead of a dict."""

    def __init__(self, model: SequentialRecommender, keys: list[str]):
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, state: tuple[torch.Tensor, ...], items: torch.Tensor):
        hidden, new = self.model.step(dict(zip(self.keys, state)), items)
        return hidden, tuple(new[k] for k in self.keys)


def _serving_copy(model: SequentialRecommender) -> SequentialRecommender:
    model = copy.deepcopy(model).cpu().float().eval()
    for m in model.modules():
        if hasattr(m, "track_usage"):
            m.track_usage = False  # no buffer writes in the serving graph
    return model


def _state_spec(model: SequentialRecommender) -> list[dict]:
    """Name, per-user shape, dtype and constant initial value of every state tensor."""
    spec = []
    for name, t in model.init_state(1).items():
        fill = t.flatten()[0].item()
        if not bool((t == fill).all()):
            raise ValueError(f"init_state[{name!r}] is not constant; cannot describe it in serving.json")
        spec.append({"name": name, "shape": list(t.shape[1:]), "dtype": str(t.dtype).removeprefix("torch."),
                     "init": fill})
    return spec


def init_state(meta: dict, batch: int) -> list[torch.Tensor]:
    """The initial step state for ``batch`` users, from ``serving.json`` alone."""
    return [torch.full((batch, *s["shape"]), s["init"], dtype=getattr(torch, s["dtype"]))
            for s in meta["step"]["state"]]


def _export_one(module: nn.Module, args: tuple, path: Path, fmt: str, in_names: list[str],
                out_names: list[str], dynamic: dict[str, dict[int, str]], window: int | None = None) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit.trace / legacy-ONNX deprecation and tracer warnings
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(module, args, check_trace=False), str(path))
        elif window is None:  # the TorchScript-based ONNX exporter: fast, batch stays dynamic
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=in_names, output_names=out_names, dynamic_axes=dynamic)
        else:
            # ELASTIC encode_last: the TorchScript-based exporter's shape inference freezes the
            # batch size inside LDA (a Reshape in dispatch.chunk_partials), so go through
            # torch.export (needs onnxscript). onnxscript only translates 4-D
            # scaled_dot_product_attention (LDA's is 5-D), hence the decomposition first.
            dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("length", max=window)}
            shapes = {"items": dims, "timestamps": dims}
            ep = torch.export.export(module, args, dynamic_shapes={n: shapes[n] for n in in_names}).run_decompositions()
            torch.onnx.export(ep, args, str(path), dynamo=True, opset_version=ONNX_OPSET, input_names=in_names,
                              output_names=out_names, external_data=False, verbose=False)


def export_serving(model: SequentialRecommender, out_dir: Path, format: Literal["torchscript", "onnx"] = "torchscript",
                   example_len: int = 16, max_len: int | None = None) -> dict:
    """Write the serving artefacts (fp32, eval mode, CPU) and ``serving.json``; returns its content.

    ``example_len`` is the traced example's length (checks use others); ``max_len`` is the
    ``encode_last`` window of an encoder with ``fixed_export_window`` (default ``cfg.max_positions``). The model itself is not modified."""
    if format not in FORMATS:
        raise ValueError(f"export_serving: format must be one of {FORMATS} (got {format!r})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, cfg, ext = _serving_copy(model), model.cfg, SUFFIX[format]
    window = (max_len or cfg.max_positions) if type(model.encoder).fixed_export_window else None
    example_len = min(example_len, window or example_len)
    example = torch.randint(1, cfg.num_items + 1, (2, example_len), generator=torch.Generator().manual_seed(0))
    example[1, : example_len // 2] = 0
    inputs = {"items": example}
    if cfg.encoder.needs_timestamps:  # int64 seconds aligned with items
        inputs["timestamps"] = torch.cumsum(torch.randint(0, 10**6, example.shape, generator=torch.Generator()
                                                          .manual_seed(1)), dim=1)
    _export_one(EncodeLast(model, window), tuple(inputs.values()), out_dir / f"encode_last{ext}", format,
                list(inputs), ["hidden"], {**{n: {0: "batch", 1: "length"} for n in inputs}, "hidden": {0: "batch"}},
                window)
    meta = {"format_version": 1, "format": format, "config": dataclasses.asdict(cfg),
            "l2_normalize": cfg.l2_normalize, "onnx_opset": ONNX_OPSET if format == "onnx" else None,
            "encode_last": {"file": f"encode_last{ext}", "window": window, "example_shape": list(example.shape),
                            "inputs": list(inputs)},
            "items": {"file": "items.pt", "shape": [cfg.num_items + 1, cfg.d_model]}, "step": None}
    if model.streams:
        spec = _state_spec(model)
        keys = [s["name"] for s in spec]
        meta["step"] = {"file": f"step{ext}", "state": spec}
        state = tuple(init_state(meta, 2))
        ins, outs = [f"state.{k}" for k in keys] + ["items"], ["hidden"] + [f"new_state.{k}" for k in keys]
        _export_one(Step(model, keys), (state, example[:, 0]), out_dir / f"step{ext}", format, ins, outs,
                    {n: {0: "batch"} for n in ins + outs})
    with torch.no_grad():
        torch.save(model.item_matrix().detach().clone().contiguous(), out_dir / "items.pt")
    (out_dir / "serving.json").write_text(json.dumps(meta, indent=2))
    return meta


def load_serving(out_dir: Path) -> tuple[dict, Callable, Callable | None, torch.Tensor]:
    """(meta, encode_last(items[, timestamps]) -> hidden, step(state list, items) -> (hidden, state
    list), items); encode_last takes the inputs ``meta["encode_last"]["inputs"]`` names."""
    out_dir = Path(out_dir)
    meta = json.loads((out_dir / "serving.json").read_text())
    items = torch.load(out_dir / meta["items"]["file"], weights_only=True)
    if meta["format"] == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in 2.13
            enc = torch.jit.load(str(out_dir / meta["encode_last"]["file"]))
            step_mod = torch.jit.load(str(out_dir / meta["step"]["file"])) if meta["step"] else None

        def step(state, x):
            hidden, new = step_mod(tuple(state), x)
            return hidden, list(new)
        return meta, enc, step if step_mod else None, items
    import onnxruntime as ort  # optional dev dependency

    def session(name: str) -> Callable[..., list[torch.Tensor]]:
        sess = ort.InferenceSession(str(out_dir / name), providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        return lambda *xs: [torch.from_numpy(o) for o in sess.run(None, {n: x.numpy() for n, x in zip(names, xs)})]
    enc_sess = session(meta["encode_last"]["file"])
    step_sess = session(meta["step"]["file"]) if meta["step"] else None

    def step(state, x):
        out = step_sess(*state, x)
        return out[0], out[1:]
    return meta, lambda *xs: enc_sess(*xs)[0], step if step_sess else None, items


def _errors(got: torch.Tensor, ref: torch.Tensor) -> dict:
    diff = float((got.float() - ref.float()).abs().max())
    return {"abs": diff, "rel": diff / max(float(ref.float().abs().max()), 1e-30)}


def check_export(model: SequentialRecommender, out_dir: Path, batch: int = 5, seed: int = 0,
                 rtol: float = 1e-4) -> dict:
    """Run the artefacts against eager on random inputs whose batch size and lengths differ from
    the export example, with left-padded rows and a row with holes; ``step`` streams the
    encoder's ``stream_check_length()`` items (ELASTIC: 2C+3) from the JSON-described initial state against ``forward``. Raises if a rel error > ``rtol``."""
    meta, enc, step, items = load_serving(out_dir)
    model, cfg = _serving_copy(model), model.cfg
    g = torch.Generator().manual_seed(seed)
    window = meta["encode_last"]["window"]
    n0 = meta["encode_last"]["example_shape"][1]  # check other lengths than the traced one
    lengths = {min(n, window or n) for n in (n0 // 2 + 1, n0 + 5, window or 2 * n0)} - {n0}
    result = {"items": _errors(items, model.item_matrix().detach())}
    worst = {"abs": 0.0, "rel": 0.0}
    with torch.no_grad():
        for n in sorted(lengths):
            x = torch.randint(1, cfg.num_items + 1, (batch, n), generator=g)
            pads = torch.randint(0, n, (batch,), generator=g)
            x[torch.arange(n)[None, :] < pads[:, None]] = 0  # left padding, >= 1 real item per row
            x[-1, torch.rand(n, generator=g) < 0.3] = 0  # holes
            x[-1, -1] = max(int(x[-1, -1]), 1)
            inputs = [x]
            if "timestamps" in meta["encode_last"].get("inputs", []):
                inputs.append(torch.cumsum(torch.randint(0, 10**6, x.shape, generator=g), dim=1))
            e = _errors(enc(*inputs), model.encode_last(*inputs))
            worst = {k: max(worst[k], e[k]) for k in worst}
        result["encode_last"] = worst
        if step is not None:
            T = model.encoder.stream_check_length()
            seq = torch.randint(1, cfg.num_items + 1, (batch, T), generator=g)
            ref, state, worst = model(seq), init_state(meta, batch), {"abs": 0.0, "rel": 0.0}
            for t in range(T):
                hidden, state = step(state, seq[:, t])
                e = _errors(hidden, ref[:, t])
                worst = {k: max(worst[k], e[k]) for k in worst}
            result["step"] = worst
    bad = {k: v["rel"] for k, v in result.items() if not v["rel"] <= rtol}
    if bad:
        raise RuntimeError(f"check_export: {meta['format']} artefacts differ from eager (rel > {rtol}): {bad}")
    return result
