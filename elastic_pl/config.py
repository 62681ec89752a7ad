"""The one typed config tree (OmegaConf structured configs).

A run's config = these dataclass defaults (no input data; CPU, one process, W&B offline) <- YAML
layers from ``configs/`` (several ``--config`` files and their ``defaults:`` lists, in order; see
``config_layers``) <- ``key=value`` overrides. An unknown key or a value of the wrong type is an
error naming the key and the file it came from, raised before any work starts. The resolved tree,
with the list of its layers (``run.config_files``), is saved with every run and checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Union

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from data_pipeline.config import PrepareConfig, SourceConfig, SyntheticConfig
from data_pipeline.datamodule import LoaderConfig

from .config_components import check_components, select_components
from .config_layers import LayerError, expand
from .model.config import ModelConfig
from .sparse_optim import ITEM_TABLE_UPDATES


class ConfigError(ValueError):
    """A bad config key, type or value; the message names the key and its source."""


def _need(cond: bool, key: str, msg: str, value) -> None:
    if not cond:
        raise ValueError(f"{key}: {msg} (got {value!r})")


@dataclass
class RunConfig:
    root: str = "runs"
    experiment: str = "default"
    run_id: Optional[str] = None  # None: a new timestamped id, so a new run
    dir: Optional[str] = None  # overrides root/experiment/run_id (SLURM: stable per experiment)
    seed: int = 0  # model init and dropout; also the data order unless data.loader.seed is set
    config_files: List[str] = field(default_factory=list)  # the YAML layers merged, in order (set by load_config)
    # a config that differs from the run directory's config.yaml: error (list the keys) | new_run
    # (a fresh sibling directory) | allow (apply what a resume can apply, refuse the rest)
    on_config_change: str = "error"


@dataclass
class DataConfig:
    """No input by default: a config file names the event log (``source``) and where its shards go
    (``prepare.output_dir``), or a ``synthetic`` section to generate one (configs/default.yaml)."""

    synthetic: Optional[SyntheticConfig] = None  # set: generate source.path first if it does not exist
    source: SourceConfig = field(default_factory=SourceConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    loader: LoaderConfig = field(default_factory=lambda: LoaderConfig(data_dir="${data.prepare.output_dir}",
                                                                       seed="${run.seed}"))


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.01  # on nn.Linear weights only (not embeddings, memory, norms, biases)
    memory_lr_mult: float = 1.0  # the interest memory's values train at lr * memory_lr_mult
    beta1: float = 0.9
    beta2: float = 0.98
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    # how the item table is updated: dense (AdamW, like the rest) | rowwise_adagrad | lazy_adam (only
    # the rows a batch touches; elastic_pl/sparse_optim.py). Row-sparse needs a loss that reads rows.
    item_table: str = "dense"
    item_table_lr: Optional[float] = None  # a row-sparse table's learning rate (default: lr)

    def __post_init__(self) -> None:
        _need(self.lr > 0, "optim.lr", "must be > 0", self.lr)
        _need(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0", self.weight_decay)
        _need(self.memory_lr_mult >= 0, "optim.memory_lr_mult", "must be >= 0", self.memory_lr_mult)
        for name in ("beta1", "beta2"):
            _need(0 <= getattr(self, name) < 1, f"optim.{name}", "must be in [0, 1)", getattr(self, name))
        _need(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0", self.warmup_steps)
        _need(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]", self.min_lr_ratio)
        if self.item_table not in ITEM_TABLE_UPDATES:
            raise ValueError(f"optim.item_table: must be one of {ITEM_TABLE_UPDATES} (got {self.item_table!r})")
        if self.item_table_lr is not None and self.item_table_lr <= 0:
            raise ValueError(f"optim.item_table_lr: must be > 0 (got {self.item_table_lr})")


@dataclass
class TrainerConfig:
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int = 1  # per node; = --ntasks-per-node under SLURM
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp (GPU) | fsdp2 (ModelParallelStrategy, also CPU)
    precision: str = "32-true"  # bf16-mixed on GPU
    max_epochs: int = 10
    max_steps: int = -1
    max_time_minutes: Optional[float] = None
    gradient_clip_val: float = 1.0
    check_val_every_n_epoch: int = 1
    limit_val_batches: Optional[float] = None
    # the final test of `train` scores only this many batches per rank instead of every user (at
    # 10^6+ users x 10^6+ items a full test takes hours); test/count says how many were scored
    limit_test_batches: Optional[int] = None
    log_every_n_steps: int = 50
    checkpoint_every_n_steps: int = 0  # 0 = off; else also keep a checkpoint every N steps
    early_stopping_patience: int = 0  # validations without val/ndcg@10 improvement; 0 = off
    compile: bool = False
    compile_backend: str = "inductor"  # torch.compile backend (aot_eager: no code generation, for checks)
    progress_bar: bool = True
    dist_timeout_minutes: float = 10.0  # a collective waiting longer (a hung or stopped rank) fails the run

    def __post_init__(self) -> None:
        if self.limit_test_batches is not None and self.limit_test_batches < 1:  # 0 would skip the test
            raise ValueError(f"trainer.limit_test_batches: must be >= 1 or null (got {self.limit_test_batches})")
        for name in ("devices", "num_nodes", "check_val_every_n_epoch", "log_every_n_steps"):
            _need(getattr(self, name) >= 1, f"trainer.{name}", "must be >= 1", getattr(self, name))
        for name in ("max_epochs", "max_steps"):  # -1: no limit; 0 is reported by train (no step ran)
            _need(getattr(self, name) >= -1, f"trainer.{name}", "must be >= 0, or -1 for no limit", getattr(self, name))
        for name in ("gradient_clip_val", "checkpoint_every_n_steps", "early_stopping_patience"):  # 0: off
            _need(getattr(self, name) >= 0, f"trainer.{name}", "must be >= 0 (0: off)", getattr(self, name))
        _need(self.dist_timeout_minutes > 0, "trainer.dist_timeout_minutes", "must be > 0", self.dist_timeout_minutes)
        _need(self.max_time_minutes is None or self.max_time_minutes > 0, "trainer.max_time_minutes",
              "must be > 0 or null (no limit)", self.max_time_minutes)
        v = self.limit_val_batches  # as Lightning reads it: a fraction of the batches, or a whole count
        _need(v is None or 0 <= v <= 1 or v > 1 and v == int(v), "trainer.limit_val_batches",
              "must be a fraction in [0, 1], a whole number of batches, or null", v)


@dataclass
class EvalConfig:
    filter_seen: bool = True  # exclude the user's history items from the ranking
    chunk_size: int = 65536  # items scored at once
    top_k: int = 100  # recommendations written by `predict`

    def __post_init__(self) -> None:
        _need(self.chunk_size >= 1, "eval.chunk_size", "must be >= 1", self.chunk_size)
        _need(self.top_k >= 1, "eval.top_k", "must be >= 1", self.top_k)


@dataclass
class WandbConfig:
    enabled: bool = True
    mode: str = "auto"  # auto: online if logged in, else offline | online | offline
    project: str = "elastic-pl"
    entity: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    log_artifacts: bool = True  # end of fit: the best checkpoint and config.yaml as W&B artifacts (docs/WANDB.md)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        check_components(self)  # what the encoder needs from the other sections


CHOICES = {
    "trainer.accelerator": ("auto", "cpu", "gpu", "cuda"),
    "trainer.strategy": ("auto", "ddp", "ddp_spawn", "fsdp", "fsdp2"),
    "trainer.precision": ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "transformer-engine",
                          "transformer-engine-float16", "32", "16", "bf16", "64"),  # what Lightning accepts
    "wandb.mode": ("auto", "online", "offline"),
}


def _merge(base, layer, source: str):
    base, layer = select_components(base, layer, source)  # model.encoder / model.loss typed by name
    try:
        return OmegaConf.merge(base, layer)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{source}: bad config key or value '{key}': {msg}") from None


def load_config(paths: Union[None, str, Sequence[str]] = None, overrides: Optional[List[str]] = None) -> Config:
    """Defaults <- YAML layers (in order, each after its own ``defaults:``) <- ``key=value``
    overrides, validated into a typed :class:`Config` (see ``config_layers``)."""
    files = [paths] if isinstance(paths, str) else list(paths or [])
    cfg = OmegaConf.structured(Config)
    try:
        layers = expand(files)
    except LayerError as e:
        raise ConfigError(str(e)) from None
    for source, layer in layers:
        cfg = _merge(cfg, layer, source)
    cfg.run.config_files = [source for source, _ in layers]
    for item in overrides or []:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"command line: override {item!r} is not of the form key=value")
        try:
            layer = OmegaConf.from_dotlist([item])
        except (OmegaConfBaseException, ValueError, yaml.YAMLError) as e:
            raise ConfigError(f"command line '{item}': cannot parse the value ({str(e).splitlines()[0]})") from None
        cfg = _merge(cfg, layer, f"command line '{item}'")
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}: must be one of {allowed} (got {value!r})")
    try:
        config = OmegaConf.to_object(cfg)
        OmegaConf.structured(config)  # to_object lets e.g. a mapping inside a List[str] through; this does not
    except OmegaConfBaseException as e:  # a value of the wrong type, an interpolation to a missing key
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"invalid config: '{key}': {str(e).splitlines()[0]}") from None
    except ValueError as e:  # dataclass __post_init__ checks
        raise ConfigError(f"invalid config: {e}") from None
    return config


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
