"""Registries: a component name -> the class that implements it (encoders, losses).

A built-in component is one module plus one line in the table below, as ``name: "module:Class"``
(imported on first use, so naming a component costs nothing until it is built). A name may also
be a dotted path ``package.module:ClassName``: a class in the user's own package, found the same
way, so a new encoder or loss needs no change to this repository. The class declares everything
else itself: its frozen config dataclass (``Class.Config``, whose fields are the component's config
keys) and its capabilities (see ``encoder.SequenceEncoder``, ``losses.Loss``).
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Mapping


class UnknownComponent(ValueError):
    """A name that is neither registered nor an importable ``package.module:ClassName``."""


class Registry:
    """``name -> class`` for one kind of component (``kind``: "encoder", "loss")."""

    def __init__(self, kind: str, base: str, builtin: Mapping[str, str]):
        self.kind, self._base, self._builtin = kind, base, dict(builtin)
        self._cache: dict[str, type] = {}

    def names(self) -> list[str]:
        """The registered names (dotted paths are accepted too, but not listed)."""
        return list(self._builtin)

    def get(self, name: str) -> type:
        """The class for ``name`` (a registered name or ``package.module:ClassName``)."""
        if name not in self._cache:
            self._cache[name] = self._load(name)
        return self._cache[name]

    def config_class(self, name: str) -> type:
        return self.get(name).Config

    def default_config(self, name: str):
        """The component's config with its defaults, ``name`` filled in."""
        return self.config_class(name)(name=name)

    def config_from_dict(self, values: Mapping[str, Any]):
        """A config dataclass from ``{"name": ..., field: value, ...}`` (a saved run or checkpoint).
        Keys the component does not declare are an error naming them."""
        values = dict(values)
        name = values.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"model.{self.kind}.name: missing (got {values!r})")
        cls = self.config_class(name)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"model.{self.kind}.{unknown[0]}: not a key of {self.kind} {name!r} "
                             f"(its keys: {', '.join(sorted(known))})")
        return cls(**values)

    def _load(self, name: str) -> type:
        path = self._builtin.get(name, name)
        if ":" not in path:
            raise UnknownComponent(f"model.{self.kind}.name: unknown {self.kind} {name!r}; registered: "
                                   f"{', '.join(self.names())}, or a dotted path package.module:ClassName")
        module_name, _, attr = path.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise UnknownComponent(f"model.{self.kind}.name: cannot import module {module_name!r} of "
                                   f"{name!r} ({e})") from None
        cls = getattr(module, attr, None)
        if cls is None:
            raise UnknownComponent(f"model.{self.kind}.name: module {module_name!r} has no {attr!r}")
        self._check(name, cls)
        return cls

    def _check(self, name: str, cls: Any) -> None:
        base = _import(self._base)
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise UnknownComponent(f"model.{self.kind}.name: {name!r} is not a subclass of {self._base}")
        config = getattr(cls, "Config", None)
        config_base = base.Config
        if not (dataclasses.is_dataclass(config) and isinstance(config, type) and issubclass(config, config_base)
                and config is not config_base):
            raise UnknownComponent(f"model.{self.kind}.name: {name!r} must declare its own Config, a "
                                   f"dataclass subclass of {config_base.__module__}.{config_base.__qualname__}")


def _import(path: str) -> type:
    module_name, _, attr = path.partition(":")
    return getattr(importlib.import_module(module_name), attr)


ENCODERS = Registry("encoder", "elastic_pl.model.encoder:SequenceEncoder", {
    "elastic": "elastic_pl.model.elastic:ElasticEncoder",
    "sasrec": "elastic_pl.model.sasrec:SASRecEncoder",
    "naive": "elastic_pl.model.sasrec:NaiveAttentionEncoder",
    "hstu": "elastic_pl.model.hstu:HSTUEncoder",
    "gru4rec": "elastic_pl.model.gru4rec:GRU4RecEncoder",
})

LOSSES = Registry("loss", "elastic_pl.model.losses:Loss", {
    "sampled_softmax": "elastic_pl.model.losses:SampledSoftmax",
    "full_softmax": "elastic_pl.model.losses:FullSoftmax",
    "bce": "elastic_pl.model.losses:BinaryCrossEntropy",
    "in_batch_softmax": "elastic_pl.model.losses_large:InBatchSoftmax",
    "mixed_softmax": "elastic_pl.model.losses_large:MixedSoftmax",
})
