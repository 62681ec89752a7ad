"""Readers: the registry, the one bad-line protocol, clear errors naming file and line, and the
fast text path against a plain per-line parser on random files."""
from __future__ import annotations

import gzip
import json
import os
import re
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline import formats
from data_pipeline.config import PrepareConfig, SourceConfig
from data_pipeline.prepare import prepare
from data_pipeline.readers import check_inputs, detect_format, read_events


def write(tmp_path, name: str, text, gz: bool = False) -> str:
    path = str(tmp_path / name)
    data = text.encode() if isinstance(text, str) else text
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(data)
    return path


def snapshot(root) -> dict:
    """Every file under ``root`` with its size and mtime (None if ``root`` does not exist)."""
    if not os.path.exists(root):
        return None
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            st = os.stat(os.path.join(d, f))
            out[os.path.relpath(os.path.join(d, f), root)] = (st.st_size, st.st_mtime_ns)
    return out


def prepare_fails(tmp_path, src: SourceConfig, match: str) -> None:
    """``prepare`` raises ``match`` and leaves the output dir as it was: absent, or unchanged."""
    for existing in (False, True):
        out = tmp_path / f"out-{existing}"
        if existing:
            out.mkdir(exist_ok=True)
            (out / "keep.txt").write_text("an earlier file")
        before = snapshot(str(out))
        cfg = PrepareConfig(output_dir=str(out), num_buckets=2, workers=1, progress=False)
        with pytest.raises(ValueError, match=match):
            prepare(src, cfg)
        assert snapshot(str(out)) == before


# --- the registry ---------------------------------------------------------------------------
def test_registry_names_extensions_and_config_validation():
    assert set(formats.names()) >= {"parquet", "csv", "tsv", "recbole_inter", "movielens_dat", "sasrec_pairs",
                                    "sasrec_lines", "jsonl"}
    for name in ("x.parquet", "x.csv.gz", "x.jsonl", "x.JSONL.GZ", "ratings.dat", "a.inter", "b.tsv"):
        assert detect_format(name) == {"parquet": "parquet", "gz": "csv", "jsonl": "jsonl", "GZ": "jsonl",
                                       "dat": "movielens_dat", "inter": "recbole_inter", "tsv": "tsv"}[name.split(".")[-1]]
    with pytest.raises(ValueError, match="x.xml: unknown file type.*source.format"):
        detect_format("x.xml")
    with pytest.raises(ValueError, match="source.format"):
        SourceConfig(format="xml")
    with pytest.raises(ValueError, match="source.min_rating"):
        SourceConfig(format="sasrec_pairs", min_rating=4)
    with pytest.raises(ValueError, match="source.ts_unit"):
        SourceConfig(ts_unit="hours")


def test_a_new_format_is_one_module(tmp_path, monkeypatch):
    """A module dropped into the package's path is found, validated as source.format, sniffed by
    its extension and read by prepare: nothing else names it."""
    (tmp_path / "pipes.py").write_text(
        "from data_pipeline.formats.delimited import delimited_opener\n"
        "from data_pipeline.formats.base import Format\n"
        "FORMATS = (Format('pipes', ('.psv',), delimited_opener('|'), 'pipe-separated'),)\n")
    monkeypatch.setattr(formats, "__path__", [*formats.__path__, str(tmp_path)])
    formats.registry.cache_clear()
    try:
        assert "pipes" in formats.names() and SourceConfig(format="pipes").format == "pipes"
        log = write(tmp_path, "log.psv", "user|item|ts\n" + "".join(f"{u % 3}|{u}|{u}\n" for u in range(12)))
        assert detect_format(log) == "pipes"
        m = prepare(SourceConfig(path=log), PrepareConfig(output_dir=str(tmp_path / "o"), num_buckets=2, workers=1,
                                                          progress=False))
        assert m["num_events"] == 12 and m["timestamps"]
    finally:
        formats.registry.cache_clear()
        sys.modules.pop("data_pipeline.formats.pipes", None)


