"""SASRec pairs: ``user item`` per line, single-space separated, in chronological order (no
timestamps: the file order is the order)."""
from __future__ import annotations

from data_pipeline._text import TextSpec
from data_pipeline.formats._textreader import TextFileReader
from data_pipeline.formats.base import Format


def open_file(src, path: str) -> TextFileReader:
    ids = "str" if src.string_ids else "int"
    spec = TextSpec(path, " ", ["user", "item"], {"user": ids, "item": ids}, quoting=False)
    return TextFileReader(spec, {"user": "user", "item": "item"}, src)


def looks_like(line: bytes) -> bool:
    return len(line.split()) == 2


FORMATS = (Format("sasrec_pairs", (".txt", ".txt.gz"), open_file, "`user item` per line, chronological",
                  sniff=looks_like),)
