"""Config nodes typed by the component they name: ``model.encoder`` and ``model.loss``.

``model.encoder`` holds ``name`` plus the keys of that encoder's own config class (registry.py),
and nothing else, so a key of another encoder is an error naming the key and the file. Before each
layer (a YAML file or a ``key=value`` override) is merged, :func:`select_components` applies:

* the short form ``model.encoder: sasrec`` (``model.encoder=sasrec`` on the command line) means
  ``model.encoder.name: sasrec``;
* the rule for a change of component: a layer that sets ``name`` to another component than the
  one in effect starts that node again from the new component's defaults, then applies its own
  keys under it. Keys the earlier layers set for the old component do not carry over (ELASTIC's
  defaults, then a file selecting sasrec: no ``num_experts`` under sasrec), and neither do earlier
  keys when a later layer switches back. Naming the component already in effect changes nothing.
"""
from __future__ import annotations

import dataclasses

from omegaconf import DictConfig, OmegaConf, read_write
from omegaconf.errors import OmegaConfBaseException

from .model.registry import ENCODERS, LOSSES, Registry, UnknownComponent

COMPONENTS: dict[str, Registry] = {"encoder": ENCODERS, "loss": LOSSES}  # under model.


def _error(message: str):
    from .config import ConfigError  # config imports this module

    return ConfigError(message)


def select_components(base: DictConfig, layer: DictConfig, source: str) -> tuple[DictConfig, DictConfig]:
    """(base, layer) ready for ``OmegaConf.merge(base, layer)``; see the module docstring."""
    model = layer.get("model") if isinstance(layer, DictConfig) else None
    if not isinstance(model, DictConfig):
        return base, layer
    for key, registry in COMPONENTS.items():
        if key not in model:
            continue
        node = model[key]
        if isinstance(node, str):  # short form
            layer = OmegaConf.merge(layer)  # a copy: the caller's layer stays as it was read
            with read_write(layer.model):
                layer.model[key] = {"name": node}
            node = layer.model[key]
        if not isinstance(node, DictConfig):
            raise _error(f"{source}: model.{key} must be a {key} name or a mapping with 'name' (got {node!r})")
        name = node.get("name", base.model[key].name)
        if not isinstance(name, str) or not name:
            raise _error(f"{source}: model.{key}.name must be a non-empty string (got {name!r})")
        try:
            config_class = registry.config_class(name)
        except UnknownComponent as e:
            raise _error(f"{source}: {e}") from None
        known = {f.name for f in dataclasses.fields(config_class)}
        unknown = sorted(set(node.keys()) - known)
        if unknown:
            raise _error(f"{source}: model.{key}.{unknown[0]} is not a key of {key} {name!r} "
                         f"(its keys: {', '.join(sorted(known))})")
        if name != base.model[key].name:
            base = OmegaConf.merge(base)  # a copy, then the node starts again from the new defaults
            with read_write(base.model):
                base.model[key] = OmegaConf.structured(registry.default_config(name))
        _check_values(base.model[key], node, source)
    return base, layer


def _check_values(current: DictConfig, node: DictConfig, source: str) -> None:
    """The component's own checks (its ``__post_init__``) on the values after this layer, so a
    bad value is reported with the layer that set it. Type errors are left to the merge itself,
    whose message names the key."""
    try:
        merged = OmegaConf.merge(current, node)
    except OmegaConfBaseException:
        return
    if OmegaConf.missing_keys(merged) or any(OmegaConf.is_interpolation(merged, k) for k in merged):
        return  # resolved later, checked when the whole tree is built
    try:
        OmegaConf.to_object(merged)
    except ValueError as e:
        raise _error(f"{source}: {e}") from None


def check_components(cfg) -> None:
    """Cross-section needs of the chosen components, checked once the whole tree is built (before
    any work): an encoder that reads timestamps needs a loader that delivers them."""
    encoder = cfg.model.encoder
    if encoder.needs_timestamps and not getattr(cfg.data.loader, "timestamps", False):
        raise ValueError(f"model.encoder ({encoder.name!r}) reads timestamps but data.loader.timestamps is false: "
                         "set data.loader.timestamps=true (shards prepared from a source with timestamps), or "
                         "turn off what reads them in model.encoder")
