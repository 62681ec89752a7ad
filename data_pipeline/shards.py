"""The shard format: one WebDataset tar member group ("sample") holds a *block* of users.

Reading is bound by per-sample Python cost (~0.3 ms per tar member), not by bytes, so a sample
packs many users' full chronological sequences (see docs/ARCHITECTURE.md):

    <key>.users.npy    int64 [U]      dense user index (0..num_users-1)
    <key>.offsets.npy  int64 [U + 1]  sequence u is items[offsets[u]:offsets[u+1]]
    <key>.items.npy    int32 [T]      dense item ids 1..num_items, oldest first (0 = padding, never stored)
    <key>.ts.npy       int64 [T]      optional: each item's timestamp in epoch seconds (aligned with items)

``ts.npy`` is written when the source has timestamps (the manifest says ``"timestamps": true``,
format version 2); shards without it (version 1, or a source without timestamps) read the same.

Sequences are stored once, whole; train/validation/test are a pure function of the sequence
(leave-one-out, see ``data_pipeline.splits``), so there is one set of shards per dataset.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from data_pipeline.errors import DataError

FIELDS = ("users.npy", "offsets.npy", "items.npy")  # every sample has these
TS_FIELD = "ts.npy"  # optional


@dataclass(frozen=True)
class UserBlock:
    users: np.ndarray  # int64 [U]
    offsets: np.ndarray  # int64 [U + 1]
    items: np.ndarray  # int32 [T]
    timestamps: np.ndarray | None = None  # int64 [T] epoch seconds, or None

    def __len__(self) -> int:
        return len(self.users)

    def sequence(self, i: int) -> np.ndarray:
        return self.items[self.offsets[i] : self.offsets[i + 1]]

    def validate(self, num_items: int | None = None, where: str = "block") -> None:
        """Raise ValueError (naming ``where``) unless the arrays form a consistent block."""
        u, o, it = self.users, self.offsets, self.items
        if u.ndim != 1 or o.ndim != 1 or it.ndim != 1:
            raise DataError(f"{where}: users/offsets/items must be 1-D arrays")
        if len(o) != len(u) + 1 or (len(o) and (o[0] != 0 or o[-1] != len(it))):
            raise DataError(f"{where}: offsets do not match users ({len(u)}) and items ({len(it)})")
        if len(o) > 1 and np.any(np.diff(o) < 0):
            raise DataError(f"{where}: offsets are not non-decreasing")
        if len(it) and it.min() < 1:
            raise DataError(f"{where}: item id {int(it.min())} < 1 (0 is reserved for padding)")
        if num_items is not None and len(it) and it.max() > num_items:
            raise DataError(f"{where}: item id {int(it.max())} > num_items={num_items}")
        if self.timestamps is not None and self.timestamps.shape != it.shape:
            raise DataError(f"{where}: {self.timestamps.shape} timestamps for {it.shape} items")


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def encode_block(key: str, block: UserBlock) -> dict:
    """A dict for ``webdataset.TarWriter.write`` (members in :data:`FIELDS` order, then ``ts.npy``)."""
    sample = {
        "__key__": key,
        "users.npy": _npy_bytes(np.ascontiguousarray(block.users, dtype=np.int64)),
        "offsets.npy": _npy_bytes(np.ascontiguousarray(block.offsets, dtype=np.int64)),
        "items.npy": _npy_bytes(np.ascontiguousarray(block.items, dtype=np.int32)),
    }
    if block.timestamps is not None:
        sample[TS_FIELD] = _npy_bytes(np.ascontiguousarray(block.timestamps, dtype=np.int64))
    return sample


def _load_npy(raw: bytes, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as e:  # truncated/corrupt member
        raise DataError(f"{where}: cannot decode .npy member ({e})") from e


def decode_block(sample: dict, num_items: int | None = None, timestamps: bool = False) -> UserBlock:
    """Inverse of :func:`encode_block` for a raw webdataset sample (bytes values); validates.
    ``timestamps``: decode ``ts.npy`` too (an error if the sample has none); else it is ignored."""
    where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
    missing = [f for f in FIELDS + ((TS_FIELD,) if timestamps else ()) if f not in sample]
    if missing:
        raise DataError(f"{where}: sample lacks members {missing}")
    block = UserBlock(
        users=_load_npy(sample["users.npy"], where).astype(np.int64, copy=False),
        offsets=_load_npy(sample["offsets.npy"], where).astype(np.int64, copy=False),
        items=_load_npy(sample["items.npy"], where),
        timestamps=_load_npy(sample[TS_FIELD], where).astype(np.int64, copy=False) if timestamps else None,
    )
    block.validate(num_items, where)
    return block
