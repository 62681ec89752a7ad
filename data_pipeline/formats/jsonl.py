"""JSON Lines (``.jsonl``, ``.jsonl.gz``): one object per line, e.g.
``{"user": 7, "item": 42, "ts": 1700000000}`` or ``{"user_id": "u7", "item_id": "a", "timestamp":
"2024-05-01T12:00:00Z"}``.

Keys are ``source.<role>_col`` or common names, looked up in the first object. Timestamps are
optional: the first object decides whether the file has them. A timestamp is an epoch number (in
``source.ts_unit``) or an ISO-8601 string (UTC when it has no offset); both become int64
microseconds. A line that is not an object with usable values is a bad line. Parsed in Python,
one ``json.loads`` per line (see docs/DATA.md for its speed).
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from typing import Iterator, List, Optional, Sequence, Tuple

import pyarrow as pa

from data_pipeline._text import block_bytes, first_lines, iter_blocks
from data_pipeline.formats._columns import INT64_MAX, MICROS, pick_roles, ts_unit
from data_pipeline.formats.base import BadLine, Chunk, Format
from data_pipeline.errors import DataError

_DECODER = json.JSONDecoder()  # .decode(str): no per-line encoding detection as json.loads(bytes) does
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICRO = timedelta(microseconds=1)
_TS_LIMIT = INT64_MAX // 2


class _Bad(Exception):
    """A value that makes its line bad (the message is the reason)."""


class JsonLinesReader:
    def __init__(self, src, path: str) -> None:
        self.path, self.string_ids = path, src.string_ids
        first = next(((n, o) for n, o in ((n, _object(raw)) for n, raw in first_lines(path, 1000)) if o), None)
        if first is None:
            raise DataError(f"{path}: " + ("empty file: no events" if not first_lines(path, 1)
                                            else "none of the first 1000 lines is a JSON object"))
        cols = pick_roles(src, list(first[1]), path)
        self.keys = [(role, key) for role, key in cols.items() if key]
        self._unit = ts_unit(src)
        self.ts_per_second = MICROS if cols["ts"] else None

    def chunks(self, batch_rows: int, units: Optional[Sequence[int]] = None) -> Iterator[Chunk]:
        if units is not None:
            raise DataError(f"{self.path}: text files are read whole")
        for first, block in iter_blocks(self.path, block_bytes(batch_rows)):
            values: List[list] = [[] for _ in self.keys]
            bad: List[BadLine] = []
            try:  # one decode per block; a block with invalid UTF-8 goes line by line
                lines = block.decode("utf-8").split("\n")[:-1]
            except UnicodeDecodeError:
                lines = block.split(b"\n")[:-1]
            for k, raw in enumerate(lines):
                if not raw.strip():
                    continue
                try:
                    row = self._row(raw)
                except _Bad as e:
                    text = raw.rstrip("\r" if isinstance(raw, str) else b"\r")
                    bad.append(BadLine(self.path, first + k, str(e),
                                       text if isinstance(text, str) else text.decode("utf-8", errors="replace")))
                    continue
                for column, v in zip(values, row):
                    column.append(v)
            yield Chunk(self._batch(values), bad)

    def _row(self, raw) -> Tuple:
        obj = _object(raw)
        if obj is None:
            raise _Bad("not a JSON object")
        out = []
        for role, key in self.keys:
            if key not in obj:
                raise _Bad(f"no {key!r} key")
            v = obj[key]
            out.append(self._id(role, v) if role in ("user", "item") else
                       self._ts(v) if role == "ts" else _rating(v))
        return tuple(out)

    def _id(self, role: str, v):
        is_int = isinstance(v, int) and not isinstance(v, bool)
        if self.string_ids:
            if is_int or (isinstance(v, str) and v):
                return str(v)
            raise _Bad(f"{role} id {v!r} is not a non-empty string or an integer")
        if is_int and -INT64_MAX - 1 <= v <= INT64_MAX:
            return v
        if isinstance(v, str):
            raise _Bad(f"{role} id {v!r} is a string; set source.string_ids=true")
        raise _Bad(f"{role} id {v!r} is not an int64 integer")

    def _ts(self, v) -> int:
        if isinstance(v, bool) or v is None:
            raise _Bad(f"timestamp {v!r} is not a number or an ISO-8601 string")
        if isinstance(v, int):
            micros = v * MICROS // self._unit
        elif isinstance(v, float):
            if not math.isfinite(v) or abs(v) * MICROS / self._unit > _TS_LIMIT:
                raise _Bad(f"timestamp {v!r} is not a finite epoch number in range")
            micros = round(v * MICROS / self._unit)
        elif isinstance(v, str):
            try:
                dt = datetime.fromisoformat(v)
            except ValueError:
                raise _Bad(f"timestamp {v!r} is not ISO-8601") from None
            micros = ((dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)) - _EPOCH) // _MICRO
        else:
            raise _Bad(f"timestamp {v!r} is not a number or an ISO-8601 string")
        if abs(micros) > _TS_LIMIT:
            raise _Bad(f"timestamp {v!r} out of range")
        return micros

    def _batch(self, values: List[list]) -> pa.RecordBatch:
        types = {"user": pa.string() if self.string_ids else pa.int64(), "ts": pa.int64(), "rating": pa.float64()}
        types["item"] = types["user"]
        return pa.RecordBatch.from_arrays([pa.array(col, types[role]) for (role, _), col in zip(self.keys, values)],
                                          names=[role for role, _ in self.keys])


def _object(raw) -> Optional[dict]:
    """The JSON object on one line (str, or bytes that may not be UTF-8), or None."""
    try:
        obj = _DECODER.decode(raw) if isinstance(raw, str) else json.loads(raw)
    except ValueError:  # (UnicodeDecodeError included)
        return None
    return obj if isinstance(obj, dict) else None


def _rating(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _Bad(f"rating {v!r} is not a finite number")
    return float(v)


FORMATS = (Format("jsonl", (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz"), JsonLinesReader,
                  "JSON Lines: one object per line, optional epoch or ISO-8601 timestamp", ratings=True),)
