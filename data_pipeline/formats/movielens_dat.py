"""MovieLens ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp`` (seconds), no header.

A line whose ``:`` are not all part of ``::`` separators is a bad line, never split differently.
"""
from __future__ import annotations

from data_pipeline._text import TextSpec
from data_pipeline.formats._columns import TS_UNITS
from data_pipeline.formats._textreader import TextFileReader
from data_pipeline.formats.base import Format

NAMES = ["user", "item", "rating", "ts"]


def open_file(src, path: str) -> TextFileReader:
    ids = "str" if src.string_ids else "int"
    kinds = {"user": ids, "item": ids, "ts": "int"}
    if src.min_rating is not None:
        kinds["rating"] = "float"
    spec = TextSpec(path, ":", NAMES, kinds, colons=True, quoting=False)
    return TextFileReader(spec, {c: c for c in kinds}, src, ts_fixed=TS_UNITS["s"])


FORMATS = (Format("movielens_dat", (".dat", ".dat.gz"), open_file, "MovieLens `::`-separated ratings.dat",
                  ratings=True),)
