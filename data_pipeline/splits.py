"""Leave-one-out splits and left-padded batch collation (docs/ARCHITECTURE.md).

For a user sequence ``s`` (oldest first, length ``n``):

* test: history ``s[:-1]``, target ``s[-1]`` (needs ``n >= 2``)
* validation: history ``s[:-2]``, target ``s[-2]`` (needs ``n >= 3``)
* predict: history ``s`` (the whole sequence), no target (``0``) (needs ``n >= 1``)
* train: ``s[:-2]``; one example is a random window of ``max_len + 1`` consecutive items of it (or
  all of it when shorter): inputs ``w[:-1]``, targets ``w[1:]`` (needs ``n - 2 >= 2``).

Training never reads a position at or after ``n - 2``, so neither leave-one-out target can leak into
training inputs or targets. The model input for evaluation is the last ``max_len`` history items.

Batches are int64 tensors, left-padded with 0, ``N`` = longest row in the batch (``<= max_len``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from data_pipeline.errors import DataError

EVAL_SPLITS = ("valid", "test", "predict")
# How many trailing items each evaluation split holds out of the history.
_HELD_OUT = {"valid": 2, "test": 1, "predict": 0}
# Items a padding row carries so that no row is entirely padding (models need one real position).
PAD_ROW_ITEM = 1


def held_out(split: str) -> int:
    """Trailing items ``split`` holds out of a sequence (valid 2, test 1, predict 0)."""
    return _check_split(split)


def _check_split(split: str) -> int:
    if split not in _HELD_OUT:
        raise DataError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
    return _HELD_OUT[split]


def train_lengths(lengths: np.ndarray) -> np.ndarray:
    """Length of the training part ``s[:-2]`` for each sequence length (0 when ``n < 2``)."""
    return np.maximum(np.asarray(lengths, dtype=np.int64) - 2, 0)


def train_window_starts(
    lengths: np.ndarray, max_len: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised :func:`train_window` for many sequences at once.

    Returns ``(index, start, size)`` for the sequences that have a training example: sequence
    ``index[j]`` contributes the window ``seq[start[j] : start[j] + size[j]]`` (relative to the
    sequence's first item), ``size = min(n - 2, max_len + 1) >= 2``.
    """
    m = train_lengths(lengths)
    index = np.flatnonzero(m >= 2)
    m = m[index]
    size = np.minimum(m, max_len + 1)
    start = rng.integers(0, m - size + 1) if len(index) else np.zeros(0, dtype=np.int64)
    return index, start.astype(np.int64, copy=False), size


def train_window(seq: np.ndarray, max_len: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One random training example ``(inputs, targets)`` of at most ``max_len`` items from ``seq[:-2]``.

    Raises ValueError when the sequence has no training example (``len(seq) - 2 < 2``).
    """
    index, start, size = train_window_starts(np.array([len(seq)]), max_len, rng)
    if not len(index):
        raise DataError(f"a sequence of length {len(seq)} has no training example (needs >= 4 items)")
    w = seq[start[0] : start[0] + size[0]]
    return w[:-1], w[1:]


def eval_eligible(lengths: np.ndarray, split: str) -> np.ndarray:
    """Boolean mask: which sequence lengths have a non-empty history for ``split``."""
    return np.asarray(lengths) >= _check_split(split) + 1


def eval_example(seq: np.ndarray, split: str, max_len: int) -> tuple[np.ndarray, int, np.ndarray]:
    """``(history_window, target, full_history)`` of one user for ``split`` in :data:`EVAL_SPLITS`.

    ``history_window`` is the last ``max_len`` items of ``full_history``; ``target`` is 0 for predict.
    Raises ValueError when the user has no history for this split.
    """
    held = _check_split(split)
    n = len(seq)
    if n < held + 1:
        raise DataError(f"a sequence of length {n} has no {split} example (needs >= {held + 1} items)")
    history = seq[: n - held]
    target = int(seq[n - held]) if held else 0
    return history[-max_len:], target, history


def left_pad(rows: Sequence[np.ndarray], width: int | None = None) -> np.ndarray:
    """int64 ``[len(rows), width]`` with each row right-aligned and 0 on the left.

    ``width`` defaults to the longest row (at least 1); longer rows keep their last ``width`` items.
    One vectorised scatter per batch instead of a Python-level copy per row.
    """
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    if width is None:
        width = int(lengths.max()) if len(rows) else 0
    width = max(int(width), 1)
    out = np.zeros((len(rows), width), dtype=np.int64)
    if len(rows) and lengths.max() > width:
        rows = [r[len(r) - width :] for r in rows]
        lengths = np.minimum(lengths, width)
    total = int(lengths.sum())
    if total:
        row_end = (np.arange(len(rows), dtype=np.int64) + 1) * width
        # element k of the concatenation lands at row_end[i] - lengths[i] + (k - first[i])
        shift = np.repeat(row_end - np.cumsum(lengths), lengths)
        out.reshape(-1)[shift + np.arange(total)] = np.concatenate(rows)
    return out


def collate_train(windows: Sequence[np.ndarray],
                  timestamps: Sequence[np.ndarray] | None = None) -> dict[str, torch.Tensor]:
    """Training batch from windows ``w`` (``len(w) >= 2``): ``items = w[:-1]``, ``targets = w[1:]``.

    ``{"items": int64 [B, N], "targets": int64 [B, N]}``, left-padded, ``targets`` 0 at padding;
    with ``timestamps`` (one array per window, aligned with it) also ``"timestamps"`` int64
    [B, N]: each input item's timestamp, 0 at padding.
    """
    items = left_pad([w[:-1] for w in windows])
    targets = left_pad([w[1:] for w in windows])  # same lengths: pads line up with the items' pads
    batch = {"items": torch.from_numpy(items), "targets": torch.from_numpy(targets)}
    if timestamps is not None:
        batch["timestamps"] = torch.from_numpy(left_pad([t[:-1] for t in timestamps]))
    return batch


def collate_eval(
    histories: Sequence[np.ndarray],
    targets: Sequence[int],
    seen: Sequence[np.ndarray],
    users: Sequence[int],
    valid: Sequence[bool],
    timestamps: Sequence[np.ndarray] | None = None,
) -> dict[str, torch.Tensor]:
    """Evaluation batch ``{"items", "target", "seen", "user", "valid"}`` (see ARCHITECTURE.md).

    ``histories`` are the model inputs (already cut to ``max_len``); ``seen`` the items to filter;
    ``timestamps`` (aligned with ``histories``) adds ``"timestamps"`` int64 [B, N], 0 at padding.
    """
    batch = {
        "items": torch.from_numpy(left_pad(histories)),
        "target": torch.as_tensor(np.asarray(targets, dtype=np.int64)),
        "seen": torch.from_numpy(left_pad(seen)),
        "user": torch.as_tensor(np.asarray(users, dtype=np.int64)),
        "valid": torch.as_tensor(np.asarray(valid, dtype=bool)),
    }
    if timestamps is not None:
        batch["timestamps"] = torch.from_numpy(left_pad(timestamps, batch["items"].shape[1]))
    return batch


PAD_ROW = np.array([PAD_ROW_ITEM], dtype=np.int64)
