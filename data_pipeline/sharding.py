"""Which rank and DataLoader worker reads what: the split, shard reading, and the two datasets.

Kept free of Lightning imports so that spawn/forkserver DataLoader workers start fast.

Rank and world size are *captured in the main process* and passed in explicitly; the worker id comes
from ``torch.utils.data.get_worker_info()``, which is local to the process that owns the
DataLoader. Nothing here reads ``RANK``/``WORLD_SIZE`` or ``torch.distributed``, so the split is the
same with fork, spawn and forkserver workers (webdataset's ``split_by_node`` reads the environment
or ``torch.distributed`` inside the worker, which spawn and forkserver workers do not inherit).

Evaluation ("slots"): the users of all shards, in manifest order (shard, block, position), form a
global order ``0..U-1``. Rank ``r`` owns the contiguous slots ``[r*U//W, (r+1)*U//W)``; every rank
runs ``ceil(ceil(U/W) / B)`` batches, the shorter ones padded with ``valid=False`` rows. A rank's
batches are split contiguously over its workers, so a worker reads only the shards overlapping its
slots and a worker with no batches yields nothing. Shard boundaries play no role, so any number of
shards works with any number of ranks and workers.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset

from data_pipeline import batching, splits
from data_pipeline.shard_reader import ShardReadError, read_blocks, user_lengths
from data_pipeline.errors import DataError

__all__ = ["ShardReadError", "read_blocks", "user_lengths", "TrainDataset", "EvalDataset"]


def current_worker() -> tuple[int, int]:
    """``(worker_id, num_workers)`` of the calling DataLoader worker; ``(0, 1)`` in the main process."""
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


def split_range(total: int, parts: int, index: int) -> tuple[int, int]:
    """The ``index``-th of ``parts`` balanced contiguous pieces of ``range(total)``."""
    return total * index // parts, total * (index + 1) // parts


def worker_rng(seed: int, epoch: int, rank: int, worker: int) -> np.random.Generator:
    """Independent random stream per (seed, epoch, rank, worker)."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, rank, worker]))


def train_steps_for_worker(steps: int, worker: int, num_workers: int) -> int:
    """Batches worker ``worker`` yields so that a rank's workers yield ``steps`` batches in total."""
    return steps // num_workers + (1 if worker < steps % num_workers else 0)


