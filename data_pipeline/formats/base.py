"""What a reader is: a :class:`Format` names itself and its file extensions and opens a file into
a :class:`FileReader`, which yields :class:`Chunk` s: an Arrow batch of the good rows plus the bad
lines met on the way, each with its file, line (or row) and reason.

Readers never decide what a bad line means: ``data_pipeline.readers`` applies the one policy
(``source.on_bad_line`` / ``source.max_bad_lines``) the same way for every format.

Batch columns, by role: ``user``, ``item`` (int64, or string with ``source.string_ids``), ``ts``
(int64 ticks, :attr:`FileReader.ts_per_second` ticks a second; absent when the file has no
timestamps) and ``rating`` (float64, only when ``source.min_rating`` is set).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, List, NamedTuple, Optional, Protocol, Sequence

import pyarrow as pa


@dataclass(frozen=True)
class BadLine:
    """One malformed input record: ``number`` is the 1-based physical line of a text file
    (``unit="line"``) or the 0-based row of a Parquet file (``unit="row"``)."""

    path: str
    number: int
    reason: str
    text: str = ""
    unit: str = "line"

    def message(self) -> str:
        where = f"{self.path}:{self.number}" if self.unit == "line" else f"{self.path}: row {self.number}"
        return f"{where}: {self.reason}" + (f": {self.text[:200]!r}" if self.text else "")


class Chunk(NamedTuple):
    batch: pa.RecordBatch  # good rows, in file order (see the module docstring for the columns)
    bad: List[BadLine]  # bad records met since the previous chunk, in file order


class FileReader(Protocol):
    path: str
    ts_per_second: Optional[int]  # ticks per second of ``ts``; None: the file has no timestamps

    def chunks(self, batch_rows: int, units: Optional[Sequence[int]] = None) -> Iterator[Chunk]:
        """The file's records; ``units``: only these independently readable parts (see
        :attr:`Format.units`), in that order."""
        ...


@dataclass(frozen=True)
class Format:
    """A registered input format (one module of ``data_pipeline.formats``)."""

    name: str  # the ``source.format`` value
    extensions: tuple  # lower-case file name endings, e.g. (".jsonl", ".jsonl.gz")
    open: Callable[..., FileReader]  # (SourceConfig, path) -> reader; ValueError naming the file on a bad header
    summary: str = ""  # one line for docs and error messages
    ratings: bool = False  # has a rating column (``source.min_rating`` applies)
    # (non-blank first line of a file) -> does it look like this format; only formats sharing an
    # extension need it (``.txt``): the format most of a file's first lines fit wins
    sniff: Optional[Callable[[bytes], bool]] = None
    # path -> rows of each independently readable unit (Parquet row groups), for a parallel read
    units: Optional[Callable[[str], List[int]]] = None
