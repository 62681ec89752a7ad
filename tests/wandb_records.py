"""Read the records of a W&B run file (``<run dir>/wandb/<offline-run-...>/run-<id>.wandb``).

The file is W&B's append-only log (the LevelDB log layout: a 7-byte header ``:W&B`` + magic +
version, then 32 KiB blocks of chunks ``crc32c:4 length:2 type:1 data``, a record split across
blocks as FIRST/MIDDLE/LAST chunks), each record a ``wandb_internal_pb2.Record``. wandb 0.31 has
no Python reader of it; tests read what an offline run logged through this one.
"""
from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Iterator

from wandb.proto import wandb_internal_pb2 as pb

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _chunks(data: bytes) -> Iterator[bytes]:
    if data[:4] != b":W&B":
        raise ValueError("not a W&B run file (no ':W&B' header)")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def records(path: Path) -> Iterator[pb.Record]:
    for raw in _chunks(Path(path).read_bytes()):
        record = pb.Record()
        record.ParseFromString(raw)
        yield record


def wait_complete(path: Path, timeout_s: float = 60.0) -> Path:
    """``path`` once its last record is the run's ``exit`` record: W&B's service process may still
    be writing the file when ``run.finish()`` has returned."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            kinds = [r.WhichOneof("record_type") for r in records(path)]
        except (OSError, ValueError):  # not created yet, or its header not yet written
            kinds = []
        if "exit" in kinds:
            return Path(path)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: no exit record after {timeout_s} s")
        time.sleep(0.2)


def artifacts(path: Path) -> dict[str, pb.ArtifactRecord]:
    """Artifact records by name (the last one of each name)."""
    return {r.artifact.name: r.artifact for r in records(path) if r.WhichOneof("record_type") == "artifact"}


def summary(path: Path) -> dict[str, str]:
    """Summary keys -> their last JSON value."""
    out = {}
    for r in records(path):
        if r.WhichOneof("record_type") == "summary":
            for u in r.summary.update:  # a key is either ``key`` or a one-element ``nested_key``
                key = u.key or "/".join(u.nested_key)
                if key:
                    out[key] = u.value_json
    return out
