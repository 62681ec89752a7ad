"""Config layers: several YAML files merged in order, each may name its own layers first.

A run is built from layers, e.g. ``--config configs/data/amazon-beauty.yaml --config
configs/model/sasrec.yaml --config configs/recipe/short-sparse.yaml``, or one experiment file whose
``defaults:`` list names them (paths relative to that file, ``.yaml`` optional)::

    defaults: [data/amazon-beauty, model/elastic, recipe/short-sparse]
    run:
      experiment: amazon-beauty-elastic

A file's ``defaults`` are merged before the file's own keys, depth first, so later layers win.
Every layer is read and checked here (exists, is a mapping, not empty, no cycle); the caller merges
the returned layers one by one so that a bad key is reported with the file that holds it.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

DEFAULTS_KEY = "defaults"


class LayerError(ValueError):
    """A config file that cannot be a layer; the message names the file."""


def _read(path: Path) -> DictConfig:
    if not path.is_file():
        raise LayerError(f"config file not found: {path}")
    try:
        node = OmegaConf.load(path)
    except (OmegaConfBaseException, yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LayerError(f"{path}: not valid YAML ({first})") from None
    if not isinstance(node, DictConfig):
        raise LayerError(f"{path}: the top level must be a mapping of config sections (run:, data:, "
                         f"model:, ...), got a {type(node).__name__.replace('Config', '').lower()}")
    if len(node) == 0:
        raise LayerError(f"{path}: the config file is empty")
    return node


def _defaults(node: DictConfig, path: Path) -> List[Path]:
    names = node.get(DEFAULTS_KEY)
    if names is None:
        return []
    if not OmegaConf.is_list(names) or not all(isinstance(n, str) and n for n in names):
        raise LayerError(f"{path}: '{DEFAULTS_KEY}' must be a list of config file names, e.g. "
                         f"[data/amazon-beauty, model/elastic]")
    out = []
    for name in names:
        p = (path.parent / name)
        out.append(p if p.suffix in (".yaml", ".yml") else p.with_name(p.name + ".yaml"))
    return out


def expand(paths: List[str]) -> List[Tuple[str, DictConfig]]:
    """``(file, its own keys)`` for every layer in merge order, ``defaults`` expanded depth first."""
    layers: List[Tuple[str, DictConfig]] = []

    def visit(path: Path, stack: Tuple[Path, ...]) -> None:
        key = path.resolve()
        if key in stack:
            chain = " -> ".join(str(p) for p in (*stack, key))
            raise LayerError(f"{path}: config files include each other in a cycle: {chain}")
        node = _read(path)
        for sub in _defaults(node, path):
            visit(sub, (*stack, key))
        own = OmegaConf.masked_copy(node, [k for k in node.keys() if k != DEFAULTS_KEY])
        if len(own):
            layers.append((str(path), own))

    for p in paths:
        visit(Path(p), ())
    return layers
