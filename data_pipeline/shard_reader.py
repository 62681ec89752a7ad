"""Reading one shard: its user blocks in order, checked against the manifest while they stream.

With the shard's ``sha256`` from the manifest, every byte read is hashed on the way (no separate
pass over the file); when the shard has been read to its end the digest must match, else
:class:`ShardReadError` names the shard. A process hashes each shard until one whole read has
matched; later reads of the same unchanged file (same size and mtime) skip the hash, so training,
which revisits every shard many times an epoch, pays for one pass per shard and process. A read the consumer stops early (an evaluation worker
whose slots end inside the shard) is not checked, but every shard is read whole by someone in
every pass: training visits read whole shards, and the evaluation worker holding a shard's last
slot reads it from its first block. Blocks yielded before a mismatch is found are not taken back:
the error stops the run at the end of that shard.
"""
from __future__ import annotations

import hashlib
import os
from typing import Iterator, Optional, Sequence

import numpy as np
from webdataset.gopen import gopen
from webdataset.tariterators import group_by_keys, tar_file_expander

from data_pipeline.shards import UserBlock, decode_block

_DRAIN = 1 << 20
_verified: set = set()  # shard identities (see _identity) whose whole read matched, in this process


def _identity(url: str, sha256: str) -> tuple:
    try:
        st = os.stat(url)
        return url, sha256, st.st_size, st.st_mtime_ns
    except OSError:  # not a local file (pipe:, http...): its URL and checksum
        return url, sha256


def forget_verified() -> None:
    """Hash every shard again on its next read (benchmarks)."""
    _verified.clear()


class ShardReadError(RuntimeError):
    """A shard could not be read, is corrupt, or does not match the manifest (message names the URL)."""


class HashingReader:
    """A read-only stream that feeds every byte it returns to a sha256."""

    def __init__(self, raw) -> None:
        self.raw, self.hash = raw, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hash.update(data)
        return data

    def hexdigest_to_end(self) -> str:
        """The digest of the whole stream (reads what the tar reader left: end-of-archive padding)."""
        while data := self.raw.read(_DRAIN):
            self.hash.update(data)
        return self.hash.hexdigest()

    def close(self) -> None:
        self.raw.close()


def _mismatch(url: str, stream: HashingReader, sha256: str) -> Optional[ShardReadError]:
    actual = stream.hexdigest_to_end()
    if actual == sha256:
        return None
    return ShardReadError(f"{url}: sha256 {actual} does not match the manifest ({sha256}): the shard is corrupt "
                          "(restore it or re-run prepare; data.loader.verify_checksums=false skips this check)")


def read_blocks(url: str, expected_users: int | None = None, num_items: int | None = None,
                sha256: str | None = None, timestamps: bool = False) -> Iterator[UserBlock]:
    """Decode the user blocks of one shard in order (with their timestamps if ``timestamps``).

    Raises :class:`ShardReadError` naming ``url`` on an unreadable/truncated/corrupt tar, a bad
    block, (with ``expected_users``) a user count different from the manifest's, or (with
    ``sha256``) bytes that differ from the manifest's checksum.
    """
    count = 0
    key = _identity(url, sha256) if sha256 else None
    if key in _verified:
        sha256 = None
    try:
        raw = gopen(url)
    except Exception as e:
        raise ShardReadError(f"{url}: cannot open shard: {type(e).__name__}: {e}") from e
    stream = HashingReader(raw) if sha256 else raw
    try:
        for sample in group_by_keys(tar_file_expander([{"url": url, "stream": stream}])):
            block = decode_block(sample, num_items, timestamps)
            count += len(block)
            if expected_users is not None and count > expected_users:
                raise ShardReadError(f"{url}: holds more than the {expected_users} users the manifest lists "
                                     "(manifest does not match shards)")
            yield block
        bad_sum = _mismatch(url, stream, sha256) if sha256 else None
    except Exception as e:  # tarfile.ReadError, OSError from a pipe:, ValueError from decode_block, ...
        # a corrupt shard usually fails to decode first: say so when the checksum shows it
        bad_sum = None
        if sha256:
            try:
                bad_sum = _mismatch(url, stream, sha256)
            except Exception:  # the stream itself is broken: report the first error
                pass
        if bad_sum is not None:
            raise bad_sum from e
        if isinstance(e, ShardReadError):
            raise
        raise ShardReadError(f"{url}: cannot read shard: {type(e).__name__}: {e}") from e
    finally:
        stream.close()
    if bad_sum is not None:
        raise bad_sum
    if sha256:
        _verified.add(key)
    if expected_users is not None and count != expected_users:
        raise ShardReadError(f"{url}: holds {count} users, the manifest lists {expected_users} "
                             "(truncated shard, or manifest does not match shards)")


def user_lengths(urls: Sequence[str], shard_users: Sequence[int], num_items: int,
                 checksums: Sequence[str | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(lengths, users)`` of every user in global slot order (one pass over the shards), for
    token-budget planning."""
    lengths, users = [], []
    for i, (url, n) in enumerate(zip(urls, shard_users)):
        for block in read_blocks(url, n, num_items, checksums[i] if checksums else None):
            lengths.append(np.diff(block.offsets))
            users.append(block.users)
    if not lengths:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(lengths).astype(np.int64), np.concatenate(users).astype(np.int64)
