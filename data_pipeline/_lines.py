"""S3Rec "user per line" text (``user i1 i2 ... in``, chronological) -> (user, item) batches.

Each block of lines is checked with one compiled regex per line (C speed), then all tokens of
the valid lines are parsed at once by numpy. Bad lines are reported with their line numbers;
blank lines are ignored. No timestamps: the token order is the order.
"""
from __future__ import annotations

import re
from typing import Iterator, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_pipeline._text import INT64_MAX, block_bytes, first_lines, iter_blocks
from data_pipeline.formats.base import BadLine, Chunk
from data_pipeline.errors import DataError

_LINE = re.compile(rb"^[ \t]*[0-9]+(?:[ \t]+[0-9]+)+[ \t]*$")
_LONGEST = len(str(INT64_MAX))


def line_problem(line: bytes) -> Optional[str]:
    """Why a non-blank line is not ``user item...`` (non-negative int64 ids), or None."""
    toks = line.split()
    if _LINE.match(line):
        big = next((t for t in toks if len(t) >= _LONGEST and int(t) > INT64_MAX), None)
        return None if big is None else f"id {big.decode()} does not fit int64"
    if len(toks) < 2:
        return "a user line needs a user id and at least one item"
    bad = next((t for t in toks if not t.isdigit()), b"")
    return f"token {bad.decode(errors='replace')!r} is not a non-negative integer"


class UserLinesReader:
    ts_per_second = None

    def __init__(self, src, path: str) -> None:
        self.path, self.string_ids = path, src.string_ids
        if not first_lines(path, 1):
            raise DataError(f"{path}: empty file: no events")

    def chunks(self, batch_rows: int, units: Optional[Sequence[int]] = None) -> Iterator[Chunk]:
        if units is not None:
            raise DataError(f"{self.path}: text files are read whole")
        for first, block in iter_blocks(self.path, block_bytes(batch_rows)):
            users: List[bytes] = []
            lines: List[List[bytes]] = []
            bad: List[BadLine] = []
            for k, raw in enumerate(block.split(b"\n")[:-1]):
                line = raw.rstrip(b"\r")
                if not line:
                    continue
                if _LINE.match(line):
                    toks = line.split()
                    if max(map(len, toks)) < _LONGEST or all(int(t) <= INT64_MAX for t in toks):
                        users.append(toks[0])
                        lines.append(toks)
                        continue
                bad.append(BadLine(self.path, first + k, line_problem(line), line.decode("utf-8", errors="replace")))
            yield Chunk(self._batch(users, lines), bad)

    def _batch(self, users: List[bytes], lines: List[List[bytes]]) -> pa.RecordBatch:
        lengths = np.fromiter((len(t) - 1 for t in lines), dtype=np.int64, count=len(lines))
        uid = np.array(users).astype(np.int64) if users else np.zeros(0, np.int64)
        flat = [tok for toks in lines for tok in toks[1:]]
        item = np.array(flat).astype(np.int64) if flat else np.zeros(0, np.int64)
        cols = [pa.array(np.repeat(uid, lengths)), pa.array(item)]
        if self.string_ids:
            cols = [pc.cast(c, pa.string()) for c in cols]
        return pa.RecordBatch.from_arrays(cols, names=["user", "item"])
