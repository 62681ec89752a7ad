"""Byte-reproducible shard writer: plain USTAR members with mtime 0, sha256 computed on the fly.

(webdataset's TarWriter stamps a float mtime, which makes ``tarfile`` emit a PAX header per member:
slower, larger, and not reproducible.) Output goes to ``path + ".tmp"`` and is fsynced and renamed
into place on :meth:`ShardWriter.close`, so a visible shard is always complete.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile

from data_pipeline.shards import UserBlock, encode_block


class _Hashing:
    """A write-only file object that feeds a sha256 as it writes."""

    def __init__(self, f) -> None:
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.h.update(data)
        self.n += len(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.n


class ShardWriter:
    def __init__(self, path: str) -> None:
        self.path = path
        self._f = open(path + ".tmp", "wb")
        self._out = _Hashing(self._f)
        self._tar = tarfile.open(fileobj=self._out, mode="w", format=tarfile.USTAR_FORMAT)
        self.users = self.events = 0

    def write_block(self, key: str, block: UserBlock) -> None:
        sample = encode_block(key, block)
        for name, data in sample.items():
            if name == "__key__":
                continue
            info = tarfile.TarInfo(f"{key}.{name}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._tar.addfile(info, io.BytesIO(data))
        self.users += len(block)
        self.events += len(block.items)

    def close(self) -> dict:
        """Finish, fsync, rename into place; return ``{name, users, events, sha256, bytes}``."""
        self._tar.close()
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.path + ".tmp", self.path)
        return {"name": os.path.basename(self.path), "users": self.users, "events": self.events,
                "sha256": self._out.h.hexdigest(), "bytes": self._out.n}


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