def test_txt_sniffing_is_a_majority_vote_and_the_odd_line_is_reported(tmp_path):
    pairs = "".join(f"{u} {u + 1}\n" for u in range(50))
    odd = write(tmp_path, "pairs.txt", pairs[:20] + "7 8 9\n" + pairs[20:])
    assert detect_format(odd) == "sasrec_pairs"  # one 3-token line used to flip it to sasrec_lines
    with pytest.raises(ValueError, match=r"pairs.txt:\d+: expected 2 fields, got 3: '7 8 9'"):
        read_events(SourceConfig(path=odd))
    lines = write(tmp_path, "lines.txt", "".join(f"{u} 1 2 3\n" for u in range(30)) + "5 6\n")
    assert detect_format(lines) == "sasrec_lines"  # a one-item user is a valid S3Rec line
    tie = write(tmp_path, "tie.txt", "1 2\n1 2 3\n")
    with pytest.raises(ValueError, match="tie.txt: cannot tell the format.*set source.format"):
        detect_format(tie)


# --- JSON Lines -----------------------------------------------------------------------------
JSONL = [
    {"user": 1, "item": 10, "ts": 1_700_000_000},
    {"user": 1, "item": 11, "ts": 1_700_000_000.25},
    {"user": 2, "item": 10, "ts": "2024-05-01T12:00:00Z"},
    {"user": 2, "item": 12, "ts": "2024-05-01T14:00:00+02:00"},
    {"user": 2, "item": 13, "ts": "2024-05-01"},
]
JSONL_MICROS = [1_700_000_000_000_000, 1_700_000_000_250_000, 1_714_564_800_000_000, 1_714_564_800_000_000,
                1_714_521_600_000_000]


@pytest.mark.parametrize("gz", [False, True])
def test_jsonl_epoch_and_iso_timestamps(tmp_path, gz):
    path = write(tmp_path, "log.jsonl" + (".gz" if gz else ""), "".join(json.dumps(o) + "\n" for o in JSONL), gz=gz)
    t, stats = read_events(SourceConfig(path=path))
    assert t["user"].to_pylist() == [1, 1, 2, 2, 2] and t["item"].to_pylist() == [10, 11, 10, 12, 13]
    assert t["ts"].to_pylist() == JSONL_MICROS and stats.ts_per_second == 10**6
    ms = write(tmp_path, "ms.jsonl", '{"user_id": "a", "item_id": "x", "timestamp": 1700000000123}\n')
    t, _ = read_events(SourceConfig(path=ms, string_ids=True, ts_unit="ms"))
    assert t.to_pydict() == {"user": ["a"], "item": ["x"], "ts": [1_700_000_000_123_000], "row": [0]}
    no_ts = write(tmp_path, "nots.jsonl", '{"user": 3, "item": 4}\n{"user": 3, "item": 5}\n')
    t, stats = read_events(SourceConfig(path=no_ts))
    assert t["ts"].to_pylist() == [0, 1] and stats.ts_per_second is None  # file order


JSONL_BAD = [  # (line, reason)
    ('{"user": 1, "item": 2', "not a JSON object"),
    ('[1, 2, 3]', "not a JSON object"),
    ('{"user": 1, "ts": 5}', "no 'item' key"),
    ('{"user": "u1", "item": 2, "ts": 5}', "is a string; set source.string_ids=true"),
    ('{"user": true, "item": 2, "ts": 5}', "not an int64 integer"),
    ('{"user": 1, "item": 99999999999999999999, "ts": 5}', "not an int64 integer"),
    ('{"user": 1, "item": 2, "ts": "last tuesday"}', "is not ISO-8601"),
    ('{"user": 1, "item": 2, "ts": null}', "not a number"),
    ('{"user": 1, "item": 2, "ts": NaN}', "not a finite epoch number"),
    ('{"user": 1, "item": 2}', "no 'ts' key"),
]


@pytest.mark.parametrize("line,reason", JSONL_BAD, ids=[r for _, r in JSONL_BAD])
def test_jsonl_bad_lines(tmp_path, line, reason):
    good = '{"user": 1, "item": 2, "ts": 5}\n'
    path = write(tmp_path, "b.jsonl", good + "\n" + line + "\n" + good)
    with pytest.raises(ValueError, match=rf"b.jsonl:3: .*{re.escape(reason)}"):
        read_events(SourceConfig(path=path))
    t, stats = read_events(SourceConfig(path=path, on_bad_line="skip"))
    assert t.num_rows == 2 and stats.bad_lines == 1 and stats.bad_examples[0].startswith(f"{path}:3: ")
    prepare_fails(tmp_path, SourceConfig(path=path), rf"b.jsonl:3: ")


