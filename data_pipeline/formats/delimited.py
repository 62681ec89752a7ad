"""Delimited logs with a header (or column positions): CSV, TSV and RecBole ``.inter``.

Columns are found by ``source.<role>_col`` or by common names (``user_id``, ``movieId``,
``timestamp``, ...); header-less files name columns by position (``"0"``, ``"1"``, ...).
RecBole headers carry types (``timestamp:float``): a float timestamp becomes microseconds.
"""
from __future__ import annotations

from data_pipeline._text import TextSpec, first_lines, read_header, split_fields
from data_pipeline.formats._columns import pick_roles
from data_pipeline.formats._textreader import TextFileReader
from data_pipeline.formats.base import Format
from data_pipeline.errors import DataError


def delimited_opener(delimiter: str, typed_header: bool = False):
    def open_file(src, path: str) -> TextFileReader:
        types = {}
        if typed_header:
            header_line, raw = read_header(path, delimiter)
            names = [n.split(":")[0] for n in raw]
            types = {n.split(":")[0]: (n.split(":")[1] if ":" in n else "token") for n in raw}
        elif src.header:
            header_line, names = read_header(path, delimiter)
        else:
            lines = first_lines(path, 1)
            if not lines:
                raise DataError(f"{path}: empty file: no events")
            header_line = 0
            names = [str(i) for i in range(len(split_fields(lines[0][1].decode(errors="replace"), delimiter, True)))]
        cols = pick_roles(src, names, path)
        ids = "str" if src.string_ids else "int"
        kinds = {cols["user"]: ids, cols["item"]: ids}
        if cols["ts"]:
            kinds[cols["ts"]] = "float" if types.get(cols["ts"]) == "float" else "int"
        if cols["rating"]:
            kinds[cols["rating"]] = "float"
        roles = {c: r for r, c in cols.items() if c}
        return TextFileReader(TextSpec(path, delimiter, names, kinds, header_line=header_line), roles, src)

    return open_file


FORMATS = (
    Format("csv", (".csv", ".csv.gz"), delimited_opener(","), "comma-separated, header or positions (MovieLens ratings.csv)",
           ratings=True),
    Format("tsv", (".tsv", ".tsv.gz"), delimited_opener("\t"), "tab-separated, header or positions", ratings=True),
    Format("recbole_inter", (".inter", ".inter.gz"), delimited_opener("\t", typed_header=True),
           "RecBole atomic file, header `name:type`, tab-separated", ratings=True),
)
