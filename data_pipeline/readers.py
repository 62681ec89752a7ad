"""Raw event logs -> a stream of Arrow batches with columns ``user``, ``item``, ``ts``, ``row``.

The formats are the registry in ``data_pipeline.formats``; this module resolves the input files,
checks them before anything is written (:func:`check_inputs`) and applies the one bad-line policy
to every format: with ``source.on_bad_line=error`` the first bad line stops the read with
``ValueError("<file>:<line>: <reason>: '<text>'")`` (Parquet: ``<file>: row <n>: ...``); with
``skip`` bad lines are dropped and counted per file in :class:`ReadStats` (into the manifest),
up to ``source.max_bad_lines``.

``user``/``item``: original ids (int64, or string with ``string_ids``); ``ts``: int64 ticks
(:attr:`ReadStats.ts_per_second` a second), or the file order for inputs without timestamps
(``ts_per_second`` None); ``row``: int64 global original row order (files in sorted order), the
tie-breaker of the stable (ts, row) sort.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_pipeline import formats
from data_pipeline.config import SourceConfig
from data_pipeline.formats.base import BadLine
from data_pipeline.errors import DataError

MAX_EXAMPLES = 10  # bad lines kept word for word in the read statistics


@dataclass
class ReadStats:
    """Counts of one read: parsed rows, rows dropped by filters, bad lines skipped per file, the
    first bad lines as messages, and the timestamp unit the files agree on."""

    rows: int = 0
    filtered: int = 0
    bad_lines: int = 0
    bad_by_file: Dict[str, int] = field(default_factory=dict)
    bad_examples: List[str] = field(default_factory=list)
    ts_per_second: Optional[int] = None
    ts_source: Optional[str] = None  # the first file read, which set ts_per_second

    def add_bad(self, path: str, n: int, examples: Optional[List[str]] = None) -> None:
        if n:
            self.bad_lines += n
            self.bad_by_file[path] = self.bad_by_file.get(path, 0) + n
        self.bad_examples.extend((examples or [])[:max(MAX_EXAMPLES - len(self.bad_examples), 0)])

    def set_timestamps(self, path: str, ts_per_second: Optional[int]) -> None:
        """Every input file must agree on having timestamps, and on their unit."""
        if self.ts_source is None:
            self.ts_source, self.ts_per_second = path, ts_per_second
        elif ts_per_second != self.ts_per_second:
            raise DataError(f"{path}: {describe_ts(ts_per_second)}, but {self.ts_source} has "
                             f"{describe_ts(self.ts_per_second)}; all input files must agree")

    def merge(self, other: dict) -> None:
        self.rows += other["rows"]
        self.filtered += other["filtered"]
        for f, n in other["bad_by_file"].items():
            self.add_bad(f, n)
        self.bad_examples.extend(other["bad_examples"][:max(MAX_EXAMPLES - len(self.bad_examples), 0)])
        if other["ts_source"] is not None:
            self.set_timestamps(other["ts_source"], other["ts_per_second"])

    def as_dict(self) -> dict:
        return {"rows": self.rows, "filtered": self.filtered, "bad_lines": self.bad_lines,
                "bad_by_file": dict(sorted(self.bad_by_file.items())), "bad_examples": list(self.bad_examples),
                "ts_per_second": self.ts_per_second, "ts_source": self.ts_source}


def describe_ts(ts_per_second: Optional[int]) -> str:
    return "no timestamp column" if ts_per_second is None else f"timestamps in 1/{ts_per_second} s ticks"


def resolve_files(path: str) -> List[str]:
    """A file, a directory (its non-hidden files, README* excluded) or a glob -> sorted files."""
    if not path:
        raise DataError("source.path: empty")
    if os.path.isdir(path):
        files = [os.path.join(path, f) for f in os.listdir(path)
                 if not f.startswith((".", "_")) and not f.upper().startswith("README")]
    elif any(ch in path for ch in "*?["):
        files = glob.glob(path)
    else:
        files = [path] if os.path.exists(path) else []
    files = sorted(f for f in files if os.path.isfile(f))
    if not files:
        what = "no file matches the glob" if any(ch in path for ch in "*?[") else \
            "the directory holds no input files" if os.path.isdir(path) else "no such file"
        raise DataError(f"source.path: no input files at {path!r} ({what})")
    return files


def detect_format(path: str) -> str:
    """The registry's format name for ``path`` (extension; ``.txt`` by a vote of its lines)."""
    return formats.detect(path).name


def _open(src: SourceConfig, path: str):
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    return formats.format_of(path, src.format).open(src, path)