# --- every reader: the file and the line -----------------------------------------------------
TEXT_BAD = [  # (file name, content, bad line, reason)
    ("ratings.dat", "1::2::3::10\n1:2::3::10\n", 2, "broken '::' separator"),
    ("ratings.dat", "1::2::3::10\n1::2:::3::10\n", 2, "broken '::' separator"),
    ("ratings.dat", "1::2::3::10\n1::2::3:10\n", 2, "broken '::' separator"),
    ("ratings.dat", "1::2::3::10\n1::2::3::10::5\n", 2, "expected 4 fields, got 5"),
    ("ratings.dat", "1::2::3::10\n1::0x1f::3::10\n", 2, "column 'item' is not a valid int"),
    ("pairs.txt", "1 2\n3 4\n5 99999999999999999999\n", 3, "column 'item' is not a valid int"),
    ("pairs.txt", "1 2\n3 4\n5  6\n", 3, "expected 2 fields, got 3"),
    ("lines.txt", "1 2 3\n2 3 4\n3 99999999999999999999 1\n", 3, "id 99999999999999999999 does not fit int64"),
    ("lines.txt", "1 2 3\n2 3 4\n3 x 1\n", 3, "token 'x' is not a non-negative integer"),
    ("r.csv", "user,item,ts\n1,2,3\n1, 2,4\n", 3, "column 'item' is not a valid int"),
    ("r.csv", "user,item,ts\n1,2,3\n1,2,+4\n", 3, "column 'ts' is not a valid int"),
]


@pytest.mark.parametrize("name,text,line,reason", TEXT_BAD, ids=[f"{n}-{r}-{i}" for i, (n, _, _, r) in enumerate(TEXT_BAD)])
def test_text_errors_name_file_and_line(tmp_path, name, text, line, reason):
    path = write(tmp_path, name, text)
    prepare_fails(tmp_path, SourceConfig(path=path), rf"{name}:{line}: {re.escape(reason)}")
    _, stats = read_events(SourceConfig(path=path, on_bad_line="skip"))
    assert stats.bad_lines == 1 and stats.bad_examples[0].startswith(f"{path}:{line}: {reason}")


def test_movielens_broken_separators_never_give_wrong_fields(tmp_path):
    """`1:2::3::10` rewritten '::' -> ':' would read as user 1, item 2; it must be a bad line."""
    path = write(tmp_path, "ratings.dat", "5::6::4::100\n1:2::3::10\n7::8::5::200\n")
    t, stats = read_events(SourceConfig(path=path, on_bad_line="skip"))
    assert t.to_pydict()["user"] == [5, 7] and t.to_pydict()["item"] == [6, 8] and stats.bad_lines == 1


