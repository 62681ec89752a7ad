"""Readers: real public files (skipped when absent), stable tie order, malformed/empty input."""
from __future__ import annotations

import gzip
import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.config import SourceConfig
from data_pipeline.readers import detect_format, read_events

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("ELASTIC_PL_SHARED_DATA", os.path.join(REPO, "..", "shared", "data"))


def shared(rel: str) -> str:
    path = os.path.join(SHARED, rel)
    if not os.path.exists(path):
        pytest.skip(f"{path} not present (set ELASTIC_PL_SHARED_DATA)")
    return path


# (file, format detected, users, items, interactions) as stated in each dataset's README.md
REAL = [
    ("ml-1m/ml-1m.txt", "sasrec_pairs", 6040, 3416, 999611),
    ("ml-1m/raw-partial/ratings.dat.gz", "movielens_dat", 2999, 3615, 487650),
    ("ml-latest-small/ratings.csv", "csv", 671, 9066, 100004),
    ("ml-100k/ml-100k.inter", "recbole_inter", 943, 1682, 100000),
    ("lastfm/LastFM.txt", "sasrec_lines", 1090, 3646, 52551),
    ("amazon-beauty/Beauty.txt", "sasrec_lines", 22363, 12101, 198502),
    ("wikipedia/wikipedia.txt", "sasrec_pairs", 8227, 1000, 157474),
]


@pytest.mark.parametrize("rel,fmt,users,items,events", REAL, ids=[r[0] for r in REAL])
def test_real_files_match_readme_counts(rel, fmt, users, items, events):
    path = shared(rel)
    assert detect_format(path) == fmt
    table, stats = read_events(SourceConfig(path=path))
    assert table.num_rows == events == stats.rows and stats.bad_lines == 0
    assert len(table["user"].unique()) == users and len(table["item"].unique()) == items
    assert table["row"].to_numpy().tolist() == list(range(events))


def test_movielens_dat_ratings_and_timestamps():
    table, _ = read_events(SourceConfig(path=shared("ml-1m/raw-partial/ratings.dat.gz")))
    ts = table["ts"].to_numpy()
    assert (ts.min(), ts.max()) == (970620734, 1046388675)  # README: timestamp range
    five, stats = read_events(SourceConfig(path=shared("ml-1m/raw-partial/ratings.dat.gz"), min_rating=5))
    assert five.num_rows == 108545 and stats.filtered == 487650 - 108545  # README: ratings by value


def test_sasrec_lines_order_and_positions():
    table, _ = read_events(SourceConfig(path=shared("lastfm/LastFM.txt")))
    first = table.slice(0, 8).to_pydict()  # line 1: "1 1 2 3 4 5 6 7 8"
    assert first["user"] == [1] * 8 and first["item"] == list(range(1, 9)) and first["ts"] == list(range(8))


def test_real_ties_keep_file_order():
    """ratings.dat: many equal timestamps per user; a stable (ts, row) sort must keep file order."""
    table, _ = read_events(SourceConfig(path=shared("ml-1m/raw-partial/ratings.dat.gz")))
    u, ts, row = (table[c].to_numpy() for c in ("user", "ts", "row"))
    order = np.lexsort((row, ts, u))
    su, sts, srow = u[order], ts[order], row[order]
    tie = (su[1:] == su[:-1]) & (sts[1:] == sts[:-1])
    assert tie.sum() > 10_000  # ties are common in the real file
    assert np.all(srow[1:][tie] > srow[:-1][tie])


def _write(tmp_path, name: str, text: str, gz: bool = False) -> str:
    path = str(tmp_path / name)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        with open(path, "w") as f:
            f.write(text)
    return path


BAD = [  # (file name, content, format, bad line number, events kept in skip mode)
    ("r.csv", "userId,movieId,rating,timestamp\n1,2,3.0,10\n1,x,4.0,11\n2,3,1.0,12\n", "csv", 3, 2),
    ("r.csv", "userId,movieId,rating,timestamp\n1,2,3.0,10\n\n1,3,4.0\n2,3,1.0,12\n", "csv", 4, 2),
    ("ratings.dat", "1::2::3::10\n1::3::4::11\n1::4::5\n", "movielens_dat", 3, 2),
    ("ratings.dat.gz", "1::2::3::10\n1::3::4::1x1\n", "movielens_dat", 2, 1),
    ("pairs.txt", "1 2\n1 3\n1 3 4\n", "sasrec_pairs", 3, 2),
    ("pairs.txt", "1 2\n1 3\n2 -\n", "sasrec_pairs", 3, 2),
    ("lines.txt", "1 2 3\n2 4 5 x\n3 1\n", "sasrec_lines", 2, 3),
    ("lines.txt", "1 2 3\n2\n3 1\n", "sasrec_lines", 2, 3),
    ("x.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3.5\n1\t2\n", "recbole_inter", 3, 1),
]
IDS = [f"{b[2]}-{i}" for i, b in enumerate(BAD)]


@pytest.mark.parametrize("name,text,fmt,line,kept", BAD, ids=IDS)
def test_malformed_line_error_names_file_and_line(tmp_path, name, text, fmt, line, kept):
    path = _write(tmp_path, name, text, gz=name.endswith(".gz"))
    with pytest.raises(ValueError, match=rf"{name}:{line}: "):
        read_events(SourceConfig(path=path, format=fmt))


