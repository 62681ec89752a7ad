"""A delimited text file as a :class:`~data_pipeline.formats.base.FileReader`: the blocks of
``data_pipeline._text`` with their columns renamed to roles and timestamps made int64 ticks."""
from __future__ import annotations

from typing import Dict, Iterator, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from data_pipeline._text import DelimitedBlocks, TextSpec, first_lines
from data_pipeline.formats._columns import INT64_MAX, MICROS, ts_unit
from data_pipeline.formats.base import Chunk
from data_pipeline.errors import DataError


class TextFileReader:
    """``roles``: file column -> user|item|ts|rating. An int ``ts`` column is kept as it is
    (``ts_per_second`` = ``source.ts_unit``); a float one becomes microseconds."""

    def __init__(self, spec: TextSpec, roles: Dict[str, str], src, ts_fixed: Optional[int] = None) -> None:
        self.path, self.spec, self.roles = spec.path, spec, roles
        ts_col = next((c for c, r in roles.items() if r == "ts"), None)
        unit = ts_fixed or ts_unit(src)
        self._scale = None
        if ts_col is None:
            self.ts_per_second = None
        elif spec.kinds[ts_col] == "float":
            self._scale = MICROS / unit
            spec.limits[ts_col] = INT64_MAX / 2 / self._scale  # so that the tick count fits int64
            self.ts_per_second = MICROS
        else:
            self.ts_per_second = unit
        need = 2 if spec.header_line else 1  # the header is the first non-blank line
        if len(first_lines(spec.path, need)) < need:
            raise DataError(f"{spec.path}: empty file: no events" + (" after the header" if spec.header_line else ""))

    def chunks(self, batch_rows: int, units: Optional[Sequence[int]] = None) -> Iterator[Chunk]:
        if units is not None:
            raise DataError(f"{self.path}: text files are read whole")
        for table, bad in DelimitedBlocks(self.spec).chunks(batch_rows):
            cols, names = [], []
            for col, role in self.roles.items():
                values = table.column(col).combine_chunks() if table.num_rows else pa.array([], table.schema.field(col).type)
                if role == "ts" and self._scale is not None:
                    values = pc.cast(pc.round(pc.multiply(values, self._scale)), pa.int64())
                cols.append(values)
                names.append(role)
            yield Chunk(pa.RecordBatch.from_arrays(cols, names=names), bad)
