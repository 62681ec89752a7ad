"""S3Rec lines: ``user i1 i2 ...`` per line (one user's whole chronological history)."""
from __future__ import annotations

from data_pipeline._lines import UserLinesReader
from data_pipeline.formats.base import Format


def looks_like(line: bytes) -> bool:
    return len(line.split()) >= 3


FORMATS = (Format("sasrec_lines", (".txt", ".txt.gz"), UserLinesReader, "S3Rec `user i1 i2 ...` per line",
                  sniff=looks_like),)
