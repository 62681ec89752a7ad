"""Delimited text -> Arrow batches, strict, with line-exact errors (used by ``readers``).

Fast path: pyarrow's streaming CSV reader with typed columns. When it fails, a slow Python scan of
the same file finds the first bad physical line so the error names ``file:line``. In skip mode the
needed columns are read as strings, validated with vectorised regexes, and bad rows are dropped and
counted (column-count errors through pyarrow's ``invalid_row_handler``). Blank lines are ignored.
"""
from __future__ import annotations

import csv
import gzip
import io
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

INT_RE = r"^[+-]?[0-9]+$"
FLOAT_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_PY_RE = {"int": re.compile(INT_RE), "float": re.compile(FLOAT_RE), "str": re.compile(r"^.+$")}


@dataclass
class TextSpec:
    """How to split one text file; ``kinds`` maps each needed column to int|float|str."""

    path: str
    delimiter: str
    names: List[str]  # all column names, in file order
    kinds: Dict[str, str]  # needed column -> int|float|str
    header_lines: int = 0
    colons: bool = False  # MovieLens '::' separators (rewritten to ':' on the fly)
    quoting: bool = True
    block_size: int = 16 << 20
    skipped: int = 0  # bad lines dropped so far (skip mode)
    roles: Dict[str, str] = field(default_factory=dict)  # file column -> user|item|ts|rating


class _ColonStream(io.RawIOBase):
    """Binary stream that rewrites ``::`` to ``:`` (chunk-boundary safe)."""

    def __init__(self, raw) -> None:
        self._raw, self._carry = raw, b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while True:
            chunk = self._raw.read(max(len(b) - 1, 1))
            data = self._carry + (chunk or b"")
            run = len(data) - len(data.rstrip(b":"))
            if chunk and run % 2:  # an odd trailing ':' may pair with the next chunk's first byte
                self._carry, data = b":", data[:-1]
            else:
                self._carry = b""
            data = data.replace(b"::", b":")
            if data or not chunk:
                n = len(data)  # <= 1 carried byte + len(b) - 1 read bytes
                b[:n] = data
                return n


def open_binary(path: str):
    """A buffered binary stream of the (decompressed if .gz) file."""
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _stream(spec: TextSpec):
    raw = open_binary(spec.path)
    return io.BufferedReader(_ColonStream(raw), 1 << 20) if spec.colons else raw


def read_header(path: str, delimiter: str) -> List[str]:
    with open_binary(path) as f:
        for raw in f:
            line = raw.decode("utf-8-sig").rstrip("\r\n")
            if line.strip():
                return next(csv.reader([line], delimiter=delimiter))
    raise ValueError(f"{path}: empty file (no header line)")


def _options(spec: TextSpec, strict: bool, on_invalid: Optional[Callable]):
    ro = pacsv.ReadOptions(column_names=spec.names, skip_rows=spec.header_lines, block_size=spec.block_size)
    po = pacsv.ParseOptions(delimiter=spec.delimiter, quote_char='"' if spec.quoting else False,
                            invalid_row_handler=on_invalid, ignore_empty_lines=True)
    typ = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}
    types = {c: (typ[k] if strict else pa.string()) for c, k in spec.kinds.items()}
    co = pacsv.ConvertOptions(include_columns=list(spec.kinds), column_types=types, null_values=[],
                              strings_can_be_null=False, quoted_strings_can_be_null=False)
    return ro, po, co


def find_bad_line(spec: TextSpec) -> Optional[str]:
    """Slow scan: ``"file:line: reason: 'text'"`` for the first malformed line, or None."""
    idx = {c: spec.names.index(c) for c in spec.kinds}
    with open_binary(spec.path) as f:
        for lineno, raw in enumerate(f, 1):
            if lineno <= spec.header_lines:
                continue
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if not text.strip():
                continue
            reason = _line_problem(spec, text, idx)
            if reason:
                return f"{spec.path}:{lineno}: {reason}: {text[:200]!r}"
    return None


def _line_problem(spec: TextSpec, text: str, idx: Dict[str, int]) -> Optional[str]:
    if spec.colons:
        fields = text.split("::")
    elif spec.quoting:
        fields = next(csv.reader([text], delimiter=spec.delimiter))
    else:
        fields = text.split(spec.delimiter)
    if len(fields) != len(spec.names):
        return f"expected {len(spec.names)} fields, got {len(fields)}"
    for col, kind in spec.kinds.items():
        if not _PY_RE[kind].match(fields[idx[col]]):
            return f"column {col!r} is not a valid {kind}: {fields[idx[col]]!r}"
    return None


def _fail(spec: TextSpec, err: Exception) -> ValueError:
    where = find_bad_line(spec)
    return ValueError(where or f"{spec.path}: cannot parse ({err})")


def iter_text_batches(spec: TextSpec, skip_bad: bool) -> Iterator[pa.RecordBatch]:
    """Batches of the needed columns, typed (int64/float64/string); see the module docstring."""
    def on_invalid(row) -> str:
        spec.skipped += 1
        return "skip"

    ro, po, co = _options(spec, strict=not skip_bad, on_invalid=on_invalid if skip_bad else None)
    try:
        reader = pacsv.open_csv(_stream(spec), read_options=ro, parse_options=po, convert_options=co)
    except pa.ArrowInvalid as e:
        if "Empty CSV file" in str(e):
            return
        raise _fail(spec, e) from e
    with reader:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid as e:
                raise _fail(spec, e) from e
            yield _validated(spec, batch) if skip_bad else batch


def _validated(spec: TextSpec, batch: pa.RecordBatch) -> pa.RecordBatch:
    """Skip mode: drop (and count) rows whose needed fields do not parse; cast the rest."""
    ok = None
    for col, kind in spec.kinds.items():
        m = pc.match_substring_regex(batch.column(col), {"int": INT_RE, "float": FLOAT_RE, "str": "^.+$"}[kind])
        ok = m if ok is None else pc.and_(ok, m)
    bad = len(batch) - pc.sum(ok).as_py() if len(batch) else 0
    if bad:
        spec.skipped += bad
        batch = batch.filter(ok)
    typ = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}
    cols = [pc.cast(batch.column(c), typ[k]) for c, k in spec.kinds.items()]
    return pa.RecordBatch.from_arrays(cols, names=list(spec.kinds))
