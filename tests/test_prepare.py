"""prepare: shards equal an in-memory reference, k-core, determinism, resume after a kill, CLI."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from data_pipeline import prepare as prepare_module
from data_pipeline.config import PrepareConfig, SourceConfig, SyntheticConfig
from data_pipeline.prepare import finalize, main, plan, prepare, prepare_bucket
from data_pipeline.readers import read_events
from data_pipeline.shards import decode_block
from data_pipeline.synthetic import generate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("ELASTIC_PL_SHARED_DATA", os.path.join(REPO, "..", "shared", "data"))


def cfg(out, **kw) -> PrepareConfig:
    base = dict(output_dir=str(out), num_buckets=4, users_per_block=64, shard_max_events=20_000, workers=1, progress=False)
    return PrepareConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("syn") / "log.parquet")
    generate(SyntheticConfig(num_users=1500, num_items=3000, num_clusters=30, mean_length=60, max_length=2000,
                             tie_prob=0.3, rows_per_group=20_000, seed=5), path)
    return SourceConfig(path=path)


def k_core(u, i, k):
    keep = np.ones(len(u), bool)
    while k > 1:
        uu, ucnt = np.unique(u[keep], return_counts=True)
        ii, icnt = np.unique(i[keep], return_counts=True)
        bad = keep & (np.isin(u, uu[ucnt < k]) | np.isin(i, ii[icnt < k]))
        if not bad.any():
            break
        keep &= ~bad
    return keep


def reference(src: SourceConfig, k: int = 0):
    """Straightforward in-memory version of the contract: {original user: [dense items]}, item map."""
    t, _ = read_events(src)
    u, i, ts, row = (t[c].to_numpy() for c in ("user", "item", "ts", "row"))
    keep = k_core(u, i, k)
    u, i, ts, row = u[keep], i[keep], ts[keep], row[keep]
    items, counts = np.unique(i, return_counts=True)
    by_freq = items[np.lexsort((items, -counts))]
    dense = {int(x): n + 1 for n, x in enumerate(by_freq)}
    order = np.lexsort((row, ts, u))
    seqs = {}
    for uu, ii in zip(u[order].tolist(), i[order].tolist()):
        seqs.setdefault(uu, []).append(dense[ii])
    return seqs, by_freq.tolist()


def read_output(out: str, manifest: dict):
    urls = [os.path.join(out, s["name"]) for s in manifest["shards"]]
    orig = pq.read_table(os.path.join(out, "user_map.parquet")).column("original").to_pylist()
    seqs, users = {}, []
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        block = decode_block(sample, manifest["num_items"])
        for j, du in enumerate(block.users.tolist()):
            users.append(du)
            seqs[orig[du]] = block.sequence(j).tolist()
    assert sorted(users) == list(range(manifest["num_users"]))  # each dense user exactly once
    return seqs


def shard_bytes(out: str, manifest: dict) -> dict:
    got = {}
    for s in manifest["shards"]:
        with open(os.path.join(out, s["name"]), "rb") as f:
            data = f.read()
        assert hashlib.sha256(data).hexdigest() == s["sha256"]
        got[s["name"]] = data
    return got


def test_synthetic_end_to_end_matches_reference(synth, tmp_path):
    m = prepare(synth, cfg(tmp_path / "out"))
    seqs, by_freq = reference(synth)
    assert read_output(str(tmp_path / "out"), m) == seqs
    imap = pq.read_table(str(tmp_path / "out" / "item_map.parquet")).to_pydict()
    assert imap["original"] == by_freq and imap["item"] == list(range(1, len(by_freq) + 1))
    assert (m["num_users"], m["num_items"], m["num_events"]) == (len(seqs), len(by_freq), sum(map(len, seqs.values())))
    assert sum(s["events"] for s in m["shards"]) == m["num_events"] and len(m["shards"]) > 4
    assert not os.path.exists(tmp_path / "out" / "_work")


def test_real_ratings_dat_matches_reference(tmp_path):
    path = os.path.join(SHARED, "ml-1m", "raw-partial", "ratings.dat.gz")
    if not os.path.exists(path):
        pytest.skip(f"{path} not present")
    src = SourceConfig(path=path)
    m = prepare(src, cfg(tmp_path, shard_max_events=100_000))
    assert (m["num_users"], m["num_items"], m["num_events"]) == (2999, 3615, 487650)
    assert read_output(str(tmp_path), m) == reference(src)[0]


def test_k_core_matches_reference(synth, tmp_path):
    src = SourceConfig(path=synth.path)
    m = prepare(src, cfg(tmp_path, k_core=40))
    seqs, by_freq = reference(src, k=40)
    assert m["k_core_rounds"] > 1 and m["num_users"] < 1500
    got = read_output(str(tmp_path), m)
    assert got == seqs
    flat = np.concatenate([np.array(s) for s in got.values()])
    assert min(map(len, got.values())) >= 40 and np.bincount(flat)[1:].min() >= 40


def test_deterministic_across_workers_and_bucket_order(synth, tmp_path):
    a = prepare(synth, cfg(tmp_path / "a", workers=1))
    c = cfg(tmp_path / "b", workers=2, stage_workers=3)  # staged in 3 row-group slices
    plan(synth, c)
    for b in reversed(range(c.num_buckets)):
        prepare_bucket(synth, c, b)
    m = finalize(c, synth)
    assert m["shards"] == a["shards"]
    assert shard_bytes(str(tmp_path / "a"), a) == shard_bytes(str(tmp_path / "b"), m)


def test_resume_after_partial_run_is_byte_identical(synth, tmp_path, monkeypatch):
    ref = prepare(synth, cfg(tmp_path / "ref"))
    c = cfg(tmp_path / "run")
    plan(synth, c)
    prepare_bucket(synth, c, 0)
    prepare_bucket(synth, c, 2)
    parts = os.path.join(c.output_dir, "_work", "buckets")
    with open(os.path.join(parts, "b00001-p00000.tar"), "wb") as f:  # a killed bucket's leftovers
        f.write(b"garbage")
    with open(os.path.join(parts, "b00003-p00001.tar.tmp"), "wb") as f:
        f.write(b"partial")
    written = []  # the buckets whose shards are (re)written: only those without a done-file
    real_write = prepare_module.write_bucket
    monkeypatch.setattr(prepare_module, "write_bucket", lambda stage, b, *a: written.append(b) or real_write(stage, b, *a))
    m = prepare(synth, c)
    assert sorted(written) == [1, 3]
    assert m["shards"] == ref["shards"]
    assert shard_bytes(c.output_dir, m) == shard_bytes(str(tmp_path / "ref"), ref)
    assert prepare(synth, c) == m and sorted(written) == [1, 3]  # a rerun of a finished job is a no-op


def test_killed_subprocess_resumes(tmp_path):
    log = str(tmp_path / "big.parquet")
    generate(SyntheticConfig(num_users=5000, num_items=20_000, mean_length=100, seed=9), log)
    src = SourceConfig(path=log)
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "data_pipeline.prepare", f"source.path={log}", f"prepare.output_dir={out}",
            "prepare.num_buckets=12", "prepare.workers=1", "prepare.progress=false", "prepare.users_per_block=64",
            "prepare.shard_max_events=50000"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = out / "_work" / "buckets"
    deadline = time.time() + 60
    while time.time() < deadline and not (done / "b00001.done.json").exists() and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(p.name for p in done.glob("*.done.json"))
    assert 2 <= len(finished) < 12 and not (out / "manifest.json").exists(), finished
    m = prepare(src, cfg(out, num_buckets=12, users_per_block=64, shard_max_events=50000))
    ref = prepare(src, cfg(tmp_path / "ref", num_buckets=12, users_per_block=64, shard_max_events=50000))
    assert m["shards"] == ref["shards"]
    assert shard_bytes(str(out), m) == shard_bytes(str(tmp_path / "ref"), ref)


def test_cli_array_steps_and_bad_line_counts(tmp_path, capsys):
    log = tmp_path / "ratings.csv"
    rows = ["userId,movieId,rating,timestamp"] + [f"{u},{(u * 7 + j) % 50},4.0,{1000 + j // 2}" for u in range(30) for j in range(12)]
    rows.insert(5, "3,oops,4.0,1")
    rows.insert(9, "3,4")
    log.write_text("\n".join(rows) + "\n")
    yaml = tmp_path / "prep.yaml"
    yaml.write_text(f"source:\n  path: {log}\n  on_bad_line: skip\nprepare:\n  output_dir: {tmp_path / 'o'}\n"
                    "  num_buckets: 3\n  workers: 1\n  progress: false\n")
    main(["--config", str(yaml), "--num-buckets"])
    assert capsys.readouterr().out.strip() == "3"
    main(["--config", str(yaml), "--plan"])
    for b in (2, 0, 1):
        main(["--config", str(yaml), "--bucket", str(b)])
    main(["--config", str(yaml), "--finalize"])
    import json
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["bad_lines"] == 2 and m["read_stats"]["bad_by_file"] == {str(log): 2}
    assert m["num_events"] == 360 and m["num_users"] == 30
    with pytest.raises(ValueError, match=r"ratings.csv:6: "):
        prepare(SourceConfig(path=str(log)), cfg(tmp_path / "strict"))


def test_empty_and_filtered_out_inputs(tmp_path):
    (tmp_path / "e.csv").write_text("user,item,ts\n")
    with pytest.raises(ValueError, match="no events"):
        prepare(SourceConfig(path=str(tmp_path / "e.csv")), cfg(tmp_path / "o1"))
    (tmp_path / "f.csv").write_text("user,item,ts\n1,2,3\n1,3,4\n")
    with pytest.raises(ValueError, match="k_core"):
        prepare(SourceConfig(path=str(tmp_path / "f.csv")), cfg(tmp_path / "o2", k_core=3))
    with pytest.raises(ValueError, match="prepare.num_buckets"):
        PrepareConfig(num_buckets=0)
    with pytest.raises(ValueError, match="prepare.memory_limit"):
        PrepareConfig(memory_limit="lots")


def test_sort_and_item_lookup_helpers():
    import pyarrow as pa
    from data_pipeline._bucket import dense_items, stable_argsort, user_order
    rng = np.random.default_rng(0)
    key = rng.integers(0, 50, 5000)
    assert np.array_equal(stable_argsort(key), np.argsort(key, kind="stable"))
    users, ts = rng.integers(-3, 40, 3000), rng.integers(0, 20, 3000)
    ref = np.lexsort((np.arange(3000), ts, users))
    for big in (False, True):  # packed-key path and lexsort fallback (ids too wide to pack)
        u = users * (1 << 40) if big else users
        order, uniq, lengths = user_order(pa.chunked_array([u]), ts)
        assert np.array_equal(order, ref) and uniq.to_pylist() == np.unique(u).tolist()
        assert lengths.tolist() == np.unique(u, return_counts=True)[1].tolist()
    for orig in ([5, 3, 9, 1], [5 << 40, 3, 9 << 50, 1]):  # lookup table and binary search
        got = dense_items(pa.chunked_array([[orig[2], orig[3], 7, orig[0]]]), pa.array(orig))
        assert got.tolist() == [3, 4, 0, 1]
    assert dense_items(pa.chunked_array([["b", "z", "a"]]), pa.array(["a", "b"])).tolist() == [2, 0, 1]
