"""The model's configuration: the shared keys, plus the chosen encoder's and loss's own configs.

``ModelConfig.encoder`` is the encoder's frozen config (``model.encoder.name`` and that encoder's
keys only: ``model.encoder.num_experts`` exists for ELASTIC, not for SASRec); ``ModelConfig.loss``
likewise for the loss. Both classes come from the registries (registry.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from .encoder import EncoderConfig
from .losses import LossConfig
from .registry import ENCODERS, LOSSES


POSITIONS = ("oldest", "newest")


def _default_encoder() -> EncoderConfig:
    return ENCODERS.default_config("elastic")


def _default_loss() -> LossConfig:
    return LOSSES.default_config("sampled_softmax")


@dataclass(frozen=True)
class ModelConfig:
    """Keys every encoder shares: V items, D width, L layers, the embedding's positions and
    dropout, and how scores are formed (``l2_normalize``)."""

    num_items: int = 1000  # V; item ids 1..V, 0 = padding
    max_positions: int = 200  # learned positions; later positions reuse the last one
    # which end of the window learned positions count from: "oldest" (streams: step == forward)
    # or "newest" (the last item is always at max_positions - 1, as left-padded SASRec; no step)
    positions: str = "oldest"
    d_model: int = 64  # D
    n_layers: int = 2  # L
    dropout: float = 0.1
    l2_normalize: bool = False  # scores are cosine similarities
    encoder: EncoderConfig = field(default_factory=_default_encoder)
    loss: LossConfig = field(default_factory=_default_loss)

    def __post_init__(self) -> None:
        def need(cond: bool, name: str, msg: str) -> None:
            if not cond:
                raise ValueError(f"model.{name}: {msg} (got {getattr(self, name)!r})")

        need(self.num_items >= 1, "num_items", "must be >= 1")
        need(self.max_positions >= 1, "max_positions", "must be >= 1")
        need(self.positions in POSITIONS, "positions", f"must be one of {sorted(POSITIONS)}")
        need(self.d_model >= 1, "d_model", "must be >= 1")
        need(self.n_layers >= 1, "n_layers", "must be >= 1")
        need(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        need(isinstance(self.encoder, EncoderConfig), "encoder", "must be an encoder config")
        need(isinstance(self.loss, LossConfig), "loss", "must be a loss config")
        self.encoder.check(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
        """From ``dataclasses.asdict`` of a ModelConfig (checkpoints, serving.json). A dict in the
        flat layout of earlier versions (``encoder: "elastic"``, ``num_experts: 16``, ... side
        by side) is read too: see :meth:`from_flat`."""
        values = dict(values)
        if not isinstance(values.get("encoder"), Mapping):
            return cls.from_flat(values, strict=False)
        values["encoder"] = ENCODERS.config_from_dict(values["encoder"])
        values["loss"] = LOSSES.config_from_dict(values["loss"])
        return cls(**values)

    @classmethod
    def from_flat(cls, values: Mapping[str, Any], strict: bool = True) -> "ModelConfig":
        """From one flat mapping: ``encoder`` and ``loss`` name the components (defaults:
        elastic, sampled_softmax) and every other key goes to whichever of the model, the encoder
        or the loss declares it. ``strict``: a key none declares is an error; otherwise it is
        dropped (the old flat layout carried every encoder's keys whatever the encoder)."""
        values = dict(values)
        encoder = ENCODERS.config_class(values.get("encoder", "elastic"))
        loss = LOSSES.config_class(values.get("loss", "sampled_softmax"))
        parts: dict[type, dict] = {cls: {}, encoder: {"name": values.pop("encoder", "elastic")},
                                   loss: {"name": values.pop("loss", "sampled_softmax")}}
        for key, value in values.items():
            owners = [c for c in parts if key in {f.name for f in dataclasses.fields(c)}]
            if len(owners) > 1 and strict:
                raise ValueError(f"model: key {key!r} is declared by several of {[c.__name__ for c in owners]}")
            if not owners:
                if strict:
                    raise ValueError(f"model: no key {key!r} in the model, encoder "
                                     f"{parts[encoder]['name']!r} or loss {parts[loss]['name']!r}")
                continue
            parts[owners[0]][key] = value
        return cls(**parts[cls], encoder=encoder(**parts[encoder]), loss=loss(**parts[loss]))