@pytest.mark.parametrize("name,text,fmt,line,kept", BAD, ids=IDS)
def test_skip_mode_drops_and_counts(tmp_path, name, text, fmt, line, kept):
    path = _write(tmp_path, name, text, gz=name.endswith(".gz"))
    good, stats = read_events(SourceConfig(path=path, format=fmt, on_bad_line="skip"))
    assert stats.bad_lines == 1 and stats.bad_by_file == {path: 1}
    assert good.num_rows == kept


def test_empty_inputs_raise(tmp_path):
    for name, fmt in [("e.csv", "csv"), ("e.txt", "sasrec_pairs"), ("l.txt", "sasrec_lines"), ("e.dat", "movielens_dat")]:
        with pytest.raises(ValueError, match="empty|no events"):
            read_events(SourceConfig(path=_write(tmp_path, name, ""), format=fmt))
    with pytest.raises(ValueError, match="no events"):
        read_events(SourceConfig(path=_write(tmp_path, "h.csv", "user,item,ts\n")))
    with pytest.raises(ValueError, match="no input files"):
        read_events(SourceConfig(path=str(tmp_path / "missing.csv")))


def test_movielens_blocks_keep_every_line(tmp_path):
    """Tiny blocks (batch_rows=1) cut the file everywhere; every line is read once, in order."""
    lines = [f"{u}::{i}::{(u + i) % 5 + 1}::{1000 + u * 7 + i}" for u in range(50) for i in range(40)]
    path = _write(tmp_path, "ratings.dat", "\n".join(lines) + "\n")
    for batch_rows in (1, 7, 1 << 20):
        got, _ = read_events(SourceConfig(path=path), batch_rows=batch_rows)
        assert got["ts"].to_pylist() == [1000 + u * 7 + i for u in range(50) for i in range(40)]


def test_parquet_columns_nulls_and_string_ids(tmp_path):
    path = str(tmp_path / "log.parquet")
    pq.write_table(pa.table({"uid": ["a", "b", None, "a"], "sku": ["x", "y", "z", "x"],
                             "when": pa.array([3, 1, 2, 2], pa.int64()), "stars": [5.0, 1.0, 4.0, 4.0]}), path)
    src = dict(path=path, user_col="uid", item_col="sku", ts_col="when", string_ids=True)
    with pytest.raises(ValueError, match=r"log.parquet: row 2: null"):
        read_events(SourceConfig(**src))
    t, stats = read_events(SourceConfig(**src, on_bad_line="skip", rating_col="stars", min_rating=4))
    assert stats.bad_lines == 1 and stats.filtered == 1
    assert t.to_pydict() == {"user": ["a", "a"], "item": ["x", "x"], "ts": [3, 2], "row": [0, 2]}
    with pytest.raises(ValueError, match="string_ids"):
        read_events(SourceConfig(path=path, user_col="uid", item_col="sku", on_bad_line="skip"))


def test_headerless_tsv_by_position_and_bad_config(tmp_path):
    path = _write(tmp_path, "log.tsv", "7\tfoo\t100\t9\n8\tbar\t101\t9\n")
    t, _ = read_events(SourceConfig(path=path, header=False, user_col="0", item_col="3", ts_col="2"))
    assert t.to_pydict() == {"user": [7, 8], "item": [9, 9], "ts": [100, 101], "row": [0, 1]}
    with pytest.raises(ValueError, match="source.user_col"):
        read_events(SourceConfig(path=path, header=False, user_col="9", item_col="3"))
    with pytest.raises(ValueError, match="source.format"):
        SourceConfig(path=path, format="xml")
    with pytest.raises(ValueError, match="source.on_bad_line"):
        SourceConfig(path=path, on_bad_line="ignore")


def _mirror(tmp_path, member="ml-1m/ratings.dat", body="1::10::5::100\n1::11::4::100\n2::10::3::50\n"):
    import hashlib
    import zipfile
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with zipfile.ZipFile(mirror / "ml-1m.zip", "w") as z:
        z.writestr(member, body)
    digest = hashlib.md5((mirror / "ml-1m.zip").read_bytes()).hexdigest()
    (mirror / "ml-1m.zip.md5").write_text(f"MD5 (ml-1m.zip) = {digest}\n")
    return mirror


def test_download_from_local_mirror_then_read(tmp_path):
    from data_pipeline.download import dataset_url, main
    assert dataset_url("ml-20m") == "https://files.grouplens.org/datasets/movielens/ml-20m.zip"
    with pytest.raises(ValueError, match="unknown dataset"):
        dataset_url("ml-7m")
    with pytest.raises(SystemExit):
        main(["ml-7m", "--dest", str(tmp_path)])
    mirror = _mirror(tmp_path)
    main(["ml-1m", "--dest", str(tmp_path / "raw"), "--base-url", mirror.as_uri()])
    t, _ = read_events(SourceConfig(path=str(tmp_path / "raw" / "ml-1m" / "ratings.dat")))
    assert t.to_pydict()["ts"] == [100, 100, 50]


def test_download_rejects_bad_md5_and_escaping_members(tmp_path):
    from data_pipeline.download import download
    mirror = _mirror(tmp_path)
    with pytest.raises(ValueError, match="md5"):
        download("ml-1m", str(tmp_path / "a"), mirror.as_uri(), md5="0" * 32, progress=False)
    assert not (tmp_path / "a" / "ml-1m.zip").exists()
    evil = _mirror(tmp_path / "e", member="../../evil.dat") if (tmp_path / "e").mkdir() is None else None
    with pytest.raises(ValueError, match="outside"):
        download("ml-1m", str(tmp_path / "b"), evil.as_uri(), progress=False)