def check_inputs(src: SourceConfig) -> List[str]:
    """Every input file exists, is not empty, has a known format and a usable header/schema
    (the whole content is checked while it is read). Raises ValueError naming the file."""
    src.validate()
    files = resolve_files(src.path)
    kinds: dict = {}
    for path in files:
        kinds.setdefault(formats.format_of(path, src.format).name, []).append(os.path.basename(path))
    if len(kinds) > 1:  # most often one log saved twice (events.csv and events.parquet): read twice
        listed = "; ".join(f"{k}: {', '.join(v[:3])}{' ...' if len(v) > 3 else ''}" for k, v in kinds.items())
        raise DataError(f"source.path: {src.path} holds files of {len(kinds)} formats ({listed}); each would be "
                        "read as part of the log. Point source.path at one of them (e.g. a glob such as dir/*.parquet)")
    stats = ReadStats()
    for path in files:
        reader = _open(src, path)
        stats.set_timestamps(path, reader.ts_per_second)
        if src.min_rating is not None and not formats.format_of(path, src.format).ratings:
            raise DataError(f"source.min_rating: {path} ({formats.format_of(path, src.format).name}) has no ratings")
    return files


def parquet_units(src: SourceConfig) -> Optional[List[Tuple[str, int, int]]]:
    """``(file, unit, rows)`` of every independently readable unit (Parquet row groups) if every
    input's format has units, else None."""
    files = resolve_files(src.path)
    fmts = [formats.format_of(f, src.format) for f in files]
    if any(f.units is None for f in fmts):
        return None
    return [(path, g, rows) for path, fmt in zip(files, fmts) for g, rows in enumerate(fmt.units(path))]


class _Policy:
    """``source.on_bad_line`` / ``max_bad_lines``, the same for every format."""

    def __init__(self, src: SourceConfig, stats: ReadStats) -> None:
        self.src, self.stats = src, stats

    def take(self, bad: List[BadLine]) -> None:
        if not bad:
            return
        if self.src.on_bad_line == "error":
            raise DataError(bad[0].message() + " (source.on_bad_line=skip drops and counts bad lines)")
        self.stats.add_bad(bad[0].path, len(bad), [b.message() for b in bad[:MAX_EXAMPLES]])
        limit = self.src.max_bad_lines
        if limit is not None and self.stats.bad_lines > limit:
            raise DataError(f"{bad[-1].message()}: more than source.max_bad_lines={limit} bad lines "
                             f"({self.stats.bad_lines} so far)")


def _finish(src: SourceConfig, batch: pa.RecordBatch, stats: ReadStats) -> pa.RecordBatch:
    """Filter by rating, add ts (the row when the file has none) and the global row."""
    n = len(batch)
    row = pa.array(np.arange(stats.rows, stats.rows + n, dtype=np.int64))
    stats.rows += n
    names = batch.schema.names
    out = pa.RecordBatch.from_arrays(
        [batch.column("user"), batch.column("item"), batch.column("ts") if "ts" in names else row, row],
        names=["user", "item", "ts", "row"])
    if src.min_rating is not None:
        out = out.filter(pc.greater_equal(batch.column("rating"), src.min_rating))
        stats.filtered += n - len(out)
    return out


def iter_events(src: SourceConfig, stats: Optional[ReadStats] = None, batch_rows: int = 1 << 20,
                units: Optional[List[Tuple[str, int, int]]] = None) -> Iterator[pa.RecordBatch]:
    """Stream every file of ``src`` as ``user, item, ts, row`` batches (see module docstring).

    ``units``: read only these units (from :func:`parquet_units`), in that order.
    """
    stats = stats if stats is not None else ReadStats()
    policy = _Policy(src, stats)
    if units is not None:
        plan = [(path, [u[1] for u in units if u[0] == path]) for path in dict.fromkeys(u[0] for u in units)]
    else:
        plan = [(path, None) for path in resolve_files(src.path)]
    for path, parts in plan:
        reader = _open(src, path)
        stats.set_timestamps(path, reader.ts_per_second)
        for batch, bad in reader.chunks(batch_rows, parts):
            policy.take(bad)
            if len(batch):
                yield _finish(src, batch, stats)


def read_events(src: SourceConfig, batch_rows: int = 1 << 20) -> "tuple[pa.Table, ReadStats]":
    """Whole event table in memory (small data, tests); raises ValueError when it is empty."""
    stats = ReadStats()
    batches = list(iter_events(src, stats, batch_rows))
    table = pa.Table.from_batches(batches) if batches else None
    if table is None or table.num_rows == 0:
        raise DataError(f"{src.path}: no events (empty input{' after filters' if stats.rows else ''})")
    return table, stats