def test_truncated_gzip_names_file_and_line(tmp_path):
    full = write(tmp_path, "full.csv.gz", "user,item,ts\n" + "".join(f"{i},{i % 7},{i}\n" for i in range(30000)), gz=True)
    data = open(full, "rb").read()
    cut = write(tmp_path, "cut.csv.gz", data[: len(data) // 2])
    prepare_fails(tmp_path, SourceConfig(path=cut), r"cut.csv.gz:\d+: the gzip data ends early")
    with pytest.raises(ValueError, match=r"cut.csv.gz:(\d+): ") as e:
        read_events(SourceConfig(path=cut, on_bad_line="skip"))  # not a bad line: never skipped
    assert 1000 < int(re.search(r"cut.csv.gz:(\d+)", str(e.value)).group(1)) < 30000


def _parquet(tmp_path, name, **cols) -> str:
    path = str(tmp_path / name)
    pq.write_table(pa.table(cols), path)
    return path


def test_parquet_errors(tmp_path):
    nan = _parquet(tmp_path, "nan.parquet", user=[1, 2, 3], item=[1, 2, 3], ts=[1.0, float("nan"), 3.0])
    prepare_fails(tmp_path, SourceConfig(path=nan), r"nan.parquet: row 1: timestamp is not a finite number")
    t, stats = read_events(SourceConfig(path=nan, on_bad_line="skip"))
    assert t["ts"].to_pylist() == [1_000_000, 3_000_000] and stats.bad_lines == 1
    dates = _parquet(tmp_path, "dates.parquet", user=[1], item=[1], ts=["2024-05-01"])
    prepare_fails(tmp_path, SourceConfig(path=dates), r"dates.parquet: timestamp column 'ts' has type string "
                                                      r"\(e.g. '2024-05-01' at its first row\)")
    small = _parquet(tmp_path, "u64.parquet", user=pa.array([1, 2**62], pa.uint64()), item=[1, 2], ts=[1, 2])
    assert read_events(SourceConfig(path=small))[0]["user"].to_pylist() == [1, 2**62]  # uint64 that fits: fine
    big = _parquet(tmp_path, "big.parquet", user=pa.array([1, 2**63 + 5], pa.uint64()), item=[1, 2], ts=[1, 2])
    prepare_fails(tmp_path, SourceConfig(path=big), r"big.parquet: row 1: user id does not fit int64; set "
                                                    r"source.string_ids=true")
    assert read_events(SourceConfig(path=big, string_ids=True))[0]["user"].to_pylist() == ["1", str(2**63 + 5)]
    zero = write(tmp_path, "zero.parquet", b"")
    prepare_fails(tmp_path, SourceConfig(path=zero), r"zero.parquet: empty file \(0 bytes\)")
    junk = write(tmp_path, "junk.parquet", "user,item\n1,2\n")
    prepare_fails(tmp_path, SourceConfig(path=junk), r"junk.parquet: not a readable Parquet file")
    floats = _parquet(tmp_path, "f.parquet", user=[1.0], item=[1], ts=[1])
    prepare_fails(tmp_path, SourceConfig(path=floats), r"f.parquet: user column 'user' has type double")


# --- inputs must exist ------------------------------------------------------------------------
def test_missing_inputs_are_errors_before_anything_is_written(tmp_path):
    prepare_fails(tmp_path, SourceConfig(path=str(tmp_path / "nope.csv")), r"source.path: no input files at .*nope.csv"
                                                                           r".*no such file")
    prepare_fails(tmp_path, SourceConfig(path=str(tmp_path / "logs-*.parquet")), r"no input files at .*logs-\*"
                                                                                 r".*no file matches the glob")
    for name, text in (("e.csv", ""), ("h.csv", "user,item,ts\n"), ("e.jsonl", "\n\n"), ("e.txt", "\n")):
        path = write(tmp_path, name, text)
        prepare_fails(tmp_path, SourceConfig(path=path), rf"{name}: empty file")
    (tmp_path / "dir").mkdir()
    write(tmp_path, "dir/a.csv", "user,item,ts\n1,2,3\n")
    write(tmp_path, "dir/b.csv", "")
    prepare_fails(tmp_path, SourceConfig(path=str(tmp_path / "dir")), r"dir/b.csv: empty file")
    with pytest.raises(ValueError, match="source.user_col: column 'who'"):
        check_inputs(SourceConfig(path=str(tmp_path / "dir" / "a.csv"), user_col="who"))


def test_files_must_agree_on_timestamps(tmp_path):
    (tmp_path / "mix").mkdir()
    write(tmp_path, "mix/a.csv", "user,item,ts\n1,2,3\n")
    write(tmp_path, "mix/b.csv", "user,item\n1,2\n")
    prepare_fails(tmp_path, SourceConfig(path=str(tmp_path / "mix")), r"b.csv: no timestamp column, but .*a.csv has "
                                                                      r"timestamps in 1/1 s ticks")


def test_max_bad_lines_stops_a_skipping_read(tmp_path):
    path = write(tmp_path, "r.csv", "user,item,ts\n" + "".join(f"{i},{'x' if i % 3 == 0 else i},{i}\n" for i in range(30)))
    _, stats = read_events(SourceConfig(path=path, on_bad_line="skip", max_bad_lines=10))
    assert stats.bad_lines == 10 and len(stats.bad_examples) == 10 and stats.bad_examples[0].startswith(f"{path}:2: ")
    with pytest.raises(ValueError, match=r"r.csv:\d+: .*more than source.max_bad_lines=9 bad lines"):
        read_events(SourceConfig(path=path, on_bad_line="skip", max_bad_lines=9))


# --- the fast text path against a plain parser, on random files ------------------------------
INT64 = (-(2**63), 2**63 - 1)
LAYOUTS = {  # name: (file name, header, separator, columns, the int columns read)
    "csv": ("r.csv", "user,item,rating,ts", ",", 4, {"user": 0, "item": 1, "ts": 3}),
    "tsv": ("r.tsv", "user\titem\trating\tts", "\t", 4, {"user": 0, "item": 1, "ts": 3}),
    "movielens_dat": ("ratings.dat", None, "::", 4, {"user": 0, "item": 1, "ts": 3}),
    "sasrec_pairs": ("pairs.txt", None, " ", 2, {"user": 0, "item": 1}),
}
ODD_TOKENS = ["x1", "0x1f", "0X2", " 5", "5 ", "+5", "", "007", "-3", "99999999999999999999", "9223372036854775807",
              "-9223372036854775808", "9223372036854775808", "1.5", "1e3", "nan", "١٢", "5\r"]


def _plain_parse(text: bytes, header, sep: str, ncols: int, ints: dict):
    """Independent reference: (rows of the int columns, bad line numbers)."""
    rows, bad = [], []
    for n, raw in enumerate(text.split(b"\n")[:-1], 1):
        line = raw.rstrip(b"\r")
        if not line or (header and n == 1):
            continue
        try:
            s = line.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(n)
            continue
        if "\r" in s:  # a carriage return inside a line is malformed
            bad.append(n)
            continue
        fields = s.split(sep)
        ok = len(fields) == ncols and not (sep == "::" and any(":" in f for f in fields))
        ok = ok and all(re.fullmatch(r"-?[0-9]+", fields[i], re.ASCII) and INT64[0] <= int(fields[i]) <= INT64[1]
                        for i in ints.values())
        if ok:
            rows.append(tuple(int(fields[i]) for i in ints.values()))
        else:
            bad.append(n)
    return rows, bad


def _odd_line(rng, fields: list, sep: str) -> str:
    """One line with one of the anomalies a fast parser might read differently."""
    kind = int(rng.integers(8))
    line = sep.join(fields)
    if kind <= 2:
        fields[int(rng.integers(len(fields)))] = str(rng.choice(ODD_TOKENS))
        return sep.join(fields)
    return [sep.join(fields + ["7"]), sep.join(fields[:-1]), ["", "   "][int(rng.integers(2))],
            line.replace(sep, ":", 1) if sep == "::" else line.replace(sep, sep * 2, 1),
            line.replace(sep, sep + ":", 1)][kind - 3]


def _random_file(rng, layout) -> bytes:
    """A few hundred lines; anomalies are rare in some files, so most blocks take the fast path
    with one odd line in them."""
    _, header, sep, ncols, ints = layout
    lines = [header] if header else []
    odd = rng.choice([0.0, 0.003, 0.01, 0.05])
    for _ in range(int(rng.integers(1, 400))):
        fields = [str(int(rng.integers(-50, 10**6))) for _ in range(ncols)]
        lines.append(_odd_line(rng, fields, sep) if rng.random() < odd else sep.join(fields))
    data = ("\n".join(lines) + "\n").encode()
    if rng.random() < 0.1:
        data = data.replace(b"\n", b"\r\n", 3)
    if rng.random() < 0.05:
        data += b"5\xff6" + sep.encode() + b"1\n"
    return data


@pytest.mark.parametrize("fmt", list(LAYOUTS))
def test_fast_text_path_matches_a_plain_parser(tmp_path, fmt):
    rng = np.random.default_rng(list(LAYOUTS).index(fmt))
    layout = LAYOUTS[fmt]
    for trial in range(60):
        data = _random_file(rng, layout)
        path = write(tmp_path, f"{trial}-{layout[0]}", data)
        rows, bad_lines = _plain_parse(data, layout[1], layout[2], layout[3], layout[4])
        if not rows and not bad_lines:
            continue
        for batch_rows in (1, 200, 1 << 20):  # blocks of 1 KiB, ~3 KiB, one
            reader = formats.get(fmt).open(SourceConfig(path=path), path)
            got, bad = [], []
            for chunk in reader.chunks(batch_rows):
                cols = [chunk.batch.column(c).to_pylist() for c in layout[4]]
                got += list(zip(*cols))
                bad += [b.number for b in chunk.bad]
            assert (got, bad) == (rows, bad_lines), (fmt, trial, batch_rows)
