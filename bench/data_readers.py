"""Reader throughput: rows per second of each input format on the same synthetic log.

    .venv/bin/python -m bench.data_readers [--rows 2e6 --repeats 3 --dir /tmp/elastic_readers]

Writes (once, cached) the log as CSV, TSV, MovieLens ``::``, SASRec pairs, JSON Lines and
Parquet (user, item, rating, timestamp; ~30 bytes a text line), then streams each file through
``data_pipeline.readers.iter_events``. Prints one JSON line per format: best rows per wall second
and per CPU second over the repeats.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline.config import SourceConfig
from data_pipeline.readers import iter_events

LINES = {  # file name: (header, one line from user, item, ts)
    "log.csv": ("user,item,rating,timestamp\n", "{},{},4.0,{}\n"),
    "log.tsv": ("user\titem\trating\ttimestamp\n", "{}\t{}\t4.0\t{}\n"),
    "ratings.dat": ("", "{}::{}::4::{}\n"),
    "pairs.txt": ("", "{} {}\n"),
    "log.jsonl": ("", '{{"user": {}, "item": {}, "ts": {}}}\n'),
}


def write_inputs(directory: str, rows: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    user, item = rng.integers(0, rows // 100 + 1, rows), rng.integers(0, 10**6, rows)
    ts = np.sort(rng.integers(10**9, 2 * 10**9, rows))
    paths = []
    for name, (header, line) in LINES.items():
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write(header + "".join(line.format(u, i, t) for u, i, t in zip(user.tolist(), item.tolist(), ts.tolist())))
        paths.append(path)
    path = os.path.join(directory, "log.parquet")
    if not os.path.exists(path):
        pq.write_table(pa.table({"user": user, "item": item, "rating": np.full(rows, 4.0), "timestamp": ts}), path,
                       row_group_size=1 << 20)
    return paths + [path]


def measure(path: str, repeats: int) -> dict:
    best_wall = best_cpu = 0.0
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        rows = sum(len(b) for b in iter_events(SourceConfig(path=path)))
        best_wall = max(best_wall, rows / (time.perf_counter() - t0))
        best_cpu = max(best_cpu, rows / max(time.process_time() - c0, 1e-9))
    return {"file": os.path.basename(path), "rows": rows, "rows_per_s": round(best_wall),
            "rows_per_cpu_s": round(best_cpu), "bytes_per_row": round(os.path.getsize(path) / rows, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=float, default=2e6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/elastic_readers")
    a = ap.parse_args()
    directory = os.path.join(a.dir, f"rows{int(a.rows)}")
    os.makedirs(directory, exist_ok=True)
    print(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "python": platform.python_version(),
                      "pyarrow": pa.__version__, "numpy": np.__version__, "cpus": os.cpu_count(),
                      "loadavg_1m": round(os.getloadavg()[0], 1)}))
    for path in write_inputs(directory, int(a.rows)):
        print(json.dumps(measure(path, a.repeats)), flush=True)


if __name__ == "__main__":
    main()
