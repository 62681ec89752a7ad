"""Text inputs: blocks of whole lines with their line numbers, and the delimited-text reader.

A file (gzip-decompressed on the fly) is cut into blocks of whole lines; each block knows the
number of its first line, so every bad line is reported as ``file:line`` in both modes.

Delimited blocks take a fast path: pyarrow's CSV parser with typed columns, used only when the
block cannot hold anything pyarrow reads differently from :func:`line_problem` (the plain
per-line reference): no blanks around numbers, no ``0x`` (pyarrow reads hex ints), every ``:`` of
a MovieLens line part of a ``::`` separator, all floats finite, no empty string ids. Any other
block, or one pyarrow rejects, is checked line by line by the reference; its good lines are then
parsed by pyarrow on their own. ``tests/test_reader_errors.py`` checks both against a separate
plain parser on random files.
"""
from __future__ import annotations

import csv
import gzip
import math
import re
import zlib
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from data_pipeline.formats.base import BadLine, Chunk
from data_pipeline.errors import DataError

INT_RE = re.compile(r"^-?[0-9]+$")
FLOAT_RE = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_ARROW = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}
UTF8_BOM = b"\xef\xbb\xbf"


def open_binary(path: str):
    """A buffered binary stream of the (decompressed if .gz) file."""
    return gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")


def block_bytes(batch_rows: int) -> int:
    """Block size for about ``batch_rows`` lines of a typical event log (~16 bytes a line)."""
    return min(max(batch_rows * 16, 1 << 10), 1 << 26)


def iter_blocks(path: str, block_size: int, skip_through: int = 0) -> Iterator[Tuple[int, bytes]]:
    """``(number of the first line, whole lines ending in '\\n')`` over the file; lines up to
    ``skip_through`` (a header) are left out. A truncated or corrupt gzip stream is a ValueError
    naming the first line it did not deliver whole."""
    lineno, pending, size, start = 1, [], 0, True
    # gzip: small reads, so an error loses at most one piece; plain files: one read per block
    piece = min(block_size, 1 << 16) if path.lower().endswith(".gz") else block_size
    with open_binary(path) as f:
        while True:
            try:
                chunk = f.read(piece)
            except (EOFError, OSError, zlib.error) as e:
                lost = lineno + sum(p.count(b"\n") for p in pending)
                raise DataError(f"{path}:{lost}: the gzip data ends early or is corrupt (truncated file?): {e}") from None
            if start:  # a UTF-8 byte order mark is no part of the first line, whichever path reads it
                chunk, start = chunk.removeprefix(UTF8_BOM), False
            if chunk:
                pending.append(chunk)
                size += len(chunk)
                if size < block_size or b"\n" not in chunk:
                    continue
            data = b"".join(pending)
            if not data:
                return
            cut = data.rfind(b"\n") + 1 if chunk else len(data)
            block, rest = data[:cut], data[cut:]
            pending, size = ([rest], len(rest)) if rest else ([], 0)
            if not block.endswith(b"\n"):
                block += b"\n"
            while lineno <= skip_through and block:
                block = block[block.find(b"\n") + 1:]
                lineno += 1
            if block:
                yield lineno, block
                lineno += block.count(b"\n")
            if not chunk:
                return


def first_lines(path: str, n: int) -> List[Tuple[int, bytes]]:
    """``(line number, line)`` of the first ``n`` non-blank lines (no line ending)."""
    out: List[Tuple[int, bytes]] = []
    for first, block in iter_blocks(path, 1 << 16):
        for k, raw in enumerate(block.split(b"\n")[:-1]):
            line = raw.rstrip(b"\r")
            if line:
                out.append((first + k, line))
                if len(out) >= n:
                    return out
    return out


def split_fields(line: str, delimiter: str, quoting: bool) -> List[str]:
    if quoting:
        return next(csv.reader([line], delimiter=delimiter, strict=True))
    return line.split(delimiter)


@dataclass
class TextSpec:
    """How to split one delimited file; ``kinds`` maps each needed column to int|float|str."""

    path: str
    delimiter: str
    names: List[str]  # all column names, in file order
    kinds: Dict[str, str]  # needed column -> int|float|str
    header_line: int = 0  # physical line number of the header (0: none)
    colons: bool = False  # MovieLens '::' separators
    quoting: bool = True
    limits: Dict[str, float] = field(default_factory=dict)  # float column -> largest allowed |value|


