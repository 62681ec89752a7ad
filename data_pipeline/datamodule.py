"""``ElasticDataModule``: shards + manifest -> ready, left-padded batches on every rank.

Training (:class:`TrainDataset`): every (rank, worker) draws shards *with replacement* from its own
seeded RNG, takes one random window per eligible user per visit, shuffles users in a buffer and
collates whole batches inside the worker. Every rank yields exactly ``steps_per_epoch`` batches per
epoch, whatever the shard sizes, so DDP never waits on a rank that ran out.

Evaluation (:class:`EvalDataset`, val/test/predict): every user exactly once over all ranks and
workers, every rank the same number of batches, padding rows ``valid=False`` (see ``sharding``).

The DataLoader gets ``batch_size=None``: batches are built in the workers (numpy slicing per user),
which is far cheaper than one collate call per sample.
"""
import signal
from dataclasses import dataclass
from typing import List, Optional

import lightning as L
from torch.utils.data import DataLoader

from data_pipeline.manifest import load_manifest, resolve_urls, verify_checksums
from data_pipeline.sharding import EvalDataset, ShardReadError, TrainDataset, check_rank

SEEN_WINDOWS = ("history", "input")
MP_CONTEXTS = ("fork", "spawn", "forkserver")


@dataclass
class LoaderConfig:
    data_dir: str = "data/shards"
    max_len: int = 200
    batch_size: int = 128
    eval_batch_size: int = 256
    num_workers: int = 2
    shuffle_buffer: int = 10000  # users; memory ~ shuffle_buffer * (max_len + 1) * 4 bytes per worker
    steps_per_epoch: Optional[int] = None  # per rank; default ceil(num_users / (batch_size * world_size))
    seed: int = 0
    seen_window: str = "history"  # what `seen` (filter_seen) holds: whole "history" or the "input" window
    urls: Optional[List[str]] = None  # shard URLs (pipe:/http/s3...) in manifest order, overriding data_dir
    verify_checksums: bool = False  # sha256 of local shards against the manifest in setup()
    multiprocessing_context: Optional[str] = None  # None = platform default; fork/spawn/forkserver
    persistent_workers: bool = False
    pin_memory: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("max_len", "batch_size", "eval_batch_size", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoaderConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"LoaderConfig.num_workers must be >= 0, got {self.num_workers}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"LoaderConfig.steps_per_epoch must be >= 1 or None, got {self.steps_per_epoch}")
        if self.seen_window not in SEEN_WINDOWS:
            raise ValueError(f"LoaderConfig.seen_window must be one of {SEEN_WINDOWS}, got {self.seen_window!r}")
        if self.multiprocessing_context not in (None,) + MP_CONTEXTS:
            raise ValueError(f"LoaderConfig.multiprocessing_context must be None or one of {MP_CONTEXTS}, "
                             f"got {self.multiprocessing_context!r}")
        if self.persistent_workers and self.num_workers == 0:
            raise ValueError("LoaderConfig.persistent_workers needs num_workers >= 1")


class _EpochLoader(DataLoader):
    """Tells the dataset which epoch starts (for its RNG) before the workers copy it."""

    def __init__(self, *args, epoch_fn=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._epoch_fn, self._started = epoch_fn, 0

    def __iter__(self):
        epoch = self._epoch_fn() if self._epoch_fn is not None else None
        self.dataset.set_epoch(self._started if epoch is None else epoch)
        self._started += 1
        return super().__iter__()


def ignore_preemption_signal(worker_id: int) -> None:
    """DataLoader workers ignore SIGUSR1: SLURM signals every process of a job step, and a worker
    killed by it would take its rank down before Lightning's checkpoint-and-requeue handler runs."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


class ElasticDataModule(L.LightningDataModule):
    """Streams shards described by ``<data_dir>/manifest.json``.

    Rank and world size come from the attached trainer in :meth:`setup` (else the constructor's
    ``rank``/``world_size``) and are handed to the datasets explicitly.
    """

    def __init__(self, cfg: LoaderConfig, rank: int = 0, world_size: int = 1):
        super().__init__()
        if not isinstance(cfg, LoaderConfig):  # an OmegaConf DictConfig of LoaderConfig
            from omegaconf import OmegaConf

            cfg = OmegaConf.to_object(cfg)
        cfg.validate()
        check_rank(rank, world_size)
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.manifest = load_manifest(cfg.data_dir)
        self.urls = resolve_urls(self.manifest, cfg.urls)
        self._checked = False

    @property
    def num_items(self) -> int:
        return self.manifest.num_items

    @property
    def num_users(self) -> int:
        return self.manifest.num_users

    @property
    def steps_per_epoch(self) -> int:
        if self.cfg.steps_per_epoch is not None:
            return self.cfg.steps_per_epoch
        return max(1, -(-self.num_users // (self.cfg.batch_size * self.world_size)))

    def setup(self, stage: Optional[str] = None) -> None:
        if self.trainer is not None:
            self.rank, self.world_size = int(self.trainer.global_rank), int(self.trainer.world_size)
        check_rank(self.rank, self.world_size)
        if self.cfg.verify_checksums and not self.cfg.urls and not self._checked:
            verify_checksums(self.manifest)
            self._checked = True

    def train_dataset(self) -> TrainDataset:
        c, m = self.cfg, self.manifest
        return TrainDataset(self.urls, m.shard_users, m.num_items, max_len=c.max_len, batch_size=c.batch_size,
                            shuffle_buffer=c.shuffle_buffer, steps=self.steps_per_epoch, seed=c.seed,
                            rank=self.rank, world_size=self.world_size)

    def eval_dataset(self, split: str) -> EvalDataset:
        c, m = self.cfg, self.manifest
        return EvalDataset(split, self.urls, m.shard_users, m.num_items, max_len=c.max_len,
                           batch_size=c.eval_batch_size, seen_window=c.seen_window, rank=self.rank,
                           world_size=self.world_size)

    def _loader_kwargs(self) -> dict:
        c = self.cfg
        kwargs = dict(batch_size=None, num_workers=c.num_workers, pin_memory=c.pin_memory)
        if c.num_workers > 0:
            kwargs.update(multiprocessing_context=c.multiprocessing_context, persistent_workers=c.persistent_workers,
                          worker_init_fn=ignore_preemption_signal)
        return kwargs

    def _trainer_epoch(self) -> Optional[int]:
        return int(self.trainer.current_epoch) if self.trainer is not None else None

    def train_dataloader(self) -> DataLoader:
        return _EpochLoader(self.train_dataset(), epoch_fn=self._trainer_epoch, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.eval_dataset("valid"), **self._loader_kwargs())

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.eval_dataset("test"), **self._loader_kwargs())

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.eval_dataset("predict"), **self._loader_kwargs())


__all__ = ["LoaderConfig", "ElasticDataModule", "TrainDataset", "EvalDataset", "ShardReadError"]
