"""S3Rec "user per line" text (``user i1 i2 ... in``, chronological) -> (user, item) batches.

Each chunk of lines is checked with one compiled regex per line (C speed), then all tokens of
the valid lines are parsed at once by numpy. A bad line raises ValueError naming ``file:line``,
or is dropped and counted in skip mode. Blank lines are ignored.
"""
from __future__ import annotations

import re
from typing import Iterator, Tuple

import numpy as np
import pyarrow as pa

from data_pipeline._text import open_binary

_LINE = re.compile(rb"^\s*[0-9]+(?:[ \t]+[0-9]+)+\s*$")


def _problem(text: bytes) -> str:
    toks = text.split()
    if len(toks) < 2:
        return "a user line needs a user id and at least one item"
    bad = next((t for t in toks if not t.isdigit()), b"")
    return f"token {bad.decode(errors='replace')!r} is not a non-negative integer"


def iter_line_batches(path: str, skip_bad: bool, batch_rows: int) -> Iterator[Tuple[pa.RecordBatch, int]]:
    """Yield ``(batch of user,item, bad lines dropped in it)``; ~batch_rows tokens per batch."""
    users, items, pending, bad = [], [], 0, 0
    with open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            if not _LINE.match(raw):
                if not skip_bad:
                    text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                    raise ValueError(f"{path}:{lineno}: {_problem(raw)}: {text[:200]!r}")
                bad += 1
                continue
            toks = raw.split()
            users.append(toks[0])
            items.append(toks)
            pending += len(toks) - 1
            if pending >= batch_rows:
                yield _batch(users, items), bad
                users, items, pending, bad = [], [], 0, 0
    if users or bad:
        yield _batch(users, items), bad


def _batch(users, lines) -> pa.RecordBatch:
    lengths = np.fromiter((len(t) - 1 for t in lines), dtype=np.int64, count=len(lines))
    uid = np.array(users).astype(np.int64) if users else np.zeros(0, np.int64)
    flat = [tok for toks in lines for tok in toks[1:]]
    item = np.array(flat).astype(np.int64) if flat else np.zeros(0, np.int64)
    return pa.RecordBatch.from_arrays([pa.array(np.repeat(uid, lengths)), pa.array(item)], names=["user", "item"])