def line_problem(spec: TextSpec, raw: bytes) -> Optional[str]:
    """The plain reference: why a non-blank line is malformed, or None."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "not valid UTF-8"
    if "\r" in text:  # pyarrow would end the record there
        return "carriage return inside the line"
    if spec.colons:
        fields = text.split("::")
        if any(":" in f for f in fields):
            return "broken '::' separator"
    else:
        try:
            fields = split_fields(text, spec.delimiter, spec.quoting)
        except csv.Error as e:
            return f"malformed quoting ({e})"
    if len(fields) != len(spec.names):
        return f"expected {len(spec.names)} fields, got {len(fields)}"
    for col, kind in spec.kinds.items():
        value = fields[spec.names.index(col)]
        if not _valid(kind, value, spec.limits.get(col, math.inf)):
            return f"column {col!r} is not a valid {kind}: {value!r}"
    return None


def _valid(kind: str, value: str, limit: float) -> bool:
    if kind == "int":
        return bool(INT_RE.match(value)) and INT64_MIN <= int(value) <= INT64_MAX
    if kind == "float":
        return bool(FLOAT_RE.match(value)) and abs(float(value)) <= limit
    return value != ""


def scan_block(spec: TextSpec, first: int, block: bytes) -> Tuple[List[BadLine], List[bytes]]:
    """(bad lines, good lines) of one block by the reference check."""
    bad, good = [], []
    for k, raw in enumerate(block.split(b"\n")[:-1]):
        line = raw.rstrip(b"\r")
        if not line:
            continue
        reason = line_problem(spec, line)
        if reason:
            bad.append(BadLine(spec.path, first + k, reason, line.decode("utf-8", errors="replace")))
        else:
            good.append(line)
    return bad, good


class DelimitedBlocks:
    """Typed Arrow tables of a delimited file's needed columns, block by block (module docstring).

    MovieLens ``::`` is parsed with ``:`` as the delimiter and an empty column expected between
    every two fields: any other ``:`` changes the column count or fills a separator column."""

    def __init__(self, spec: TextSpec) -> None:
        self.spec = spec
        self._numeric = any(k != "str" for k in spec.kinds.values())
        self._blanks = [b for b in (b" ", b"\t") if b.decode() != spec.delimiter] if self._numeric else []
        names = list(spec.names)
        self._seps: List[str] = []
        if spec.colons:
            self._seps = [f"\0sep{i}" for i in range(len(names) - 1)]
            names = [x for pair in zip(names, self._seps + [None]) for x in pair if x is not None]
        types = {c: _ARROW[k] for c, k in spec.kinds.items()} | {c: pa.string() for c in self._seps}
        self._read = pacsv.ReadOptions(column_names=names)
        self._parse = pacsv.ParseOptions(delimiter=":" if spec.colons else spec.delimiter,
                                         quote_char='"' if spec.quoting else False, ignore_empty_lines=True)
        self._convert = pacsv.ConvertOptions(include_columns=list(types), column_types=types, null_values=[],
                                             strings_can_be_null=False, quoted_strings_can_be_null=False)

    def chunks(self, batch_rows: int) -> Iterator[Tuple[pa.Table, List[BadLine]]]:
        for first, block in iter_blocks(self.spec.path, block_bytes(batch_rows), self.spec.header_line):
            table = None if self._suspect(block) else self._arrow(block)
            if table is not None:
                yield table, []
                continue
            bad, good = scan_block(self.spec, first, block)
            table = self._arrow(b"\n".join(good) + b"\n") if good else self._empty()
            if table is None:
                last = first + block.count(b"\n") - 1
                raise DataError(f"{self.spec.path}:{first}: lines {first}-{last} pass the line check but "
                                 "cannot be parsed; please report this file")
            yield table, bad

    def _suspect(self, block: bytes) -> bool:
        """Might pyarrow read this block differently from the reference (blanks, hex ints)?"""
        if any(b in block for b in self._blanks):
            return True
        # one-byte scans first: they are memchr-fast, the two-byte ones are not
        return self._numeric and ((b"x" in block and b"0x" in block) or (b"X" in block and b"0X" in block))

    def _arrow(self, data: bytes) -> Optional[pa.Table]:
        """The typed table if pyarrow parses ``data`` and every value passes the reference's rules."""
        try:
            table = pacsv.read_csv(pa.py_buffer(data), read_options=self._read, parse_options=self._parse,
                                   convert_options=self._convert)
        except pa.ArrowInvalid:
            return None
        for sep in self._seps:
            if table.num_rows and pc.max(pc.utf8_length(table.column(sep))).as_py() != 0:
                return None
        table = table.select(list(self.spec.kinds))
        return table if self._values_ok(table) else None

    def _values_ok(self, table: pa.Table) -> bool:
        for col, kind in self.spec.kinds.items():
            values = table.column(col)
            if not len(values):
                continue
            if kind == "float":
                limit = self.spec.limits.get(col, math.inf)
                if not pc.all(pc.is_finite(values)).as_py() or pc.max(pc.abs(values)).as_py() > limit:
                    return False
            elif kind == "str" and pc.min(pc.utf8_length(values)).as_py() == 0:
                return False
        return True

    def _empty(self) -> pa.Table:
        return pa.table({c: pa.array([], _ARROW[k]) for c, k in self.spec.kinds.items()})


def read_header(path: str, delimiter: str) -> Tuple[int, List[str]]:
    """(line number, column names) of the first non-blank line; ValueError if there is none."""
    lines = first_lines(path, 1)
    if not lines:
        raise DataError(f"{path}: empty file (no header line)")
    lineno, raw = lines[0]
    text = raw.decode("utf-8", errors="replace")
    try:
        return lineno, split_fields(text, delimiter, quoting=True)
    except csv.Error as e:  # e.g. a comma-separated header read as tab-separated
        raise DataError(f"{path}:{lineno}: cannot split the header line on {delimiter!r} ({e}): {text[:200]!r}; "
                        "check source.format") from None