def eval_batches_per_rank(num_users: int, world_size: int, batch_size: int) -> int:
    rows = -(-num_users // world_size)
    return -(-rows // batch_size)


@dataclass(frozen=True)
class EvalShare:
    """What one (rank, worker) yields in evaluation: real users in global slots
    ``[slot_start, slot_end)`` in order, then ``rows - (slot_end - slot_start)`` padding rows, cut into
    batches of ``batch_size`` (the last one possibly shorter)."""

    slot_start: int
    slot_end: int
    rows: int
    batch_size: int

    @property
    def real_rows(self) -> int:
        return self.slot_end - self.slot_start

    def batch_sizes(self) -> list[int]:
        full, rest = divmod(self.rows, self.batch_size)
        return [self.batch_size] * full + ([rest] if rest else [])


def eval_share(num_users: int, rank: int, world_size: int, worker: int, num_workers: int, batch_size: int) -> EvalShare:
    check_rank(rank, world_size)
    rank_start, rank_end = split_range(num_users, world_size, rank)
    rank_rows = -(-num_users // world_size)  # every rank yields this many rows, padded
    k0, k1 = split_range(eval_batches_per_rank(num_users, world_size, batch_size), num_workers, worker)
    lo, hi = k0 * batch_size, min(k1 * batch_size, rank_rows)
    real_hi = min(hi, rank_end - rank_start)
    real_lo = min(lo, real_hi)
    return EvalShare(rank_start + real_lo, rank_start + real_hi, max(hi - lo, 0), batch_size)


def overlapping_shards(shard_users: Sequence[int], start: int, end: int) -> list[tuple[int, int]]:
    """``(shard_index, first_slot)`` of every shard holding a slot in ``[start, end)``."""
    out = []
    first = 0
    for i, n in enumerate(shard_users):
        if first < end and first + n > start:
            out.append((i, first))
        first += n
    return out


def chunked(rows: Iterator, sizes: Sequence[int]) -> Iterator[list]:
    """Cut ``rows`` into consecutive lists of the given sizes; error if it runs out early."""
    for size in sizes:
        chunk = list(itertools.islice(rows, size))
        if len(chunk) != size:
            raise RuntimeError(f"internal: expected a chunk of {size} rows, got {len(chunk)}")
        yield chunk


# A padding row (valid=False, user -1): one dummy item so no row is all padding (see splits.PAD_ROW);
# with timestamps, its one timestamp is 0.
_PAD = (splits.PAD_ROW, splits.PAD_ROW_ITEM, splits.PAD_ROW, -1, False)
_PAD_TS = _PAD + (np.zeros(1, np.int64),)


def _shard_options(urls: Sequence[str], checksums: Sequence[str | None] | None) -> list:
    if checksums is not None and len(checksums) != len(urls):
        raise DataError(f"{len(checksums)} checksums for {len(urls)} shards")
    return list(checksums) if checksums is not None else [None] * len(urls)


class TrainDataset(IterableDataset):
    """Training batches ``{"items", "targets"}``: ``steps`` per rank per epoch over all its workers.

    Each (rank, worker) draws shards with replacement from its own RNG (seed, epoch, rank, worker),
    takes one random window per eligible user per shard visit and shuffles windows in a buffer of
    ``shuffle_buffer`` users. Works with any number of shards, even fewer than ranks x workers.
    Batches hold ``batch_size`` windows, or with ``max_tokens`` as many windows of similar length
    as fit ``rows x longest <= max_tokens`` (see ``batching``). ``timestamps``: batches also hold
    ``"timestamps"`` int64 [B, N], each input item's (0 at padding); the random draws, hence the
    items, are the same either way. ``checksums``: each shard's sha256, checked while it streams.

    Mid-epoch resume: ``set_epoch(epoch, skip)`` makes the next iteration continue the epoch
    after its first ``skip`` batches, exactly as an uninterrupted one would have gone on. Each
    worker's stream is a function of (seed, epoch, rank, worker role), so a worker replays its role's
    skipped batches without collating them. The DataLoader takes batch ``g`` from worker ``g % W``;
    continuing at ``skip`` the workers' roles are rotated by ``skip % W`` so that the first batch
    after the resume comes from the role that would have produced it.
    """

    def __init__(self, urls: Sequence[str], shard_users: Sequence[int], num_items: int, *, max_len: int,
                 batch_size: int, shuffle_buffer: int, steps: int, seed: int, rank: int, world_size: int,
                 max_tokens: int | None = None, bucket_pool: int = 32, checksums: Sequence[str | None] | None = None,
                 timestamps: bool = False):
        check_rank(rank, world_size)
        if len(urls) != len(shard_users):
            raise DataError(f"{len(urls)} urls for {len(shard_users)} shards")
        self.urls, self.shard_users, self.num_items = list(urls), list(shard_users), num_items
        self.checksums, self.timestamps = _shard_options(urls, checksums), timestamps
        self.max_len, self.batch_size, self.shuffle_buffer = max_len, batch_size, shuffle_buffer
        self.steps, self.seed, self.rank, self.world_size = steps, seed, rank, world_size
        self.max_tokens, self.bucket_pool = max_tokens, bucket_pool
        if max_tokens is not None and max_len > max_tokens:
            raise DataError(f"max_len={max_len} > max_tokens={max_tokens}: a window would not fit a batch")
        self.epoch = 0  # set in the main process before each epoch (see datamodule._EpochLoader)
        self.skip = 0  # batches of this epoch already trained (a resumed epoch)
        self._iterations = 0  # epochs started by this copy since set_epoch (persistent workers never see it)

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        if not 0 <= skip <= self.steps:
            raise DataError(f"cannot skip {skip} batches of an epoch of {self.steps}")
        self.epoch, self.skip, self._iterations = epoch, skip, 0

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = current_worker()
        skip = self.skip if self._iterations == 0 else 0  # only the epoch that was resumed
        role = (worker + skip) % num_workers
        rng = worker_rng(self.seed, self.epoch + self._iterations, self.rank, role)
        self._iterations += 1
        batches = self._batches(rng)
        done = train_steps_for_worker(skip, role, num_workers)
        for _ in range(done):  # replayed without collating
            next(batches)
        for _ in range(train_steps_for_worker(self.steps, role, num_workers) - done):
            batch = next(batches)
            if self.timestamps:
                yield splits.collate_train([w for w, _ in batch], [t for _, t in batch])
            else:
                yield splits.collate_train(batch)

    def _batches(self, rng: np.random.Generator) -> Iterator[list]:
        """Endless lists of windows, one per batch (not yet collated)."""
        windows = self._shuffled(self._windows(rng), np.random.default_rng(rng.integers(2**63)))
        if self.max_tokens is None:
            while True:
                yield [next(windows) for _ in range(self.batch_size)]
        length = (lambda w: len(w[0]) - 1) if self.timestamps else (lambda w: len(w) - 1)
        yield from batching.budget_batches(windows, self.max_tokens, self.bucket_pool,
                                           np.random.default_rng(rng.integers(2**63)), length=length)

    def _windows(self, rng: np.random.Generator) -> Iterator:
        """Endless training windows: item arrays, or (items, timestamps) pairs with timestamps
        (copies, so the buffer does not pin whole blocks)."""
        visits_without_examples = 0
        while True:
            i = int(rng.integers(len(self.urls)))
            produced = 0
            for block in read_blocks(self.urls[i], self.shard_users[i], self.num_items, self.checksums[i],
                                     self.timestamps):
                index, start, size = splits.train_window_starts(np.diff(block.offsets), self.max_len, rng)
                first = block.offsets[index] + start
                items, ts = block.items, block.timestamps
                for a, b in zip(first.tolist(), (first + size).tolist()):
                    yield (items[a:b].copy(), ts[a:b].copy()) if self.timestamps else items[a:b].copy()
                produced += len(index)
            visits_without_examples = 0 if produced else visits_without_examples + 1
            if visits_without_examples > 4 * len(self.urls) + 16:
                raise ShardReadError(f"no training examples in {visits_without_examples} shard visits: every user "
                                     "has fewer than 4 events (training uses s[:-2] and needs >= 2 items)")

    def _shuffled(self, windows: Iterator[np.ndarray], rng: np.random.Generator) -> Iterator[np.ndarray]:
        buf: list = []
        cap = self.shuffle_buffer
        picks: list = []
        for w in windows:
            if len(buf) < cap:
                buf.append(w)
                continue
            if not picks:
                picks = rng.integers(cap, size=4096).tolist()
            j = picks.pop()
            out, buf[j] = buf[j], w
            yield out


class EvalDataset(IterableDataset):
    """Evaluation batches ``{"items", "target", "seen", "user", "valid"}`` for ``split`` in
    ``splits.EVAL_SPLITS``: every user exactly once over all ranks and workers, the same number of
    batches on every rank (:func:`eval_share`). Users without a history for the split and padding
    rows are ``valid=False`` with ``user=-1``. ``seen_window`` "history": ``seen`` is the whole
    history; "input": the model's input window.

    With ``max_tokens`` (and ``lengths``, every user's sequence length in slot order) a rank's
    slots are cut into token-budget batches instead (``batching.plan_eval_batches``), the same
    number on every rank (one-row padding batches make up the difference); a rank's batches are
    split contiguously over its workers. ``timestamps``: batches also hold ``"timestamps"`` int64
    [B, N], the timestamps of the ``items`` (0 at padding and on padding rows); ``checksums``: as
    in :class:`TrainDataset`."""

    def __init__(self, split: str, urls: Sequence[str], shard_users: Sequence[int], num_items: int, *, max_len: int,
                 batch_size: int, seen_window: str, rank: int, world_size: int, max_tokens: int | None = None,
                 lengths: np.ndarray | None = None, checksums: Sequence[str | None] | None = None,
                 timestamps: bool = False):
        if split not in splits.EVAL_SPLITS:
            raise DataError(f"split must be one of {splits.EVAL_SPLITS}, got {split!r}")
        check_rank(rank, world_size)
        self.split, self.urls, self.shard_users, self.num_items = split, list(urls), list(shard_users), num_items
        self.num_users, self.max_len, self.batch_size = sum(self.shard_users), max_len, batch_size
        self.seen_window, self.rank, self.world_size = seen_window, rank, world_size
        self.checksums, self.timestamps = _shard_options(urls, checksums), timestamps
        self._pad = _PAD_TS if timestamps else _PAD
        self.plan = None if max_tokens is None else self._plan(lengths, max_tokens)

    def _plan(self, lengths: np.ndarray | None, max_tokens: int) -> tuple[list[np.ndarray], int]:
        """(this rank's batches as slot arrays, batches every rank runs)."""
        if lengths is None or len(lengths) != self.num_users:
            raise DataError("token-budget evaluation needs every user's length")
        held = splits.held_out(self.split)
        rows = np.where(lengths >= held + 1, np.minimum(lengths - held, self.max_len), 1)  # pad row: 1 item
        counts, mine = [], None
        for r in range(self.world_size):
            lo, hi = split_range(self.num_users, self.world_size, r)
            plan = batching.plan_eval_batches(rows[lo:hi], lo, max_tokens)
            counts.append(len(plan))
            if r == self.rank:
                mine = plan
        return mine, max(max(counts), 1)

    def __len__(self) -> int:
        if self.plan is not None:
            return self.plan[1]
        return eval_batches_per_rank(self.num_users, self.world_size, self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = current_worker()
        if self.plan is not None:
            yield from self._budget_batches(worker, num_workers)
            return
        share = eval_share(self.num_users, self.rank, self.world_size, worker, num_workers, self.batch_size)
        rows = itertools.chain(self._rows(share.slot_start, share.slot_end),
                               itertools.repeat(self._pad, share.rows - share.real_rows))
        for chunk in chunked(rows, share.batch_sizes()):
            yield splits.collate_eval(*zip(*chunk))
        for _ in rows:  # nothing is left; finishing the last shard's read lets it check its checksum
            pass

    def _budget_batches(self, worker: int, num_workers: int) -> Iterator[dict]:
        batches, total = self.plan
        k0, k1 = split_range(total, num_workers, worker)
        mine = batches[k0:k1]
        padding = (k1 - k0) - len(mine)  # this rank's dummy batches that fall to this worker
        if mine:
            slots = np.concatenate(mine)
            needed = set(slots.tolist())
            rows = self._rows(int(slots.min()), int(slots.max()) + 1)
            buffered: dict = {}  # rows read ahead: at most one sort window's
            next_slot = int(slots.min())
            for batch in mine:
                while next_slot <= int(batch.max()):
                    row = next(rows)
                    if next_slot in needed:
                        buffered[next_slot] = row
                    next_slot += 1
                yield splits.collate_eval(*zip(*(buffered.pop(s) for s in batch.tolist())))
            for _ in rows:  # (as in __iter__)
                pass
        for _ in range(padding):
            yield splits.collate_eval(*zip(*[self._pad]))

    def _rows(self, slot_start: int, slot_end: int) -> Iterator[tuple]:
        """The rows of global slots ``[slot_start, slot_end)`` in order."""
        for shard, first in overlapping_shards(self.shard_users, slot_start, slot_end):
            shard_end = first + self.shard_users[shard]
            blocks = read_blocks(self.urls[shard], self.shard_users[shard], self.num_items, self.checksums[shard],
                                 self.timestamps)
            try:
                pos = first
                for block in blocks:
                    lo, hi = max(slot_start, pos) - pos, min(slot_end, pos + len(block)) - pos
                    o, ts = block.offsets, block.timestamps
                    for j in range(lo, hi):
                        yield self._row(block.sequence(j), int(block.users[j]),
                                        None if ts is None else ts[o[j]:o[j + 1]])
                    pos += len(block)
                    if slot_end <= pos < shard_end:
                        break  # the rest of this shard belongs to other workers/ranks
            finally:
                blocks.close()

    def _row(self, seq: np.ndarray, user: int, ts: np.ndarray | None = None) -> tuple:
        if not splits.eval_eligible(len(seq), self.split):
            return self._pad
        window, target, history = splits.eval_example(seq, self.split, self.max_len)
        row = window, target, (history if self.seen_window == "history" else window), user, True
        return row if ts is None else row + (ts[:len(history)][-len(window):],)
