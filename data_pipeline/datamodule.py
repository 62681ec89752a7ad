"""``ElasticDataModule``: shards + manifest -> ready, left-padded batches on every rank.

Training (:class:`TrainDataset`): every (rank, worker) draws shards *with replacement* from its own
seeded RNG, takes one random window per eligible user per visit, shuffles users in a buffer and
collates whole batches inside the worker. Every rank yields exactly ``steps_per_epoch`` batches per
epoch, whatever the shard sizes, so DDP never waits on a rank that ran out.

Evaluation (:class:`EvalDataset`, val/test/predict): every user exactly once over all ranks and
workers, every rank the same number of batches, padding rows ``valid=False`` (see ``sharding``).

At construction the manifest is checked (``manifest.load_manifest``: totals, file names inside
``data_dir``, item map rows); shards are checked against their sha256 while they stream
(``verify_checksums``, on by default; ``shard_reader``).

The DataLoader gets ``batch_size=None``: batches are built in the workers (numpy slicing per user),
which is far cheaper than one collate call per sample.
"""
import signal
import warnings
from dataclasses import dataclass
from typing import Iterator, List, Optional

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from data_pipeline import splits
from data_pipeline.manifest import ManifestError, load_manifest, require_checksums, resolve_urls
from data_pipeline.shard_reader import read_blocks
from data_pipeline.shards import UserBlock
from data_pipeline.sharding import EvalDataset, ShardReadError, TrainDataset, check_rank, user_lengths
from data_pipeline.errors import DataError

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
    steps_per_epoch: Optional[int] = None  # per rank; default: one pass over the users (or their tokens)
    # Token-budget batches (docs/DATA_LOADER.md): at most max_tokens padded positions per batch,
    # rows of similar length together; batch_size / eval_batch_size are then unused.
    max_tokens: Optional[int] = None
    eval_max_tokens: Optional[int] = None  # evaluation's budget (>= max_tokens: no gradients); default max_tokens
    truncate_to_budget: bool = False  # a user longer than max_tokens: error (False) or cut to its last items
    bucket_pool: int = 32  # batches' worth of training windows sorted together by length (more: fuller, less mixed)
    seed: int = 0
    seen_window: str = "history"  # what `seen` (filter_seen) holds: whole "history" or the "input" window
    urls: Optional[List[str]] = None  # shard URLs (pipe:/http/s3...) in manifest order, overriding data_dir
    verify_checksums: bool = True  # each shard's sha256 checked against the manifest while it streams
    timestamps: bool = False  # batches also carry "timestamps" int64 [B, N] (needs shards prepared with them)
    multiprocessing_context: Optional[str] = None  # None = platform default; fork/spawn/forkserver
    persistent_workers: bool = False
    pin_memory: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("max_len", "batch_size", "eval_batch_size", "shuffle_buffer", "bucket_pool"):
            if getattr(self, name) < 1:
                raise DataError(f"LoaderConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise DataError(f"LoaderConfig.num_workers must be >= 0, got {self.num_workers}")
        for name in ("max_tokens", "eval_max_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise DataError(f"LoaderConfig.{name} must be >= 1 or None, got {getattr(self, name)}")
        if self.eval_max_tokens is not None and self.max_tokens is None:
            raise DataError("LoaderConfig.eval_max_tokens needs max_tokens (token-budget batches) to be set")
        if self.eval_max_tokens is not None and self.eval_max_tokens < self.max_tokens:
            raise DataError(f"LoaderConfig.eval_max_tokens={self.eval_max_tokens} must be >= max_tokens="
                             f"{self.max_tokens} (every row that fits training must fit evaluation)")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise DataError(f"LoaderConfig.steps_per_epoch must be >= 1 or None, got {self.steps_per_epoch}")
        if self.seen_window not in SEEN_WINDOWS:
            raise DataError(f"LoaderConfig.seen_window must be one of {SEEN_WINDOWS}, got {self.seen_window!r}")
        if self.multiprocessing_context not in (None,) + MP_CONTEXTS:
            raise DataError(f"LoaderConfig.multiprocessing_context must be None or one of {MP_CONTEXTS}, "
                             f"got {self.multiprocessing_context!r}")
        if self.persistent_workers and self.num_workers == 0:
            raise DataError("LoaderConfig.persistent_workers needs num_workers >= 1")


class _EpochLoader(DataLoader):
    """Tells the dataset which epoch starts (for its RNG) before the workers copy it, and after a
    resume how many of that epoch's batches were already trained.

    Lightning saves ``state_dict()`` in every checkpoint (the SIGUSR1 ``hpc_ckpt`` included) and
    calls ``load_state_dict`` before a resumed fit's first iteration. ``progress_fn`` gives
    ``(epoch, batches trained in it)`` from the trainer's own counters at save time: the loader
    itself has already fetched ahead (prefetching), so its own count would be off."""

    def __init__(self, *args, epoch_fn=None, progress_fn=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._epoch_fn, self._progress_fn, self._started = epoch_fn, progress_fn, 0
        self._resume: Optional[dict] = None

    def __iter__(self):
        if self._resume is not None:
            # the checkpoint's position, not the trainer's epoch: Lightning may start this iterator
            # before it restores its own counters (see ElasticDataModule.state_dict)
            epoch, skip = self._resume["epoch"], self._resume["batches"]
            if skip >= len(self.dataset):  # saved at the epoch's end: the next one starts
                epoch, skip = epoch + 1, 0
            self._resume = None
        else:
            epoch = self._epoch_fn() if self._epoch_fn is not None else None
            epoch, skip = (self._started if epoch is None else epoch), 0
        self.dataset.set_epoch(epoch, skip)
        self._started += 1
        return super().__iter__()

    def _layout(self) -> dict:
        d = self.dataset
        # no rank: rank 0 writes the checkpoint that every rank restores, at the same position
        return {"steps": d.steps, "num_workers": self.num_workers, "seed": d.seed, "world_size": d.world_size,
                "max_tokens": d.max_tokens, "batch_size": d.batch_size}

    def state_dict(self) -> dict:
        epoch, batches = self._progress_fn() if self._progress_fn is not None else (max(self._started - 1, 0), 0)
        return {"epoch": int(epoch), "batches": int(batches), **self._layout()}

    def load_state_dict(self, state: dict) -> None:
        changed = {k: (state.get(k), v) for k, v in self._layout().items() if state.get(k) != v}
        if changed:
            warnings.warn(f"training data layout differs from the checkpoint's ({changed}, as (saved, now)): "
                          f"the resumed epoch {state.get('epoch')} continues with different batches", stacklevel=2)
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}


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
        if cfg.verify_checksums:
            require_checksums(self.manifest)
        if cfg.timestamps and not self.manifest.timestamps:
            raise ManifestError(f"data.loader.timestamps=true, but {cfg.data_dir}: this dataset was prepared without "
                                "timestamps; re-run prepare from a source with a timestamp column")
        self._lengths: Optional[np.ndarray] = None
        self._train_loader: Optional[_EpochLoader] = None
        self._train_state: Optional[dict] = None  # restored from a checkpoint, for the next loader
        self._eval_datasets: dict = {}

    @property
    def num_items(self) -> int:
        return self.manifest.num_items

    @property
    def num_users(self) -> int:
        return self.manifest.num_users

    @property
    def window_len(self) -> int:
        """Longest model input: ``max_len``, or ``max_tokens`` where that is smaller (only with
        ``truncate_to_budget``; otherwise a longer user is an error, see :meth:`lengths`)."""
        c = self.cfg
        return c.max_len if c.max_tokens is None else min(c.max_len, c.max_tokens)

    def lengths(self) -> np.ndarray:
        """Every user's sequence length in slot order (one pass over the shards, then cached).
        With ``max_tokens``, a user whose model input would not fit the budget is an error naming
        it, unless ``truncate_to_budget``."""
        if self._lengths is None:
            lengths, users = user_lengths(self.urls, self.manifest.shard_users, self.num_items, self.checksums)
            c = self.cfg
            if c.max_tokens is not None and not c.truncate_to_budget and len(lengths):
                longest = int(np.argmax(lengths))
                need = min(int(lengths[longest]), c.max_len)  # the predict input (test/valid are shorter)
                if need > c.max_tokens:
                    raise DataError(
                        f"{self.cfg.data_dir}: user {int(users[longest])} has {int(lengths[longest])} events, so its "
                        f"model input of {need} items exceeds data.loader.max_tokens={c.max_tokens}; raise "
                        "data.loader.max_tokens, lower data.loader.max_len, or set "
                        "data.loader.truncate_to_budget=true to cut such users to their last max_tokens items")
            self._lengths = lengths
        return self._lengths

    @property
    def steps_per_epoch(self) -> int:
        """Per rank: the configured value, else about one pass over the users (``batch_size``) or
        over their training tokens (``max_tokens``: real input positions / budget)."""
        c = self.cfg
        if c.steps_per_epoch is not None:
            return c.steps_per_epoch
        if c.max_tokens is None:
            return max(1, -(-self.num_users // (c.batch_size * self.world_size)))
        return max(1, -(-self.training_tokens() // (c.max_tokens * self.world_size)))

    def training_tokens(self) -> int:
        """Real input positions of one pass over every user's training part (cached lengths: the
        budget check of ``lengths`` runs too). An error when there are none."""
        train = np.minimum(splits.train_lengths(self.lengths()), self.window_len + 1)
        tokens = int(np.maximum(train[train >= 2] - 1, 0).sum())
        if tokens == 0:
            raise DataError(f"{self.cfg.data_dir}: no user has enough events to train on (a user needs at least 4: "
                            "two for a training pair, then the validation and test items)")
        return tokens

    def setup(self, stage: Optional[str] = None) -> None:
        if self.trainer is not None:
            self.rank, self.world_size = int(self.trainer.global_rank), int(self.trainer.world_size)
        check_rank(self.rank, self.world_size)

    @property
    def checksums(self) -> Optional[List[Optional[str]]]:
        """Each shard's sha256 to check while it streams, or None (``verify_checksums=false``)."""
        return [s.sha256 for s in self.manifest.shards] if self.cfg.verify_checksums else None

    def blocks(self) -> Iterator[UserBlock]:
        """Every user block of every shard, in manifest order, checked like the loaders' reads
        (user counts, and the checksums unless ``verify_checksums=false``): for whole-data passes
        such as the baselines' counts."""
        sums = self.checksums or [None] * len(self.urls)
        for url, shard, sha256 in zip(self.urls, self.manifest.shards, sums):
            yield from read_blocks(url, shard.users, self.num_items, sha256)

    def train_dataset(self) -> TrainDataset:
        c, m = self.cfg, self.manifest
        return TrainDataset(self.urls, m.shard_users, m.num_items, max_len=self.window_len, batch_size=c.batch_size,
                            shuffle_buffer=c.shuffle_buffer, steps=self.steps_per_epoch, seed=c.seed,
                            rank=self.rank, world_size=self.world_size, max_tokens=c.max_tokens,
                            bucket_pool=c.bucket_pool, checksums=self.checksums, timestamps=c.timestamps)

    def eval_dataset(self, split: str) -> EvalDataset:
        """Kept per (split, rank, world size): its token-budget plan is made once, not every epoch."""
        key = (split, self.rank, self.world_size)
        if key not in self._eval_datasets:
            c, m = self.cfg, self.manifest
            self._eval_datasets[key] = EvalDataset(
                split, self.urls, m.shard_users, m.num_items, max_len=self.window_len, batch_size=c.eval_batch_size,
                seen_window=c.seen_window, rank=self.rank, world_size=self.world_size,
                max_tokens=c.eval_max_tokens or c.max_tokens, lengths=self.lengths() if c.max_tokens is not None else None,
                checksums=self.checksums, timestamps=c.timestamps)
        return self._eval_datasets[key]

    def _loader_kwargs(self) -> dict:
        c = self.cfg
        # own generator: creating worker iterators must not draw from the global torch RNG, which
        # dropout and negative sampling use (a resumed run would otherwise diverge)
        kwargs = dict(batch_size=None, num_workers=c.num_workers, pin_memory=c.pin_memory,
                      generator=torch.Generator().manual_seed(c.seed))
        if c.num_workers > 0:
            kwargs.update(multiprocessing_context=c.multiprocessing_context, persistent_workers=c.persistent_workers,
                          worker_init_fn=ignore_preemption_signal)
        return kwargs

    def _trainer_epoch(self) -> Optional[int]:
        return int(self.trainer.current_epoch) if self.trainer is not None else None

    def _trainer_progress(self) -> tuple[int, int]:
        """(epoch, its batches whose optimizer step ran): Lightning's counters."""
        loop = self.trainer.fit_loop
        if self.trainer.should_stop and self._train_loader is not None:
            # a stop inside the epoch (trainer.max_time_minutes): Lightning counts the epoch as done
            # and resumes at the next one, so the data must too (not finish this one's batches)
            return int(self.trainer.current_epoch), len(self._train_loader.dataset)
        return int(self.trainer.current_epoch), int(loop.epoch_loop.batch_progress.current.processed)

    def train_dataloader(self) -> DataLoader:
        progress = self._trainer_progress if self.trainer is not None else None
        self._train_loader = _EpochLoader(self.train_dataset(), epoch_fn=self._trainer_epoch, progress_fn=progress,
                                          **self._loader_kwargs())
        if self._train_state is not None:
            self._train_loader.load_state_dict(self._train_state)
            self._train_state = None
        return self._train_loader

    # Lightning saves these in every checkpoint and restores them before a resumed fit. The loader
    # is also ``_Stateful`` to Lightning, but Lightning (2.6) applies a loader's saved state only if
    # it builds the loader after restoring, and ``estimated_stepping_batches`` (the LR schedule)
    # builds it before: so the datamodule carries the state itself.
    def state_dict(self) -> dict:
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self._train_state = state.get("train_loader")
        if self._train_state is not None and self._train_loader is not None:
            self._train_loader.load_state_dict(self._train_state)
            self._train_state = None

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.eval_dataset("valid"), **self._loader_kwargs())

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.eval_dataset("test"), **self._loader_kwargs())

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.eval_dataset("predict"), **self._loader_kwargs())


__all__ = ["LoaderConfig", "ElasticDataModule", "TrainDataset", "EvalDataset", "ShardReadError"]
